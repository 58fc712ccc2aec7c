"""SVD singular-value adapter (the Robust SAM defense): W = U diag(s) V^T with only s trainable.

For every targeted ``nn.Linear`` / ``nn.Conv2d`` (a conv weight ``out x in x k x k`` is read as
the ``out x (in k k)`` matrix it multiplies with), the base weight is decomposed once with
``torch.linalg.svd`` in float64 (then cast to float32): ``W = U diag(s_base) V^T``, thin, so a
layer holds ``r = min(out, in k k)`` singular values. U and V are frozen buffers **recomputed
from the base weights** whenever an adapter is applied or loaded; they are never stored.

Parametrisation (additive): ``s = s_base + delta``, where ``delta`` (initialised to 0, one
``nn.Parameter`` per layer) is the only trainable tensor, so the adapted model equals the base
model at initialisation (up to the float32 rounding of the reconstruction, ~1e-7 relative).
Training uses a learning rate proportional to each layer's mean singular value, which makes an
Adam step a *relative* change of the spectrum, the same for every layer and model size.
Files store the adapted values ``s`` themselves (and ``s_base`` for reference/plots).

Default targets (``default_target_modules``), 512 values on SAM ViT-B/L/H and on Meta's SAM 2:

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

Merging: :meth:`SVDAdapter.merge` writes ``W' = U diag(s) V^T`` into the layers once (plain
forward, zero overhead) and keeps the original weight tensors; :meth:`SVDAdapter.unmerge` puts
those very tensors back (bit-exact).
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

FORMAT_NAME = "samdemo-svd-adapter"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"
PLOT_FILE = "singular_values.png"
LOG_FILE = "training_log.json"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, PLOT_FILE, LOG_FILE)
PARAMETRIZATION = "additive"  # s = s_base + delta, delta is the nn.Parameter
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


class AdapterError(ValueError):
    """An adapter that cannot be used here; the message says what does not fit and what to do."""


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


def _matrix_shape(module: nn.Module) -> tuple[int, int]:
    weight = module.weight
    return weight.shape[0], int(weight[0].numel())


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

    ``target_modules``: glob patterns (empty: the family's defaults). ``layers`` (filled when
    applied): resolved module name -> {"type", "weight_shape", "matrix_shape", "rank"}.
    """

    base_model: str = "custom"
    family: str = "sam"
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
        if version != FORMAT_VERSION:
            raise AdapterError(f"{source} has format_version {version!r}; this samdemo reads version {FORMAT_VERSION}. "
                               "Update samdemo or re-export the adapter.")
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
            rank, (rows, cols) = info["rank"], info["matrix_shape"]
            if not isinstance(rank, int) or rank != min(rows, cols) or rank < 1:
                raise AdapterError(f"{source}: layer {name!r} has rank {rank!r} but its {rows}x{cols} matrix "
                                   f"has {min(rows, cols)} singular values.")
        total = sum(info["rank"] for info in data["layers"].values())
        if data["num_trainable"] != total:
            raise AdapterError(f"{source}: num_trainable is {data['num_trainable']} but the layers hold {total} "
                               "singular values.")
        return cls(**data)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class SVDLayer(nn.Module):
    """One adapted layer: frozen U, V^T, s_base buffers and the trainable ``delta``."""

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        if not isinstance(module, SUPPORTED_MODULES):
            raise AdapterError(f"{name} is a {type(module).__name__}; only Linear and Conv2d can be adapted.")
        self.name = name
        weight = module.weight.detach()
        self.weight_shape = tuple(weight.shape)
        self.kind = type(module).__name__
        compute = torch.promote_types(weight.dtype, torch.float32)
        matrix = weight.reshape(weight.shape[0], -1).to("cpu", torch.float64)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        self.register_buffer("U", u.to(weight.device, compute), persistent=False)
        self.register_buffer("Vh", vh.to(weight.device, compute), persistent=False)
        self.register_buffer("s_base", s.to(weight.device, compute), persistent=False)
        self.delta = nn.Parameter(torch.zeros_like(self.s_base))
        # Plain attributes, not submodules: the adapter must not own (or re-register) base modules.
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "original_weight", None)  # set while merged

    @property
    def rank(self) -> int:
        return self.s_base.numel()

    @property
    def singular_values(self) -> torch.Tensor:
        return self.s_base + self.delta

    def effective_weight(self) -> torch.Tensor:
        if self.U.device != self.module.weight.device:  # the model was moved after the adapter was applied
            self.to(self.module.weight.device)
        w = (self.U * self.singular_values) @ self.Vh
        return w.reshape(self.weight_shape).to(self.module.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the adapted module's forward (unmerged)
        module = self.module
        if isinstance(module, nn.Linear):
            return F.linear(x, self.effective_weight(), module.bias)
        return module._conv_forward(x, self.effective_weight(), module.bias)

    def describe(self) -> dict:
        rows, cols = _matrix_shape(self.module)
        return {"type": self.kind, "weight_shape": list(self.weight_shape), "matrix_shape": [rows, cols],
                "rank": self.rank}


class SVDAdapter(nn.Module):
    """The singular-value adapter applied to one model. Create with :func:`apply_adapter`."""

    def __init__(self, model: nn.Module, config: AdapterConfig, names: Sequence[str]):
        super().__init__()
        modules = dict(model.named_modules())
        self.names = list(names)
        self.layers = nn.ModuleList(SVDLayer(name, modules[name]) for name in self.names)
        self.config = config
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "engine", None)
        self.merged = False
        self._requires_grad: dict[str, bool] = {}
        self._attached = False

    # ------------------------------------------------------------------ info
    @property
    def num_trainable(self) -> int:
        return sum(layer.delta.numel() for layer in self.layers)

    def layer(self, name: str) -> SVDLayer:
        return self.layers[self.names.index(name)]

    def singular_values(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (s_base, s_adapted), detached float32 CPU tensors."""
        return {layer.name: (layer.s_base.detach().float().cpu(), layer.singular_values.detach().float().cpu())
                for layer in self.layers}

    @property
    def tag(self) -> str:
        """Identity of the adapted weights (changes with s): the engine's cache key part."""
        digest = hashlib.sha256(self.config.fingerprint.encode())
        for layer in self.layers:
            digest.update(layer.singular_values.detach().float().cpu().numpy().tobytes())
        return "svd:" + digest.hexdigest()[:16]

    def is_identity(self) -> bool:
        return all(bool((layer.delta == 0).all()) for layer in self.layers)

    def lr_scales(self) -> list[float]:
        """Each layer's mean base singular value (the per-layer learning-rate multiplier)."""
        return [float(layer.s_base.mean()) for layer in self.layers]

    # ------------------------------------------------------------------ values
    @torch.no_grad()
    def set_singular_values(self, values: Mapping[str, torch.Tensor]) -> None:
        """Set the adapted s of every layer (delta = s - s_base)."""
        if self.merged:
            raise AdapterError("Unmerge the adapter before changing its singular values.")
        missing = [name for name in self.names if name not in values]
        if missing:
            raise AdapterError(f"No singular values given for {missing}.")
        for layer in self.layers:
            s = torch.as_tensor(values[layer.name])
            if s.shape != layer.s_base.shape:
                raise AdapterError(f"{layer.name}: {tuple(s.shape)} singular values given, the layer has {layer.rank}.")
            layer.delta.copy_(s.to(layer.s_base) - layer.s_base)
        self._refresh_engine_tag()

    @torch.no_grad()
    def reset(self) -> None:
        for layer in self.layers:
            layer.delta.zero_()
        self._refresh_engine_tag()

    def _refresh_engine_tag(self) -> None:
        if self.engine is not None and self._attached:
            self.engine.adapter_tag = self.tag

    def refresh_tag(self) -> str:
        """Update the engine's ``adapter_tag`` after changing s in place (e.g. optimiser steps)."""
        self._refresh_engine_tag()
        return self.tag

    # ------------------------------------------------------------------ life cycle
    def _attach(self, freeze_base: bool, engine=None) -> None:
        if getattr(self.model, _ATTACHED, None) is not None:
            raise AdapterError("This model already has an SVD adapter; remove it first (remove_adapter).")
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
        """Write W' = U diag(s) V^T into the layers (plain forward again); keeps the originals."""
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
        """The tensors written to ``adapter.safetensors``."""
        out = {}
        for name, (base, adapted) in self.singular_values().items():
            out[f"{name}.{_S_KEY}"] = adapted.contiguous()
            out[f"{name}.{_S_BASE_KEY}"] = base.contiguous()
        return out


def _unwrap(target) -> tuple[nn.Module, str | None, str | None, Any]:
    """(model, family, name, engine) from a SegmentEngine or an nn.Module."""
    if isinstance(target, nn.Module):
        return target, None, None, None
    model = getattr(target, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a SegmentEngine or an nn.Module, got {type(target).__name__}")
    return model, target.family, target.name, target


def get_adapter(target) -> SVDAdapter | None:
    model, *_ = _unwrap(target)
    return getattr(model, _ATTACHED, None)


def apply_adapter(target, config: AdapterConfig | None = None, *, family: str | None = None,
                  model_name: str | None = None, freeze_base: bool = True) -> SVDAdapter:
    """Wrap the target layers of a model (or a ``SegmentEngine``'s model) in an identity adapter.

    ``config``: which layers (``target_modules`` globs; empty = family default) and, when it
    carries a ``fingerprint`` (a loaded adapter), the base weights it must be applied to.
    ``freeze_base``: set ``requires_grad=False`` on every base parameter (restored by remove),
    so the adapter's deltas are the only trainable tensors. With an engine, sets its
    ``adapter_tag``. Returns the adapter; its singular values equal the base ones.
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
    if getattr(model, _ATTACHED, None) is not None:
        raise AdapterError("This model already has an SVD adapter; remove it first (remove_adapter).")
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
    adapter = SVDAdapter(model, config, names)
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
    singular_values: dict[str, torch.Tensor]  # adapted s per layer
    base_singular_values: dict[str, torch.Tensor]
    folder: Path

    def values(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {name: (self.base_singular_values[name], self.singular_values[name]) for name in self.config.layers}


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
    expected = {f"{name}.{key}" for name in config.layers for key in (_S_KEY, _S_BASE_KEY)}
    unknown, absent = sorted(set(tensors) - expected), sorted(expected - set(tensors))
    if unknown or absent:
        parts = ([f"unknown tensors {unknown}"] if unknown else []) + ([f"missing tensors {absent}"] if absent else [])
        raise AdapterError(f"{weights_path} does not match {CONFIG_FILE}: {'; '.join(parts)}.")
    adapted, base = {}, {}
    for name, info in config.layers.items():
        for key, store in ((_S_KEY, adapted), (_S_BASE_KEY, base)):
            t = tensors[f"{name}.{key}"]
            if not t.is_floating_point():
                raise AdapterError(f"{weights_path}: {name}.{key} has dtype {t.dtype}, expected float.")
            if tuple(t.shape) != (info["rank"],):
                raise AdapterError(f"{weights_path}: {name}.{key} has shape {tuple(t.shape)}, but layer {name} "
                                   f"({info['matrix_shape'][0]}x{info['matrix_shape'][1]}) has {info['rank']} "
                                   "singular values.")
            if not torch.isfinite(t).all():
                raise AdapterError(f"{weights_path}: {name}.{key} contains NaN or infinite values.")
            store[name] = t.float()
    return AdapterFiles(config, adapted, base, folder)


def save_adapter(adapter: SVDAdapter, folder: str | Path, *, training: dict | None = None,
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
              metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "base_model": config.base_model,
                        "fingerprint": config.fingerprint})
    (folder / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")
    if training_log is not None:
        (folder / LOG_FILE).write_text(json.dumps(training_log, indent=1, default=_json_default), encoding="utf-8")
    if plot:
        from samdemo.plots import singular_value_plot

        figure = singular_value_plot(adapter)
        figure.savefig(folder / PLOT_FILE, dpi=110)
    (folder / CARD_FILE).write_text(model_card(config, has_plot=(folder / PLOT_FILE).exists()), encoding="utf-8")
    return folder


def load_adapter(target, folder: str | Path, *, freeze_base: bool = True, merge: bool = False) -> SVDAdapter:
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
        for layer in adapter.layers:
            stored, recomputed = files.base_singular_values[layer.name], layer.s_base.detach().float().cpu()
            error = float((stored - recomputed).abs().max() / recomputed.abs().max().clamp(min=1e-12))
            if error > BASE_S_RTOL:
                raise AdapterError(f"{folder}: the base singular values stored for {layer.name} differ from this "
                                   f"model's by {error:.2e} (relative); the adapter belongs to other weights.")
        adapter.set_singular_values(files.singular_values)
    except BaseException:
        adapter.remove()
        raise
    if merge:
        adapter.merge()
    return adapter


def model_card(config: AdapterConfig, has_plot: bool = False) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for an adapter."""
    import yaml

    family_tag = "sam2" if config.family == "sam2" else "sam"
    front: dict[str, Any] = {
        "library_name": "samdemo",
        "tags": ["segment-anything", family_tag, "adversarial-robustness", "svd", "singular-value-adapter",
                 "image-segmentation"],
        "pipeline_tag": "mask-generation",
    }
    if config.base_model_hub_id:
        front["base_model"] = config.base_model_hub_id
    layers = "\n".join(f"| `{name}` | {info['type']} | {info['matrix_shape'][0]} x {info['matrix_shape'][1]} | "
                       f"{info['rank']} |" for name, info in config.layers.items())
    metrics = _metrics_table(config.metrics)
    training = "\n".join(f"- `{k}`: {v}" for k, v in config.training.items()) or "- (not recorded)"
    plot = f"\n![Original vs adapted singular values]({PLOT_FILE})\n" if has_plot else ""
    hub_link = (f" (Hub: [{config.base_model_hub_id}](https://huggingface.co/{config.base_model_hub_id}))"
                if config.base_model_hub_id else "")
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# SVD robustness adapter for `{config.base_model}`

A singular-value adapter (Robust SAM, arXiv 2504.08906) for the {'SAM 2' if config.family == 'sam2' else 'SAM'} model
`{config.base_model}`{hub_link}.
Each targeted weight is decomposed as W = U diag(s) V^T; U and V are frozen (recomputed from the
base weights at load time, never stored) and only the **{config.num_trainable} singular values** s
were trained, adversarially, to keep masks right under attack.

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

| module | type | matrix | singular values |
|---|---|---|---|
{layers}
{plot}
## Evaluation

{metrics}

## Training

{training}

## Files

- `{WEIGHTS_FILE}`: per layer `<module>.{_S_KEY}` (adapted s) and `<module>.{_S_BASE_KEY}` (the base
  model's s, for reference), float32.
- `{CONFIG_FILE}`: base model, fingerprint, layers, counts, training recipe and metrics.

Format `{FORMAT_NAME}` version {FORMAT_VERSION}, written by samdemo (parametrisation: s = s_base + delta).
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
