"""The one place engines are built: a registry model by name, optional weights, and its robust copy.

    original = load_engine("sam-small")                         # the registry's weights
    robust, adapter = robust_copy(original, "checkpoints/sam-small-adapter")   # or "owner/name" on the Hub

``robust_copy`` copies the model, applies the adapter (validated first: shapes, base-weight
fingerprint), merges it (a plain forward, no overhead) and freezes the copy; it shares the
original's embedding cache, whose keys carry the adapter's tag so that embeddings never mix.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from samdemo.engine import EmbeddingCache, SegmentEngine


def load_engine(name: str, weights: str | Path | None = None, device: str | torch.device | None = None,
                cache: EmbeddingCache | None = None, frozen: bool = False) -> SegmentEngine:
    """The registry model ``name`` (``samdemo.build.MODEL_REGISTRY``: downloaded on demand); with
    ``weights`` (safetensors, or a training ``state.pt`` read with ``weights_only``) loaded into its
    architecture instead. ``frozen``: no parameter requires a gradient (attacks need the pixels' only)."""
    from samdemo.build import build_architecture, get_spec, load_model, read_state_dict

    spec = get_spec(name)
    if weights is None:
        engine = SegmentEngine(load_model(name, device=device), spec.family, name=name, cache=cache)
    else:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"weights file {weights} does not exist.")
        net, family = build_architecture(spec.config)
        net.load_state_dict(read_state_dict(weights))
        if device is not None:
            net = net.to(device)
        engine = SegmentEngine(net.eval(), family, name=f"{name}:{weights.name}", cache=cache)
    if frozen:
        engine.model.requires_grad_(False)
    return engine


def random_engine(config: str | Path, seed: int = 0) -> SegmentEngine:
    """A randomly initialised model of an architecture YAML (tests, real-size benchmarks)."""
    from samdemo.build import build_architecture

    torch.manual_seed(seed)
    model, family = build_architecture(config)
    return SegmentEngine(model.eval(), family, name=f"random-{Path(config).stem}")


def engine_copy(base: SegmentEngine, cache: EmbeddingCache | None = None) -> SegmentEngine:
    """A new engine over a deep copy of ``base``'s model (same family, name, device and autocast), so that
    an adapter applied to it never reaches ``base``; it shares ``base``'s embedding cache unless ``cache``
    is given (e.g. a private one while training: the adapter's tag changes at every step)."""
    return SegmentEngine(copy.deepcopy(base.model), base.family, name=base.name, autocast_dtype=base.autocast_dtype,
                         cache=base.cache if cache is None else cache)


def robust_copy(base: SegmentEngine, source: str | Path, revision: str | None = None, merge: bool = True):
    """(engine, adapter): a frozen copy of ``base`` with the adapter of ``source`` (a folder, or a Hub
    repo ``owner/name`` at ``revision``) applied. Raises ``AdapterError`` with the reason when the
    adapter does not fit ``base``."""
    from samdemo.hub import load_adapter_from_hub

    engine = engine_copy(base)
    adapter = load_adapter_from_hub(engine, source, revision, merge=merge)
    engine.model.requires_grad_(False)
    return engine, adapter
