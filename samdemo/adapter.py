"""Weight adapters for the defense: the SVD singular-value adapter (Robust SAM) and two baselines.

An adapter replaces the weight W of a few targeted ``nn.Linear`` / ``nn.Conv2d`` layers (a conv
weight ``out x in x k x k`` is read as the ``out x (in k k)`` matrix it multiplies with) by a
trainable W' that equals W at initialisation; everything else stays frozen. One layer class per
``method`` (``AdapterConfig.method``, stored in ``adapter_config.json``):

* ``"svd"`` (:class:`SVDLayer`, the Robust SAM defense): ``W = U diag(s_base) V^T`` (thin SVD,
  float64 then float32, so a layer holds ``r = min(out, in k k)`` singular values); U and V are
  frozen buffers **recomputed from the base weights** whenever an adapter is applied or loaded,
  never stored. ``W' = U diag(s_base + delta) V^T`` with ``delta`` (zero-initialised) the only
  trainable tensor, so W' = W up to the float32 rounding of the reconstruction (~1e-7 relative).
  By default every singular value is trained; with a rank k (``apply_adapter(..., rank=k)``,
  ``train-adapter --svd-rank k``) only the k largest of each layer are, the rest keep their
  base values: a fixed budget spread over many layers. Files store the k adapted values ``s``
  themselves (and their ``s_base``, for the load-time check and the plots).
* ``"lora"`` (:class:`LoRALayer`, baseline): ``W' = W + B A`` on the matrix view, A
  ``rank x (in k k)`` (PEFT's init, seeded), B ``out x rank`` zero-initialised (PEFT's
  ``alpha / rank`` scale is 1: with Adam and the learning-rate rule below a scale changes nothing).
  ``rank x (out + in k k)`` trainable values per layer.
* ``"full"`` (:class:`FullLayer`, baseline): ``W' = W + Delta``, the whole weight trainable
  (biases stay frozen, as in the other two methods; SAM's neck convs have none); files store Delta.

W' = W exactly at initialisation for the two baselines (their update is zero). Training uses a
learning rate per trainable tensor (:meth:`Adapter.param_groups`) such that one Adam step, which
moves every coordinate by about its learning rate, changes W by about ``lr x ||W||_F``
(Frobenius): a *relative* step, the same for every method, layer and model size.

Default targets (``default_target_modules``), 512 singular values on SAM ViT-B/L/H and on Meta's SAM 2:

* SAM: the image encoder's neck, ``image_encoder.neck.0`` (1x1 conv, embed_dim -> 256) and
  ``image_encoder.neck.2`` (3x3 conv, 256 -> 256): 256 + 256, the paper's 512 parameters.
  The embedded ``sam-small`` has width 128 (``out_chans``): 128 + 128 = 256 values.
* SAM 2: the FPN's two lateral 1x1 convs that build the image embedding,
  ``image_encoder.neck.convs.0.conv`` (stride 32, the lowest-resolution level: its output is
  discarded by ``scalp=1`` but is upsampled top-down into the stride-16 level, as
  ``fpn_top_down_levels`` = [2, 3]) and ``image_encoder.neck.convs.1.conv`` (stride 16, the
  level that *is* the image embedding): the embedding is exactly the sum of their outputs.
  256 + 256 = 512 for Hiera T/S/B+/L (their stride-16 trunk widths 384-576 >= 256); 128 + 128
  = 256 for the embedded ``sam2-small`` (``d_model`` 128). The two high-resolution skip levels
  (``convs.2`` / ``convs.3``, stride 8 / 4, feeding the mask decoder's ``conv_s1`` /
  ``conv_s0``) are not targeted by default; add them with the pattern
  ``image_encoder.neck.convs.*.conv`` (1024 values on Meta's models).
* In general a layer holds min(out, in k k) values, so a narrow layer holds fewer than its width.

Integrity: the adapter records a sha256 fingerprint of the targeted layers' base weights and
biases (as float32) plus the base model name; loading onto any model whose targeted weights
hash differently is refused with an :class:`AdapterError`.

Merging: :meth:`Adapter.merge` writes W' into the layers once (plain forward, zero overhead)
and keeps the original weight tensors; :meth:`Adapter.unmerge` puts those very tensors back
(bit-exact).

File format ``samdemo-svd-adapter`` (the name predates the baselines): version 2 added
``method``; version-1 files (no ``method``) are SVD adapters and load unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from samdemo.errors import AdapterError

FORMAT_NAME = "samdemo-svd-adapter"
FORMAT_VERSION = 2  # 2: "method" (svd, lora, full); 1: SVD only, no "method" key
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"
PLOT_FILE = "singular_values.png"
LOG_FILE = "training_log.json"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, PLOT_FILE, LOG_FILE)
PARAMETRIZATION = "additive"  # W' = base + update, the update is zero at initialisation (all methods)
DEFAULT_METHOD = "svd"
SUPPORTED_MODULES = (nn.Linear, nn.Conv2d)
_ATTACHED = "_samdemo_svd_adapter"  # attribute on the adapted nn.Module (not a registered submodule)
_S_KEY, _S_BASE_KEY = "singular_values", "base_singular_values"
# Loading tolerates this relative difference between the stored s_base and the recomputed one
# (different BLAS / devices); a different base model differs by orders of magnitude more.
BASE_S_RTOL = 1e-3

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "sam": ("image_encoder.neck.0", "image_encoder.neck.2"),
    "sam2": ("image_encoder.neck.convs.0.conv", "image_encoder.neck.convs.1.conv"),
}

# Hub repos of the base models, for the model card's ``base_model`` (embedded models have none).
BASE_MODEL_HUB_IDS = {
    "sam-vit-b": "facebook/sam-vit-base", "sam-vit-l": "facebook/sam-vit-large", "sam-vit-h": "facebook/sam-vit-huge",
}


def default_target_modules(family: str) -> list[str]:
    """Module names targeted by default for a model family ("sam" or "sam2")."""
    if family not in DEFAULT_TARGETS:
        raise AdapterError(f"Unknown model family {family!r}; expected one of {sorted(DEFAULT_TARGETS)}.")
    return list(DEFAULT_TARGETS[family])


def resolve_targets(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the Linear/Conv2d modules matching the glob ``patterns`` (fnmatch), in model order.

    A pattern that matches nothing, or matches only unsupported module types, is an error.
    """
    if not patterns:
        raise AdapterError("No target modules given.")
    modules = dict(model.named_modules())
    chosen: list[str] = []
    for pattern in patterns:
        hits = [name for name in modules if name and fnmatch.fnmatchcase(name, pattern)]
        usable = [name for name in hits if isinstance(modules[name], SUPPORTED_MODULES)]
        if not usable:
            if hits:
                kinds = sorted({type(modules[n]).__name__ for n in hits})
                raise AdapterError(f"Target pattern {pattern!r} matches only {', '.join(kinds)} modules "
                                   f"({', '.join(hits[:4])}); only Linear and Conv2d can be adapted.")
            close = [n for n in modules if isinstance(modules[n], SUPPORTED_MODULES)
                     and pattern.split('.')[0] in n][:6]
            raise AdapterError(f"Target pattern {pattern!r} matches no module of this model"
                               + (f" (Linear/Conv2d modules nearby: {', '.join(close)})." if close else "."))
        chosen += [name for name in usable if name not in chosen]
    order = {name: i for i, name in enumerate(modules)}
    for name in chosen:
        module = modules[name]
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise AdapterError(f"{name} is a grouped convolution (groups={module.groups}), which has no single weight matrix.")
    return sorted(chosen, key=order.__getitem__)


def fingerprint_weights(model: nn.Module, names: Iterable[str]) -> str:
    """sha256 over the named modules' weight and bias (as float32 bytes), in sorted name order."""
    modules = dict(model.named_modules())
    digest = hashlib.sha256()
    for name in sorted(names):
        module = modules[name]
        layer = getattr(module, _ATTACHED + "_layer", None)
        weight = module.weight
        if layer is not None and layer.original_weight is not None:  # merged: hash the base weights
            weight = layer.original_weight
        digest.update(name.encode() + b"\0")
        for tensor in (weight, module.bias):
            if tensor is None:
                digest.update(b"none\0")
                continue
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(str(tuple(t.shape)).encode() + b"\0")
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass
class AdapterConfig:
    """What an adapter targets and how it was made; serialised as ``adapter_config.json``.

    ``method``: "svd", "lora" or "full" (``LAYER_TYPES``). ``target_modules``: glob patterns
    (empty: the family's defaults). ``layers`` (filled when applied): resolved module name ->
    {"type", "weight_shape", "matrix_shape", "rank"}, rank being the rank of the update (svd:
    the number of largest singular values trained, min(out, in k k) by default; full: min(out,
    in k k); lora: its rank). ``num_trainable``: trainable values in all.
    """

    base_model: str = "custom"
    family: str = "sam"
    method: str = DEFAULT_METHOD
    target_modules: list[str] = field(default_factory=list)
    layers: dict[str, dict] = field(default_factory=dict)
    fingerprint: str = ""
    num_trainable: int = 0
    parametrization: str = PARAMETRIZATION
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    base_model_hub_id: str | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=_json_default)

    @classmethod
    def from_dict(cls, data: Any, source: str = CONFIG_FILE) -> "AdapterConfig":
        """Validate a parsed ``adapter_config.json``; raise AdapterError naming every problem."""
        if not isinstance(data, dict):
            raise AdapterError(f"{source} must hold a JSON object, found {type(data).__name__}.")
        if data.get("format") != FORMAT_NAME:
            raise AdapterError(f"{source} is not a samdemo SVD adapter config (format is {data.get('format')!r}, "
                               f"expected {FORMAT_NAME!r}).")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise AdapterError(f"{source} has format_version {version!r}; this samdemo reads versions "
                               f"{', '.join(map(str, READABLE_VERSIONS))}. Update samdemo or re-export the adapter.")
        method = data.get("method", DEFAULT_METHOD)  # version 1 has no "method": SVD
        if not isinstance(method, str) or method not in LAYER_TYPES:
            raise AdapterError(f"{source}: unknown method {method!r} (expected one of {', '.join(LAYER_TYPES)}).")
        layer_type = LAYER_TYPES[method]
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterError(f"{source} has unknown keys {unknown}; known keys are {sorted(known)}.")
        expected = {"base_model": str, "family": str, "target_modules": list, "layers": dict, "fingerprint": str,
                    "num_trainable": int, "parametrization": str, "training": dict, "metrics": dict}
        problems = [f"missing {key!r}" for key in expected if key not in data]
        problems += [f"{key!r} should be {kind.__name__}, got {type(data[key]).__name__}"
                     for key, kind in expected.items() if key in data and
                     (not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)))]
        if problems:
            raise AdapterError(f"{source} does not fit the adapter format: {'; '.join(problems)}.")
        if data["family"] not in DEFAULT_TARGETS:
            raise AdapterError(f"{source}: unknown family {data['family']!r} (expected 'sam' or 'sam2').")
        if data["parametrization"] != PARAMETRIZATION:
            raise AdapterError(f"{source}: parametrization {data['parametrization']!r} is not supported "
                               f"(only {PARAMETRIZATION!r}).")
        if not data["fingerprint"].startswith("sha256:") or len(data["fingerprint"]) != 71:
            raise AdapterError(f"{source}: fingerprint {data['fingerprint']!r} is not 'sha256:' + 64 hex digits.")
        if not data["layers"]:
            raise AdapterError(f"{source} lists no layers.")
        for name, info in data["layers"].items():
            if not isinstance(info, dict) or not {"type", "weight_shape", "matrix_shape", "rank"} <= set(info):
                raise AdapterError(f"{source}: layer {name!r} needs type, weight_shape, matrix_shape and rank.")
            shapes_ok = (isinstance(info["matrix_shape"], list) and len(info["matrix_shape"]) == 2
                         and isinstance(info["weight_shape"], list) and len(info["weight_shape"]) in (2, 4)
                         and all(isinstance(d, int) and d > 0 for d in info["matrix_shape"] + info["weight_shape"]))
            if not shapes_ok:
                raise AdapterError(f"{source}: layer {name!r} has a malformed weight_shape/matrix_shape "
                                   f"({info['weight_shape']!r}, {info['matrix_shape']!r}).")
            rank, (rows, cols), allowed = info["rank"], info["matrix_shape"], layer_type.ranks(*info["matrix_shape"])
            if not isinstance(rank, int) or isinstance(rank, bool) or rank not in allowed:
                need = (f"has {min(rows, cols)} singular values" if len(allowed) == 1
                        else f"allows {method} rank {allowed.start} to {allowed.stop - 1}")
                raise AdapterError(f"{source}: layer {name!r} has rank {rank!r} but its {rows}x{cols} matrix {need}.")
        total = sum(layer_type.count(info) for info in data["layers"].values())
        if data["num_trainable"] != total:
            raise AdapterError(f"{source}: num_trainable is {data['num_trainable']} but the layers hold {total} "
                               f"trainable values ({method}).")
        return cls(**(data | {"method": method, "format_version": FORMAT_VERSION}))  # read as the current version


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class AdapterLayer(nn.Module):
    """One adapted layer: the frozen base module and a trainable update of its weight.

    A subclass per method defines W' (``_effective``: any shape with the weight's numel), the
    parameter that is zero at initialisation (``zero_param``: W' = W), the per-parameter
    learning-rate scales, the tensors of its files (``file_shapes``, ``state``, ``load_state``)
    and the texts of its model card. Subclasses are built as ``cls(name, module, rank,
    generator)``; only LoRA uses ``rank`` (the others' is the matrix's) and ``generator`` (its A).
    """

    method = ""
    noun = ""  # for messages: "an SVD adapter"
    zero_param = ""
    formula = ""  # the parametrisation, for the card and the docs
    lr_rule = ""  # the learning-rate rule of ``lr_scales``, recorded in the training recipe
    card_title = card_intro = card_how = card_files = ""
    card_tags: tuple[str, ...] = ()

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        if not isinstance(module, SUPPORTED_MODULES):
            raise AdapterError(f"{name} is a {type(module).__name__}; only Linear and Conv2d can be adapted.")
        self.name = name
        self.weight_shape = tuple(module.weight.shape)
        self.kind = type(module).__name__
        self.compute_dtype = torch.promote_types(module.weight.dtype, torch.float32)
        # Plain attributes, not submodules: the adapter must not own (or re-register) base modules.
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "original_weight", None)  # set while merged

    # ------------------------------------------------------------------ shapes and counts
    @staticmethod
    def ranks(rows: int, cols: int) -> range:
        """Allowed ``rank`` (of the update) for an ``rows x cols`` matrix: full rank."""
        return range(min(rows, cols), min(rows, cols) + 1)

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape in ``adapter.safetensors`` for a layer described by ``info``."""
        raise NotImplementedError

    @classmethod
    def count(cls, info: dict) -> int:
        """Trainable values of a layer described by ``info`` (the file's tensors, by default)."""
        return sum(math.prod(shape) for shape in cls.file_shapes(info).values())

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.weight_shape[0], math.prod(self.weight_shape[1:])

    @property
    def rank(self) -> int:
        return min(self.matrix_shape)

    def describe(self) -> dict:
        return {"type": self.kind, "weight_shape": list(self.weight_shape), "matrix_shape": list(self.matrix_shape),
                "rank": self.rank}

    # ------------------------------------------------------------------ weights
    @property
    def base_weight(self) -> torch.Tensor:
        return self.original_weight if self.original_weight is not None else self.module.weight

    def _effective(self) -> torch.Tensor:
        raise NotImplementedError

    def effective_weight(self) -> torch.Tensor:
        """W' in the weight's shape and dtype (differentiable in the trainable parameters)."""
        device = self.module.weight.device
        if next(self.parameters()).device != device:  # the model was moved after the adapter was applied
            self.to(device)
        return self._effective().reshape(self.weight_shape).to(self.module.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the adapted module's forward (unmerged)
        module = self.module
        if isinstance(module, nn.Linear):
            return F.linear(x, self.effective_weight(), module.bias)
        return module._conv_forward(x, self.effective_weight(), module.bias)

    @torch.no_grad()
    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Singular values of W and of W' (matrix view, descending), float32 CPU."""
        rows = self.weight_shape[0]
        return tuple(torch.linalg.svdvals(w.detach().reshape(rows, -1).to("cpu", torch.float64)).float()
                     for w in (self.base_weight, self.effective_weight()))

    def is_identity(self) -> bool:
        return bool((getattr(self, self.zero_param) == 0).all())

    @torch.no_grad()
    def reset(self) -> None:
        getattr(self, self.zero_param).zero_()

    def lr_scales(self) -> dict[str, float]:
        """Parameter name -> learning-rate multiplier (see the module docstring and ``lr_rule``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ files
    def state(self) -> dict[str, torch.Tensor]:
        """The layer's tensors in ``adapter.safetensors`` (float32 CPU): its parameters, by default."""
        return {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in self.named_parameters()}

    @torch.no_grad()
    def load_state(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        """Set the parameters from validated file tensors (``state``'s inverse)."""
        for name, p in self.named_parameters():
            p.copy_(tensors[name].to(p))


class SVDLayer(AdapterLayer):
    """Robust SAM's layer: frozen U, V^T, s_base buffers and the trainable ``delta`` (s = s_base + delta)."""

    method, noun, zero_param = "svd", "an SVD adapter", "delta"
    formula = "W' = U diag(s_base + delta) V^T"
    lr_rule = "lr x mean(s_base) for delta"
    card_title = "SVD robustness adapter"
    card_intro = "A singular-value adapter (Robust SAM, arXiv 2504.08906)"
    card_how = ("Each targeted weight is decomposed as W = U diag(s) V^T; U and V are frozen (recomputed from the\n"
                "base weights at load time, never stored) and only **{n} singular values** s (per layer\n"
                "its `rank` largest, table below)\n"
                "were trained, adversarially, to keep masks right under attack.")
    card_files = (f"per layer `<module>.{_S_KEY}` (adapted s) and `<module>.{_S_BASE_KEY}` (the base\n"
                  "  model's s, for reference), float32.")
    card_tags = ("svd", "singular-value-adapter")

    def __init__(self, name: str, module: nn.Module, rank: int | None = None, generator=None):
        super().__init__(name, module)
        weight = module.weight.detach()
        matrix = weight.reshape(weight.shape[0], -1).to("cpu", torch.float64)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        self.register_buffer("U", u.to(weight.device, self.compute_dtype), persistent=False)
        self.register_buffer("Vh", vh.to(weight.device, self.compute_dtype), persistent=False)
        self.register_buffer("s_base", s.to(weight.device, self.compute_dtype), persistent=False)
        trained = s.numel() if rank is None else min(rank, s.numel())  # a narrow layer trains all it has
        if trained < 1:
            raise AdapterError(f"{name}: an SVD adapter trains at least one singular value (rank {rank!r}).")
        self.delta = nn.Parameter(torch.zeros(trained, device=weight.device, dtype=self.compute_dtype))

    @staticmethod
    def ranks(rows: int, cols: int) -> range:
        """Trained singular values of an ``rows x cols`` matrix: its k largest, 1 <= k <= min(rows, cols)."""
        return range(1, min(rows, cols) + 1)

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        return {_S_KEY: (info["rank"],), _S_BASE_KEY: (info["rank"],)}

    @classmethod
    def count(cls, info: dict) -> int:
        return info["rank"]

    @property
    def rank(self) -> int:
        """k: the number of (largest) singular values trained; min(out, in k k) unless limited."""
        return self.delta.numel()

    @property
    def singular_values(self) -> torch.Tensor:
        """The whole adapted spectrum (r,): s_base + delta on the k largest, s_base on the rest."""
        k = self.rank
        return torch.cat([self.s_base[:k] + self.delta, self.s_base[k:]])

    def _effective(self) -> torch.Tensor:
        return (self.U * self.singular_values) @ self.Vh

    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_base, s_base + delta): the adapted values in the base's order (not re-sorted)."""
        return self.s_base.detach().float().cpu(), self.singular_values.detach().float().cpu()

    def lr_scales(self) -> dict[str, float]:
        return {"delta": float(self.s_base.mean())}

    def state(self) -> dict[str, torch.Tensor]:
        k, (base, adapted) = self.rank, self.spectrum()
        return {_S_KEY: adapted[:k].contiguous(), _S_BASE_KEY: base[:k].contiguous()}

    @torch.no_grad()
    def load_state(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        k = self.rank
        stored, recomputed = tensors[_S_BASE_KEY].float(), self.s_base[:k].detach().float().cpu()
        error = float((stored - recomputed).abs().max() / recomputed.abs().max().clamp(min=1e-12))
        if error > BASE_S_RTOL:
            raise AdapterError(f"{source}: the base singular values stored for {self.name} differ from this "
                               f"model's by {error:.2e} (relative); the adapter belongs to other weights.")
        self.delta.copy_(tensors[_S_KEY].to(self.s_base) - self.s_base[:k])


class LoRALayer(AdapterLayer):
    """Baseline: W' = W + B A on the matrix view; A ``rank x (in k k)``, B ``out x rank`` (zero at init)."""

    method, noun, zero_param = "lora", "a LoRA adapter", "lora_B"
    formula = "W' = W + B A"
    lr_rule = "lr x rms(A) for A, lr x ||W||_F / (sqrt(out) ||A||_F) for B"
    card_title = "LoRA robustness adapter (baseline)"
    card_intro = "A LoRA adapter (a baseline for Robust SAM's singular-value adapter, arXiv 2504.08906)"
    card_how = ("Each targeted weight (as an out x (in k k) matrix) becomes W + B A with B (zero-initialised) and A\n"
                "of rank {ranks}; W is frozen and only the **{n} values** of A and B were trained, adversarially,\n"
                "to keep masks right under attack.")
    card_files = "per layer `<module>.lora_A` (rank x in k k) and `<module>.lora_B` (out x rank), float32."
    card_tags = ("lora", "defense-baseline")

    def __init__(self, name: str, module: nn.Module, rank: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(name, module)
        rank = 1 if rank is None else rank
        rows, cols = self.matrix_shape
        if rank not in self.ranks(rows, cols):
            raise AdapterError(f"{name}: LoRA rank {rank!r} does not fit its {rows}x{cols} matrix "
                               f"(1 to {min(rows, cols)}).")
        device = module.weight.device
        # PEFT's kaiming_uniform_(a=sqrt(5)) on A: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from a seeded generator.
        a = (torch.rand(rank, cols, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(cols)
        self.lora_A = nn.Parameter(a.to(device, self.compute_dtype))
        self.lora_B = nn.Parameter(torch.zeros(rows, rank, device=device, dtype=self.compute_dtype))

    @staticmethod
    def ranks(rows: int, cols: int) -> range:
        return range(1, min(rows, cols) + 1)

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        (rows, cols), rank = info["matrix_shape"], info["rank"]
        return {"lora_A": (rank, cols), "lora_B": (rows, rank)}

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def _effective(self) -> torch.Tensor:
        return self.base_weight.reshape(self.weight_shape[0], -1) + self.lora_B @ self.lora_A

    def lr_scales(self) -> dict[str, float]:
        # A step of B by lr_B per entry changes W by lr_B sqrt(out) ||A||_F (A's rows nearly orthogonal):
        # lr x ||W||_F needs lr_B as below. A moves relative to its own scale.
        a, w = self.lora_A.detach().float(), self.base_weight.detach().float()
        return {"lora_A": float(a.square().mean().sqrt()),
                "lora_B": float(w.norm() / (math.sqrt(self.weight_shape[0]) * a.norm()))}


class FullLayer(AdapterLayer):
    """Baseline: the whole weight trainable, W' = W + Delta (Delta zero at init; the bias stays frozen)."""

    method, noun, zero_param = "full", "a full-weight adapter", "weight_delta"
    formula = "W' = W + Delta"
    lr_rule = "lr x rms(W) for Delta"
    card_title = "Full-weight robustness adapter (baseline)"
    card_intro = "A full-weight adapter (a baseline for Robust SAM's singular-value adapter, arXiv 2504.08906)"
    card_how = ("The targeted weights were fine-tuned as a whole, adversarially, to keep masks right under attack:\n"
                "W' = W + Delta with **{n} trainable values** (biases frozen); the file stores Delta.")
    card_files = "per layer `<module>.weight_delta` (W' - W, in the weight's shape), float32."
    card_tags = ("full-fine-tuning", "defense-baseline")

    def __init__(self, name: str, module: nn.Module, rank: int | None = None, generator=None):
        super().__init__(name, module)
        self.weight_delta = nn.Parameter(torch.zeros(self.weight_shape, device=module.weight.device,
                                                     dtype=self.compute_dtype))

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        return {"weight_delta": tuple(info["weight_shape"])}

    def _effective(self) -> torch.Tensor:
        return self.base_weight + self.weight_delta

    def lr_scales(self) -> dict[str, float]:
        return {"weight_delta": float(self.base_weight.detach().float().square().mean().sqrt())}


LAYER_TYPES: dict[str, type[AdapterLayer]] = {cls.method: cls for cls in (SVDLayer, LoRALayer, FullLayer)}
METHODS = tuple(LAYER_TYPES)


class Adapter(nn.Module):
    """An adapter (``config.method``: svd, lora, full) applied to one model. Create with :func:`apply_adapter`.

    ``rank`` only matters for a fresh adapter (a saved one has its ranks in ``config.layers``):
    LoRA's rank (None: 1), or the number of largest singular values an SVD adapter trains per
    layer (None: all of them; a layer with fewer trains all it has). ``seed``: a fresh LoRA's A.
    """

    def __init__(self, model: nn.Module, config: AdapterConfig, names: Sequence[str], rank: int | None = None,
                 seed: int = 0):
        super().__init__()
        modules = dict(model.named_modules())
        self.names = list(names)
        layer_type, generator = LAYER_TYPES[config.method], torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(
            layer_type(name, modules[name], config.layers.get(name, {}).get("rank", rank), generator)
            for name in self.names)
        self.config = config
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "engine", None)
        self.merged = False
        self._requires_grad: dict[str, bool] = {}
        self._attached = False

    # ------------------------------------------------------------------ info
    @property
    def method(self) -> str:
        return self.config.method

    @property
    def noun(self) -> str:
        return LAYER_TYPES[self.method].noun

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def layer(self, name: str) -> AdapterLayer:
        return self.layers[self.names.index(name)]

    def singular_values(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (s of W, s of W'), detached float32 CPU tensors (svd: s_base and s_base + delta)."""
        return {layer.name: layer.spectrum() for layer in self.layers}

    @property
    def tag(self) -> str:
        """Identity of the adapted weights (changes with the parameters): the engine's cache key part."""
        digest = hashlib.sha256(self.config.fingerprint.encode())
        for p in self.parameters():
            digest.update(p.detach().float().cpu().numpy().tobytes())
        return f"{self.method}:" + digest.hexdigest()[:16]

    def is_identity(self) -> bool:
        return all(layer.is_identity() for layer in self.layers)

    def param_groups(self, lr: float) -> list[dict]:
        """Adam parameter groups, one per trainable tensor, with learning rate ``lr x`` its layer's scale.

        The scales make one Adam step (each coordinate moving by about its learning rate) change
        each W by about ``lr x ||W||_F`` whatever the method (svd: ``lr x mean(s) sqrt(r)``, at most that).
        """
        return [{"params": [getattr(layer, name)], "lr": lr * scale, "name": f"{layer.name}.{name}"}
                for layer in self.layers for name, scale in layer.lr_scales().items()]

    # ------------------------------------------------------------------ values
    @torch.no_grad()
    def set_singular_values(self, values: Mapping[str, torch.Tensor]) -> None:
        """Set the adapted spectrum (r,) of every layer (delta = s - s_base on its k trained values); svd only."""
        if self.method != "svd":
            raise AdapterError(f"set_singular_values needs an SVD adapter; this is {self.noun}.")
        if self.merged:
            raise AdapterError("Unmerge the adapter before changing its singular values.")
        missing = [name for name in self.names if name not in values]
        if missing:
            raise AdapterError(f"No singular values given for {missing}.")
        for layer in self.layers:
            s = torch.as_tensor(values[layer.name]).to(layer.s_base)
            k, total = layer.rank, layer.s_base.numel()
            if s.shape != layer.s_base.shape:
                raise AdapterError(f"{layer.name}: {tuple(s.shape)} singular values given, the layer has {total}.")
            if not torch.equal(s[k:], layer.s_base[k:]):
                raise AdapterError(f"{layer.name}: only its {k} largest singular values are trainable; the other "
                                   f"{total - k} must keep their base values.")
            layer.delta.copy_(s[:k] - layer.s_base[:k])
        self._refresh_engine_tag()

    @torch.no_grad()
    def reset(self) -> None:
        """Back to W' = W (the identity adapter)."""
        for layer in self.layers:
            layer.reset()
        self._refresh_engine_tag()

    def _refresh_engine_tag(self) -> None:
        if self.engine is not None and self._attached:
            self.engine.adapter_tag = self.tag

    def refresh_tag(self) -> str:
        """Update the engine's ``adapter_tag`` after changing parameters in place (e.g. optimiser steps)."""
        self._refresh_engine_tag()
        return self.tag

    # ------------------------------------------------------------------ life cycle
    def _attach(self, freeze_base: bool, engine=None) -> None:
        _check_no_adapter(self.model)
        if freeze_base:
            self._requires_grad = {n: p.requires_grad for n, p in self.model.named_parameters()}
            self.model.requires_grad_(False)
        for layer in self.layers:
            layer.module.forward = layer.forward  # instance attribute: shadows the class forward
            object.__setattr__(layer.module, _ATTACHED + "_layer", layer)
        object.__setattr__(self.model, _ATTACHED, self)
        object.__setattr__(self, "engine", engine)
        self._attached = True
        self._refresh_engine_tag()

    @torch.no_grad()
    def merge(self) -> None:
        """Write W' into the layers (plain forward again, zero overhead); keeps the originals."""
        self._check_attached()
        if self.merged:
            return
        for layer in self.layers:
            module = layer.module
            merged = layer.effective_weight().detach().clone()
            object.__setattr__(layer, "original_weight", module.weight.data)
            module.weight.data = merged
            del module.forward
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact original weight tensors (bit-exact) and the adapted forward."""
        self._check_attached()
        if not self.merged:
            return
        for layer in self.layers:
            module = layer.module
            module.weight.data = layer.original_weight
            object.__setattr__(layer, "original_weight", None)
            module.forward = layer.forward
        self.merged = False

    def remove(self) -> None:
        """Detach from the model: original weights and forward back, requires_grad restored."""
        if not self._attached:
            return
        self.unmerge()
        for layer in self.layers:
            del layer.module.forward
            delattr(layer.module, _ATTACHED + "_layer")
        for name, param in self.model.named_parameters():
            if name in self._requires_grad:
                param.requires_grad_(self._requires_grad[name])
        delattr(self.model, _ATTACHED)
        if self.engine is not None:
            self.engine.adapter_tag = ""
        self._attached = False

    def _check_attached(self) -> None:
        if not self._attached:
            raise AdapterError("This adapter has been removed from its model.")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors written to ``adapter.safetensors``: ``<module>.<tensor>`` (``file_shapes``)."""
        return {f"{layer.name}.{key}": t for layer in self.layers for key, t in layer.state().items()}

    def load_state(self, tensors: Mapping[str, Mapping[str, torch.Tensor]], source: str) -> None:
        """Set every layer from validated file tensors (layer name -> tensor name -> tensor)."""
        if self.merged:
            raise AdapterError("Unmerge the adapter before loading other values into it.")
        for layer in self.layers:
            layer.load_state(tensors[layer.name], source)
        self._refresh_engine_tag()


SVDAdapter = Adapter  # the name from before the baselines (svd only), kept for imports


def _check_no_adapter(model: nn.Module) -> None:
    existing = getattr(model, _ATTACHED, None)
    if existing is not None:
        raise AdapterError(f"This model already has {existing.noun}; remove it first (remove_adapter).")


def _unwrap(target) -> tuple[nn.Module, str | None, str | None, Any]:
    """(model, family, name, engine) from a SegmentEngine or an nn.Module."""
    if isinstance(target, nn.Module):
        return target, None, None, None
    model = getattr(target, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a SegmentEngine or an nn.Module, got {type(target).__name__}")
    return model, target.family, target.name, target


def get_adapter(target) -> Adapter | None:
    model, *_ = _unwrap(target)
    return getattr(model, _ATTACHED, None)


def apply_adapter(target, config: AdapterConfig | None = None, *, family: str | None = None,
                  model_name: str | None = None, freeze_base: bool = True, rank: int | None = None,
                  seed: int = 0) -> Adapter:
    """Wrap the target layers of a model (or a ``SegmentEngine``'s model) in an identity adapter.

    ``config``: the method (``config.method``, default svd), which layers (``target_modules``
    globs; empty = family default) and, when it carries a ``fingerprint`` (a loaded adapter),
    the base weights it must be applied to. ``freeze_base``: set ``requires_grad=False`` on
    every base parameter (restored by remove), so the adapter's parameters are the only
    trainable tensors. ``rank``, ``seed``: see :class:`Adapter` (LoRA's rank or the SVD
    adapter's trained singular values per layer; LoRA's A). With an engine, sets its ``adapter_tag``. Returns the adapter; W' = W for now.
    """
    model, engine_family, engine_name, engine = _unwrap(target)
    fresh = config is None or not config.fingerprint  # a saved adapter names its own family
    config = AdapterConfig(**asdict(config)) if config is not None else AdapterConfig()
    if fresh:
        family = family or engine_family or _detect_family(model) or config.family
    else:
        family = config.family
    if engine_family and family != engine_family:
        raise AdapterError(f"This adapter is for a {family!r} model ({config.base_model!r}) but "
                           f"{engine_name!r} is a {engine_family!r} model.")
    if model_name is None:
        model_name = engine_name if engine_name is not None else config.base_model
    _check_no_adapter(model)
    if config.method not in LAYER_TYPES:
        raise AdapterError(f"Unknown adapter method {config.method!r}; expected one of {', '.join(LAYER_TYPES)}.")
    if config.layers:  # a saved adapter: exactly its layers
        names = list(config.layers)
        _check_layers_fit(model, config)
    else:
        config.target_modules = list(config.target_modules) or default_target_modules(family)
        names = resolve_targets(model, config.target_modules)
    fingerprint = fingerprint_weights(model, names)
    if config.fingerprint and config.fingerprint != fingerprint:
        raise AdapterError(
            f"This adapter was trained on {config.base_model!r} with base-weight fingerprint "
            f"{config.fingerprint[:19]}..., but the target layers of this model ({model_name!r}) hash to "
            f"{fingerprint[:19]}...: these are different weights. Load the adapter onto {config.base_model!r} "
            "with the exact weights it was trained on.")
    if config.fingerprint:  # a saved adapter keeps the name of the model it was trained on
        if model_name not in (config.base_model, "custom"):
            warnings.warn(f"Adapter trained for {config.base_model!r} applied to a model named {model_name!r} "
                          "(same weights by fingerprint).", stacklevel=2)
    else:
        config.base_model = model_name
    config.family, config.fingerprint = family, fingerprint
    adapter = Adapter(model, config, names, rank=rank, seed=seed)
    config.layers = {layer.name: layer.describe() for layer in adapter.layers}
    config.num_trainable = adapter.num_trainable
    if config.base_model_hub_id is None:
        config.base_model_hub_id = _hub_id_of(config.base_model)
    adapter._attach(freeze_base, engine)
    return adapter


def _detect_family(model: nn.Module) -> str | None:
    """"sam2" for a SAM2Base (sam_mask_decoder), "sam" for a segment_anything Sam (mask_decoder)."""
    if hasattr(model, "sam_mask_decoder"):
        return "sam2"
    if hasattr(model, "mask_decoder") and hasattr(model, "image_encoder"):
        return "sam"
    return None


def remove_adapter(target) -> None:
    """Remove the adapter of a model/engine, if any (original weights and forward restored)."""
    adapter = get_adapter(target)
    if adapter is not None:
        adapter.remove()


def count_trainable(target) -> int:
    adapter = get_adapter(target)
    return 0 if adapter is None else adapter.num_trainable


def _hub_id_of(model_name: str) -> str | None:
    if model_name in BASE_MODEL_HUB_IDS:
        return BASE_MODEL_HUB_IDS[model_name]
    try:
        from samdemo.build import MODEL_REGISTRY
    except Exception:  # pragma: no cover - registry import problems must not block adapters
        return None
    spec = MODEL_REGISTRY.get(model_name)
    if spec is not None and spec.hub is not None and spec.hub.repo_id.startswith("facebook/"):
        return spec.hub.repo_id
    return None


def _check_layers_fit(model: nn.Module, config: AdapterConfig) -> None:
    modules = dict(model.named_modules())
    problems = []
    for name, info in config.layers.items():
        module = modules.get(name)
        if module is None:
            problems.append(f"{name}: no such module in this model")
        elif type(module).__name__ != info["type"] or not isinstance(module, SUPPORTED_MODULES):
            problems.append(f"{name}: the adapter expects a {info['type']}, the model has a {type(module).__name__}")
        elif list(module.weight.shape) != list(info["weight_shape"]):
            problems.append(f"{name}: weight shape {list(module.weight.shape)} in the model, "
                            f"{list(info['weight_shape'])} in the adapter")
    if problems:
        raise AdapterError(f"This adapter (for {config.base_model!r}) does not fit this model: " + "; ".join(problems)
                           + ".")


# ---------------------------------------------------------------------- files
@dataclass
class AdapterFiles:
    """The validated contents of an adapter folder (no model needed)."""

    config: AdapterConfig
    tensors: dict[str, dict[str, torch.Tensor]]  # layer name -> tensor name (``file_shapes``) -> float32 tensor
    folder: Path

    def values(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (s_base, s) of an svd adapter (the plots' input)."""
        if self.config.method != "svd":  # W and W' of the baselines need the base model: see Adapter.singular_values
            raise AdapterError(f"{self.folder} holds {LAYER_TYPES[self.config.method].noun}, not singular values; "
                               "apply it to its base model and use adapter.singular_values().")
        return {name: (t[_S_BASE_KEY], t[_S_KEY]) for name, t in self.tensors.items()}

    @property
    def singular_values(self) -> dict[str, torch.Tensor]:
        """Adapted s per layer (svd adapters)."""
        return {name: s for name, (_, s) in self.values().items()}

    @property
    def base_singular_values(self) -> dict[str, torch.Tensor]:
        return {name: base for name, (base, _) in self.values().items()}


def read_adapter_folder(folder: str | Path) -> AdapterFiles:
    """Read and validate ``adapter_config.json`` + ``adapter.safetensors``; AdapterError if anything is off."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"Adapter folder {folder} does not exist (or is not a folder).")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise AdapterError(f"Adapter folder {folder} lacks {' and '.join(missing)}; an adapter is "
                           f"{CONFIG_FILE} + {WEIGHTS_FILE} (+ {CARD_FILE}).")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AdapterError(f"{config_path} is not UTF-8 text (corrupt file?).") from None
    except json.JSONDecodeError as error:
        raise AdapterError(f"{config_path} is not valid JSON ({error.msg} at line {error.lineno}, column "
                           f"{error.colno}); the file is truncated or corrupt.") from None
    config = AdapterConfig.from_dict(data, source=str(config_path))
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise AdapterError(f"{weights_path} cannot be read as safetensors ({type(error).__name__}: {error}); the "
                           "file is truncated or corrupt. Re-download or re-export the adapter.") from None
    layer_type = LAYER_TYPES[config.method]
    shapes = {name: layer_type.file_shapes(info) for name, info in config.layers.items()}
    expected = {f"{name}.{key}" for name, keys in shapes.items() for key in keys}
    unknown, absent = sorted(set(tensors) - expected), sorted(expected - set(tensors))
    if unknown or absent:
        parts = ([f"unknown tensors {unknown}"] if unknown else []) + ([f"missing tensors {absent}"] if absent else [])
        raise AdapterError(f"{weights_path} does not match {CONFIG_FILE}: {'; '.join(parts)}.")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, keys in shapes.items():
        rows, cols = config.layers[name]["matrix_shape"]
        for key, shape in keys.items():
            t = tensors[f"{name}.{key}"]
            if not t.is_floating_point():
                raise AdapterError(f"{weights_path}: {name}.{key} has dtype {t.dtype}, expected float.")
            if tuple(t.shape) != shape:
                need = f"{shape[0]} singular values" if config.method == "svd" else f"shape {shape} for it"
                raise AdapterError(f"{weights_path}: {name}.{key} has shape {tuple(t.shape)}, but layer {name} "
                                   f"({rows}x{cols}) has {need}.")
            if not torch.isfinite(t).all():
                raise AdapterError(f"{weights_path}: {name}.{key} contains NaN or infinite values.")
            layers.setdefault(name, {})[key] = t.float()
    return AdapterFiles(config, layers, folder)


def save_adapter(adapter: Adapter, folder: str | Path, *, training: dict | None = None,
                 metrics: dict | None = None, training_log: dict | None = None, plot: bool = True) -> Path:
    """Write adapter.safetensors, adapter_config.json and README.md (+ plot, log) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = adapter.config
    if training is not None:
        config.training = dict(training)
    if metrics is not None:
        config.metrics = dict(metrics)
    save_file(adapter.state_tensors(), str(folder / WEIGHTS_FILE),
              metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "method": config.method,
                        "base_model": config.base_model, "fingerprint": config.fingerprint})
    (folder / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")
    if training_log is not None:
        (folder / LOG_FILE).write_text(json.dumps(training_log, indent=1, default=_json_default), encoding="utf-8")
    if plot:
        from samdemo.plots import singular_value_plot

        singular_value_plot(adapter).savefig(folder / PLOT_FILE, dpi=110)
    (folder / CARD_FILE).write_text(model_card(config, has_plot=(folder / PLOT_FILE).exists()), encoding="utf-8")
    return folder


def load_adapter(target, folder: str | Path, *, freeze_base: bool = True, merge: bool = False) -> Adapter:
    """Apply the adapter saved in ``folder`` to a model or engine, after validating everything.

    Refuses (AdapterError) a malformed folder, layers that do not exist or have other shapes,
    and base weights whose fingerprint differs from the one the adapter was trained on; the
    model is left untouched then. ``merge``: merge at once (inference: zero overhead).
    For ``owner/repo`` Hub sources use :func:`samdemo.hub.load_adapter`.
    """
    files = read_adapter_folder(folder)
    model, engine_family, engine_name, _ = _unwrap(target)
    if engine_family is not None and engine_family != files.config.family:
        raise AdapterError(f"{folder} is an adapter for a {files.config.family!r} model ({files.config.base_model!r}) "
                           f"but {engine_name!r} is a {engine_family!r} model.")
    adapter = apply_adapter(target, files.config, freeze_base=freeze_base)
    try:
        adapter.load_state(files.tensors, str(folder))
    except BaseException:
        adapter.remove()
        raise
    if merge:
        adapter.merge()
    return adapter


def model_card(config: AdapterConfig, has_plot: bool = False) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for an adapter."""
    import yaml

    layer_type = LAYER_TYPES[config.method]
    family_tag = "sam2" if config.family == "sam2" else "sam"
    front: dict[str, Any] = {
        "library_name": "samdemo",
        "tags": ["segment-anything", family_tag, "adversarial-robustness", *layer_type.card_tags,
                 "image-segmentation"],
        "pipeline_tag": "mask-generation",
    }
    if config.base_model_hub_id:
        front["base_model"] = config.base_model_hub_id
    layers = "\n".join(f"| `{name}` | {info['type']} | {info['matrix_shape'][0]} x {info['matrix_shape'][1]} | "
                       f"{info['rank']} | {layer_type.count(info)} |" for name, info in config.layers.items())
    ranks = ", ".join(str(r) for r in sorted({info["rank"] for info in config.layers.values()}))
    how = layer_type.card_how.format(n=config.num_trainable, ranks=ranks)
    metrics = _metrics_table(config.metrics)
    training = "\n".join(f"- `{k}`: {v}" for k, v in config.training.items()) or "- (not recorded)"
    plot = f"\n![Original vs adapted singular values]({PLOT_FILE})\n" if has_plot else ""
    hub_link = (f" (Hub: [{config.base_model_hub_id}](https://huggingface.co/{config.base_model_hub_id}))"
                if config.base_model_hub_id else "")
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {layer_type.card_title} for `{config.base_model}`

{layer_type.card_intro} for the {'SAM 2' if config.family == 'sam2' else 'SAM'} model
`{config.base_model}`{hub_link}.
{how}

## Use

```python
from samdemo.engine import SegmentEngine
from samdemo.hub import load_adapter

engine = SegmentEngine.from_name("{config.base_model}")
adapter = load_adapter(engine, "OWNER/REPO")   # or a local folder
adapter.merge()                                 # optional: zero inference overhead
```

The adapter refuses to load onto other weights: base-weight fingerprint `{config.fingerprint}`
(sha256 of the targeted layers' weights and biases as float32).

## Layers

| module | type | matrix | rank | trainable values |
|---|---|---|---|---|
{layers}
{plot}
## Evaluation

{metrics}

## Training

{training}

## Files

- `{WEIGHTS_FILE}`: {layer_type.card_files}
- `{CONFIG_FILE}`: method, base model, fingerprint, layers, counts, training recipe and metrics.

Format `{FORMAT_NAME}` version {FORMAT_VERSION}, written by samdemo (method `{config.method}`:
{layer_type.formula}).
"""


def _metrics_table(metrics: dict) -> str:
    """Markdown table of held-out mIoU (rows: condition, columns: prompt type), if recorded."""
    rows = metrics.get("table") if isinstance(metrics, dict) else None
    if not rows:
        return "No evaluation recorded." if not metrics else "```json\n" + json.dumps(metrics, indent=1) + "\n```"
    columns = [c for c in ("point", "box", "mask") if any(c in r for r in rows)]
    lines = ["| condition | " + " | ".join(f"mIoU {c}" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(f"| {row['condition']} | " + " | ".join(
            f"{row[c]:.3f}" if isinstance(row.get(c), (int, float)) and math.isfinite(row[c]) else "-"
            for c in columns) + " |")
    note = metrics.get("note", "")
    return "\n".join(lines) + (f"\n\n{note}" if note else "")
