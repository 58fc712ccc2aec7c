"""Small plotting helpers returning matplotlib Figures (no pyplot state: safe in the app's threads)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from matplotlib.figure import Figure


def _singular_value_pairs(source) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """(name -> (s of W, s of W'), the adapter's method) from an Adapter, an AdapterFiles, a folder or a
    mapping (read as svd)."""
    from pathlib import Path

    from samdemo.adapter import Adapter, AdapterFiles, read_adapter_folder

    if isinstance(source, (str, Path)):
        source = read_adapter_folder(source)
    method = "svd"  # a mapping holds (s_base, s) pairs
    if isinstance(source, Adapter):
        method, source = source.method, source.singular_values()
    elif isinstance(source, AdapterFiles):
        method, source = source.config.method, source.values()
    if not isinstance(source, Mapping) or not source:
        raise ValueError("singular_value_plot needs an adapter, an adapter folder or {layer: (base, adapted)}.")
    return {name: (np.asarray(base, dtype=np.float64).reshape(-1), np.asarray(adapted, dtype=np.float64).reshape(-1))
            for name, (base, adapted) in source.items()}, method


def singular_value_plot(adapter, title: str | None = None) -> Figure:
    """Original vs adapted singular values per layer (log scale), one panel per layer.

    ``adapter``: an ``Adapter`` (any method), ``AdapterFiles`` (svd), adapter folder (svd), or
    {layer: (base, adapted)}. The lower strip of each panel shows the ratio adapted / original.
    """
    from samdemo.adapter import LAYER_TYPES

    pairs, method = _singular_value_pairs(adapter)
    n = len(pairs)
    figure = Figure(figsize=(4.2 * n, 4.0), layout="constrained")
    grid = figure.add_gridspec(2, n, height_ratios=[3, 1])
    for i, (name, (base, adapted)) in enumerate(pairs.items()):
        ax = figure.add_subplot(grid[0, i])
        index = np.arange(1, len(base) + 1)
        floor = max(base.max(), 1e-12) * 1e-6  # log axes need positive values
        ax.plot(index, np.maximum(base, floor), color="0.35", lw=1.6, label="original")
        ax.plot(index, np.maximum(np.abs(adapted), floor), color="tab:red", lw=1.2, label="adapted")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("singular value")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=8)
        ratio_ax = figure.add_subplot(grid[1, i], sharex=ax)
        ratio = adapted / np.where(base > 0, base, np.nan)
        ratio_ax.plot(index, ratio, color="tab:red", lw=1.0)
        ratio_ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
        ratio_ax.set_ylabel("adapted / orig.", fontsize=8)
        ratio_ax.set_xlabel("index (descending s)")
        rel = np.nanmean(np.abs(ratio - 1))
        ratio_ax.set_title(f"mean |change| {100 * rel:.1f} %", fontsize=8)
        ratio_ax.grid(alpha=0.3, lw=0.4)
    if title is None and method == "svd":
        total = sum(len(base) for base, _ in pairs.values())
        title = f"SVD adapter: {total} singular values in {n} layer{'s' * (n > 1)}"
    elif title is None:  # the baselines train W itself, not its singular values: these are W's and W''s spectra
        title = f"{LAYER_TYPES[method].card_title}: singular values of W, W'"
    figure.suptitle(title, fontsize=10)
    return figure
