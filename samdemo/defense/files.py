"""Adapter folders on disk: validated reading (:func:`read_adapter_folder`), saving and loading.

A folder is ``adapter_config.json`` + ``adapter.safetensors`` (+ ``README.md`` model card, an
optional ``singular_values.png`` and ``training_log.json``; names in
:mod:`samdemo.defense.fileformat`). The weights file holds per adapted layer ``<module>.<tensor>``
(float32; shapes from the layer type's ``file_shapes``: svd ``singular_values`` and
``base_singular_values`` ``(k,)``, lora ``lora_A`` ``(rank, in k k)`` and ``lora_B``
``(out, rank)``, full ``weight_delta`` in the weight's shape).

Security: the weights are read with ``safetensors`` only (no pickle), and every file is
validated (format, version, keys, types, shapes, dtypes, finite values) before the adapter is
applied; anything off raises an :class:`~samdemo.errors.AdapterError` naming the problem, and a
failed load leaves the model untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from samdemo.defense.adapter import Adapter, apply_adapter, unwrap_target
from samdemo.defense.card import model_card
from samdemo.defense.config import AdapterConfig, json_default
from samdemo.defense.fileformat import (CARD_FILE, CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, LOG_FILE, PLOT_FILE,
                                        S_BASE_KEY, S_KEY, WEIGHTS_FILE)
from samdemo.defense.layers import LAYER_TYPES
from samdemo.errors import AdapterError


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
        return {name: (t[S_BASE_KEY], t[S_KEY]) for name, t in self.tensors.items()}

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
                 metrics: dict | None = None, training_log: dict | None = None, figure=None) -> Path:
    """Write adapter.safetensors, adapter_config.json and README.md (+ plot, log) into ``folder``.

    ``figure``: a matplotlib Figure written as ``singular_values.png`` and shown in the model card,
    normally ``samdemo.plots.singular_value_plot(adapter)`` (plotting is the caller's: the defense
    does not import the plots); None writes no plot.
    """
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
        (folder / LOG_FILE).write_text(json.dumps(training_log, indent=1, default=json_default), encoding="utf-8")
    if figure is not None:
        figure.savefig(folder / PLOT_FILE, dpi=110)
    (folder / CARD_FILE).write_text(model_card(config, has_plot=(folder / PLOT_FILE).exists()), encoding="utf-8")
    return folder


def load_adapter_folder(target, folder: str | Path, *, freeze_base: bool = True, merge: bool = False) -> Adapter:
    """Apply the adapter saved in ``folder`` to a model or engine, after validating everything.

    Refuses (AdapterError) a malformed folder, layers that do not exist or have other shapes,
    and base weights whose fingerprint differs from the one the adapter was trained on; the
    model is left untouched then. ``merge``: merge at once (inference: zero overhead).
    For ``owner/repo`` Hub sources use :func:`samdemo.hub.load_adapter_from_hub`.
    """
    files = read_adapter_folder(folder)
    model, engine_family, engine_name, _ = unwrap_target(target)
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
