"""What an adapter targets and how it was made: :class:`AdapterConfig` (``adapter_config.json``).

Also the choice of target layers (:func:`default_target_modules`, :func:`resolve_targets`) and
the integrity fingerprint of their base weights (:func:`fingerprint_weights`).

Default targets, 512 singular values on SAM ViT-B/L/H and on Meta's SAM 2:

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
hash differently is refused with an :class:`~samdemo.errors.AdapterError`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from samdemo.defense.fileformat import CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS
from samdemo.defense.layers import LAYER_TYPES, SUPPORTED_MODULES, attached_layer
from samdemo.errors import AdapterError

PARAMETRIZATION = "additive"  # W' = base + update, the update is zero at initialisation (all methods)
DEFAULT_METHOD = "svd"

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
        layer = attached_layer(module)
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
    the number of singular values trained, min(out, in k k) by default; full: min(out,
    in k k); lora: its rank), and for an SVD layer that trains others than its ``rank`` largest
    singular values their positions, ``indices``. ``num_trainable``: trainable values in all.
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
        return json.dumps(asdict(self), indent=1, default=json_default)

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
            if "indices" in info and not _valid_indices(info["indices"], rank, min(rows, cols), method):
                raise AdapterError(f"{source}: layer {name!r} has indices {info['indices']!r}; an SVD adapter's "
                                   f"indices are {rank} distinct positions from 0 to {min(rows, cols) - 1}.")
        total = sum(layer_type.count(info) for info in data["layers"].values())
        if data["num_trainable"] != total:
            raise AdapterError(f"{source}: num_trainable is {data['num_trainable']} but the layers hold {total} "
                               f"trainable values ({method}).")
        return cls(**(data | {"method": method, "format_version": FORMAT_VERSION}))  # read as the current version


def _valid_indices(indices: Any, rank: int, total: int, method: str) -> bool:
    return (method == "svd" and isinstance(indices, list) and len(indices) == rank == len(set(indices))
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < total for i in indices))


def json_default(value):
    """``json.dumps`` ``default`` for paths, tensors and numpy scalars (configs, training logs)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def base_model_hub_id(model_name: str) -> str | None:
    """The Hub repo of a base model (Meta's ``facebook/...``), for the model card; None for embedded models."""
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
