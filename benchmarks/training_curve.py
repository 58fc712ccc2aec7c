"""Plot the held-out mIoU curves logged by ``train-base`` runs.

    python benchmarks/training_curve.py checkpoints/sam-small/training_log.json checkpoints/sam2-small/training_log.json --out docs/images/training_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def history(log: dict) -> list[dict]:
    """The training phases of a log, oldest first (``previous``: the run that a --init run continued)."""
    return (history(log["previous"]) if "previous" in log else []) + [log]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fig, axes = plt.subplots(1, len(args.logs), figsize=(5.5 * len(args.logs), 4), squeeze=False)
    for ax, path in zip(axes[0], args.logs):
        phases = history(json.loads(path.read_text()))
        offset, seconds = 0, 0.0
        for i, log in enumerate(phases):
            steps = [offset + e["step"] for e in log["eval"]]
            for color, kind in enumerate(("box", "point", "point_best3", "mask")):
                ax.plot(steps, [e[kind] for e in log["eval"]], marker="o", color=f"C{color}",
                        label=kind if i == 0 else None)
            greys = [e for e in log["eval"] if "grey_box" in e]  # the same boxes on a uniform grey image
            ax.plot([offset + e["step"] for e in greys], [e["grey_box"] for e in greys], marker="x", color="C0",
                    linestyle="--", label="box on a grey image" if greys and i == len(phases) - 1 else None)
            if i:
                ax.axvline(offset, color="grey", linestyle=":", label="continued (--init)" if i == 1 else None)
            offset += log["train"][-1][0] if log["train"] else 0
            seconds += log["seconds"]
        ax.set_title(f"{path.parent.name}: validation mIoU ({seconds / 60:.0f} min wall)")
        ax.set_xlabel(f"step (batch {phases[-1]['config']['batch']} images)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
