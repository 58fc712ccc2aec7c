"""Small plotting helpers returning matplotlib Figures (no pyplot state: safe in the app's threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from samdemo.defense import Adapter, AdapterFiles, read_adapter_folder
from samdemo.defense.card import CARD_TEXTS


MAX_LAYER_PANELS = 6  # more adapted layers than this: one strip of changes instead of a panel per layer


def _singular_value_pairs(source) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, int]:
    """(name -> (s of W, s of W'), the adapter's method, its trainable count) from an Adapter, an
    AdapterFiles, a folder or a mapping (read as svd, every value trained)."""
    if isinstance(source, (str, Path)):
        source = read_adapter_folder(source)
    method, count = "svd", None  # a mapping holds (s_base, s) pairs
    if isinstance(source, Adapter):
        method, count, source = source.method, source.num_trainable, source.singular_values()
    elif isinstance(source, AdapterFiles):
        method, count, source = source.config.method, source.config.num_trainable, source.values()
    if not isinstance(source, Mapping) or not source:
        raise ValueError("singular_value_plot needs an adapter, an adapter folder or {layer: (base, adapted)}.")
    pairs = {name: (np.asarray(base, dtype=np.float64).reshape(-1), np.asarray(adapted, dtype=np.float64).reshape(-1))
             for name, (base, adapted) in source.items()}
    return pairs, method, count if count is not None else sum(len(base) for base, _ in pairs.values())


def singular_value_plot(adapter, title: str | None = None) -> Figure:
    """Original vs adapted singular values per layer.

    ``adapter``: an ``Adapter`` (any method), ``AdapterFiles`` (svd), adapter folder (svd), or
    {layer: (base, adapted)}. Up to ``MAX_LAYER_PANELS`` layers: one panel per layer (values on a
    log scale, and below them the ratio adapted / original). More layers (an adapter spread over
    the whole encoder): a single strip of every value's change, layer after layer.
    """
    pairs, method, count = _singular_value_pairs(adapter)
    n = len(pairs)
    figure = _ratio_strip(pairs) if n > MAX_LAYER_PANELS else _layer_panels(pairs)
    if title is None and method == "svd":
        title = f"SVD adapter: {count} singular values trained in {n} layer{'s' * (n > 1)}"
    elif title is None:  # the baselines train W itself, not its singular values: these are W's and W''s spectra
        title = f"{CARD_TEXTS[method]['title']}: singular values of W, W'"
    figure.suptitle(title, fontsize=10)
    return figure


def _ratio(base: np.ndarray, adapted: np.ndarray) -> np.ndarray:
    return adapted / np.where(base > 0, base, np.nan)


def _layer_panels(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
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
        ratio = _ratio(base, adapted)
        ratio_ax.plot(index, ratio, color="tab:red", lw=1.0)
        ratio_ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
        ratio_ax.set_ylabel("adapted / orig.", fontsize=8)
        ratio_ax.set_xlabel("index (descending s)")
        ratio_ax.set_title(f"mean |change| {100 * np.nanmean(np.abs(ratio - 1)):.1f} %", fontsize=8)
        ratio_ax.grid(alpha=0.3, lw=0.4)
    return figure


def _ratio_strip(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Every value's change relative to its layer's largest singular value (a ratio to the value itself
    explodes on near-zero values; the largest is in every adapter's file), descending s within a
    layer, layers side by side."""
    figure = Figure(figsize=(14, 4.6), layout="constrained")
    ax = figure.add_subplot()
    start, centres, labels = 0, [], []
    for i, (name, (base, adapted)) in enumerate(pairs.items()):
        index = start + np.arange(len(base))
        change = 100 * (adapted - base) / max(float(base.max()), 1e-12)
        ax.plot(index, change, ".", ms=2.5, color=("tab:red", "tab:blue")[i % 2])
        centres.append(start + (len(base) - 1) / 2)
        labels.append(name.removeprefix("image_encoder.").removeprefix("trunk."))
        start += len(base)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xticks(centres, labels, rotation=90, fontsize=6)
    ax.set_xlim(-1, start)
    ax.set_ylabel("(adapted - original) / layer's largest, %")
    ax.grid(alpha=0.3, axis="y", lw=0.4)
    return figure


CURVE_STYLES = {  # (attacked, evaluated) -> colour, line style
    ("original", "original"): ("0.35", "-"),
    ("original", "robust"): ("tab:red", "--"),
    ("robust", "robust"): ("tab:red", "-"),
    ("robust", "original"): ("0.35", "--"),
}


def robustness_curve_plot(curve, title: str | None = None) -> Figure:
    """mIoU against epsilon (1/255 units, symlog x axis so that 0 shows) for every series of a
    :class:`samdemo.robustness_curve.RobustnessCurve`: solid lines are attacks crafted on the model
    they are evaluated on (white-box, adaptive), dashed ones transfers."""
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = figure.add_subplot()
    for (attacked, evaluated), values in curve.miou.items():
        colour, style = CURVE_STYLES[(attacked, evaluated)]
        ax.plot(curve.eps255, values, style, color=colour, marker="o", ms=4, lw=1.6,
                label=curve.label(attacked, evaluated))
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xticks(curve.eps255, [f"{e:g}" for e in curve.eps255])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("ε (/255, L∞)")
    ax.set_ylabel(f"mIoU vs {curve.reference}")
    ax.grid(alpha=0.3, lw=0.4)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or f"{curve.attack} attack, {curve.steps} steps", fontsize=10)
    return figure


def eps_sweep_plot(curves: list[dict], labels: Mapping[str, str] | None = None, title: str | None = None,
                   prompts: list[str] | None = None) -> Figure:
    """Worst-case mIoU against epsilon (rows of :func:`samdemo.protocol.worst_case_sweep`), one panel per
    evaluation prompt type (``prompts``, in that order; default: all), one line per defense with its
    95 % bootstrap band; epsilon 0 is the clean mIoU. ``labels``: defense -> legend text."""
    prompts = prompts or list(dict.fromkeys(r["evaluated_with"] for r in curves))
    defenses = list(dict.fromkeys(r["defense"] for r in curves))
    eps = sorted({r["eps255"] for r in curves})
    figure = Figure(figsize=(3.4 * len(prompts), 3.4), layout="constrained")
    axes = figure.subplots(1, len(prompts), sharey=True, squeeze=False)[0]
    colours = ["0.35", "tab:red", "tab:blue", "tab:green", "tab:purple"]
    for ax, prompt in zip(axes, prompts):
        for colour, defense in zip(colours, defenses):
            rows = sorted((r for r in curves if r["defense"] == defense and r["evaluated_with"] == prompt),
                          key=lambda r: r["eps255"])
            x = [r["eps255"] for r in rows]
            ax.plot(x, [r["miou_gt"] for r in rows], "-o", color=colour, ms=4, lw=1.6,
                    label=(labels or {}).get(defense, defense))
            ax.fill_between(x, [r["miou_gt_ci"][0] for r in rows], [r["miou_gt_ci"][1] for r in rows],
                            color=colour, alpha=0.15, lw=0)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(eps, ["clean" if e == 0 else f"{e:g}" for e in eps])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("ε (/255, L∞)")
        ax.set_title(prompt, fontsize=10)
        ax.grid(alpha=0.3, lw=0.4)
    axes[0].set_ylabel("worst-case mIoU vs ground truth")
    axes[0].legend(fontsize=8, loc="upper right")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
