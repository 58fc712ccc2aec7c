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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fig, axes = plt.subplots(1, len(args.logs), figsize=(5.5 * len(args.logs), 4), squeeze=False)
    for ax, path in zip(axes[0], args.logs):
        log = json.loads(path.read_text())
        steps = [e["step"] for e in log["eval"]]
        for kind in ("box", "point", "point_best3", "mask"):
            ax.plot(steps, [e[kind] for e in log["eval"]], marker="o", label=kind)
        ax.set_title(f"{path.parent.name}: held-out mIoU ({log['seconds'] / 60:.0f} min wall, 1 thread)")
        ax.set_xlabel(f"step (batch {log['config']['batch']} images)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
