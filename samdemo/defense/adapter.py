"""The Adapter: a set of adapted layers attached to one model, and its life cycle.

:func:`apply_adapter` wraps the target layers of a model (or a ``SegmentEngine``'s model) in
one :class:`~samdemo.defense.layers.AdapterLayer` each (the method's class) and attaches them:
each base module's forward then computes with W' (the identity at first), the base parameters
are frozen, and the engine's ``adapter_tag`` follows the adapter's parameters.
:func:`get_adapter`, :func:`remove_adapter` and :func:`count_trainable` find, detach and count it.

Merging: :meth:`Adapter.merge` writes W' into the layers once (plain forward, zero overhead)
and keeps the original weight tensors; :meth:`Adapter.unmerge` puts those very tensors back
(bit-exact).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from samdemo.defense.config import (AdapterConfig, base_model_hub_id, default_target_modules, fingerprint_weights,
                                    resolve_targets)
from samdemo.defense.layers import LAYER_ATTR, LAYER_TYPES, SUPPORTED_MODULES, AdapterLayer
from samdemo.errors import AdapterError

_ATTACHED = "_samdemo_svd_adapter"  # attribute on the adapted nn.Module (not a registered submodule)


class Adapter(nn.Module):
    """An adapter (``config.method``: svd, lora, full) applied to one model. Create with :func:`apply_adapter`.

    ``rank`` only matters for a fresh adapter (a saved one has its ranks in ``config.layers``):
    LoRA's rank (None: 1), or the number of largest singular values an SVD adapter trains per
    layer (None: all of them; a layer with fewer trains all it has). ``select``: which ones a fresh SVD
    adapter trains, "largest" (the defense) or "random" (a control; a saved one lists its ``indices``).
    ``seed``: a fresh LoRA's A, a fresh random selection.
    """

    def __init__(self, model: nn.Module, config: AdapterConfig, names: Sequence[str], rank: int | None = None,
                 seed: int = 0, select: str = "largest"):
        super().__init__()
        modules = dict(model.named_modules())
        self.names = list(names)
        layer_type, generator = LAYER_TYPES[config.method], torch.Generator().manual_seed(seed)
        if select != "largest" and config.method != "svd":
            raise AdapterError(f"Choosing which singular values to train (select={select!r}) needs an SVD adapter.")

        def build(name: str) -> AdapterLayer:
            info = config.layers.get(name)
            if info is None:  # fresh
                extra = {"select": select} if config.method == "svd" else {}
                return layer_type(name, modules[name], rank, generator, **extra)
            extra = {"indices": info.get("indices", range(info["rank"]))} if config.method == "svd" else {}
            return layer_type(name, modules[name], info["rank"], generator, **extra)

        self.layers = nn.ModuleList(build(name) for name in self.names)
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
        for layer in self.layers:
            digest.update(layer.structure_key())
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
            k, total, index = layer.rank, layer.s_base.numel(), layer.trained_indices
            if s.shape != layer.s_base.shape:
                raise AdapterError(f"{layer.name}: {tuple(s.shape)} singular values given, the layer has {total}.")
            frozen = torch.ones(total, dtype=torch.bool, device=s.device)
            frozen[index] = False
            if not torch.equal(s[frozen], layer.s_base[frozen]):
                which = "largest" if layer.trains_largest else "chosen"
                raise AdapterError(f"{layer.name}: only its {k} {which} singular values are trainable; the other "
                                   f"{total - k} must keep their base values.")
            layer.delta.copy_(s[index] - layer.s_base[index])
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
            object.__setattr__(layer.module, LAYER_ATTR, layer)
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
            delattr(layer.module, LAYER_ATTR)
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



def _check_no_adapter(model: nn.Module) -> None:
    existing = getattr(model, _ATTACHED, None)
    if existing is not None:
        raise AdapterError(f"This model already has {existing.noun}; remove it first (remove_adapter).")


def unwrap_target(target) -> tuple[nn.Module, str | None, str | None, Any]:
    """(model, family, name, engine) from a SegmentEngine or an nn.Module."""
    if isinstance(target, nn.Module):
        return target, None, None, None
    model = getattr(target, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a SegmentEngine or an nn.Module, got {type(target).__name__}")
    return model, target.family, target.name, target


def get_adapter(target) -> Adapter | None:
    model, *_ = unwrap_target(target)
    return getattr(model, _ATTACHED, None)


def apply_adapter(target, config: AdapterConfig | None = None, *, family: str | None = None,
                  model_name: str | None = None, freeze_base: bool = True, rank: int | None = None,
                  seed: int = 0, select: str = "largest") -> Adapter:
    """Wrap the target layers of a model (or a ``SegmentEngine``'s model) in an identity adapter.

    ``config``: the method (``config.method``, default svd), which layers (``target_modules``
    globs; empty = family default) and, when it carries a ``fingerprint`` (a loaded adapter),
    the base weights it must be applied to. ``freeze_base``: set ``requires_grad=False`` on
    every base parameter (restored by remove), so the adapter's parameters are the only
    trainable tensors. ``rank``, ``seed``, ``select``: see :class:`Adapter` (LoRA's rank or the SVD
    adapter's trained singular values per layer, and which; LoRA's A). With an engine, sets its ``adapter_tag``.
    Returns the adapter; W' = W for now.
    """
    model, engine_family, engine_name, engine = unwrap_target(target)
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
    adapter = Adapter(model, config, names, rank=rank, seed=seed, select=select)
    config.layers = {layer.name: layer.describe() for layer in adapter.layers}
    config.num_trainable = adapter.num_trainable
    if config.base_model_hub_id is None:
        config.base_model_hub_id = base_model_hub_id(config.base_model)
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
