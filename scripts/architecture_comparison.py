"""Which architecture wins per CPU-minute: validation curves of ``train-base`` runs of different
architectures trained side by side with the same recipe, and each run's latest weights measured on the
same validation scenes, their grey copies and the independent generator.

    python scripts/architecture_comparison.py --runs base=runs/arch-base patch8=runs/arch-patch8

Every run dir holds ``config.yaml`` (its architecture), ``state.pt`` and ``log.json`` (``train-base``).
Validation scenes only: this chooses an architecture, so the test split stays unseen. The curves are
against the run's training seconds (``log.json``: wall-clock of its own process, evaluations included),
so runs compare fairly only when they shared the machine in the same way (side by side, one thread each).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from samdemo.build import build_architecture, read_state_dict  # noqa: E402
from samdemo.engine import SegmentEngine  # noqa: E402
from samdemo.quality import image_dependence  # noqa: E402
from samdemo.scenes import validation_scenes  # noqa: E402
from samdemo.shapes_eval import independent_scenes  # noqa: E402


def run_engine(run_dir: Path) -> SegmentEngine:
    """The run's architecture (``config.yaml``) with its latest weights (``state.pt``, ``weights_only``)."""
    model, family = build_architecture(run_dir / "config.yaml")
    model.load_state_dict(read_state_dict(run_dir / "state.pt"))
    return SegmentEngine(model.eval(), family, name=run_dir.name)


def measure(run_dir: Path, scenes: int, shapes: int) -> dict:
    """Where the run stands now: its training log's position and mIoU per prompt type (rounded to 4 places)."""
    log = json.loads((run_dir / "log.json").read_text())
    engine = run_engine(run_dir)
    step = log["train"][-1][0] if log["train"] else 0
    heldout = image_dependence(engine, validation_scenes(scenes, size=engine.image_size), variants=("image", "grey"))
    independent = image_dependence(engine, independent_scenes(shapes, size=engine.image_size), variants=("image",))
    rounded = lambda quality: {k: round(v, 4) for k, v in quality.items() if k != "instances"}  # noqa: E731
    return {"step": step, "images": step * log["config"]["batch"], "seconds": round(log["seconds"], 1),
            "parameters": sum(p.numel() for p in engine.model.parameters()),
            "validation": rounded(heldout["image"]), "grey": rounded(heldout["grey"]),
            "independent": rounded(independent["image"]), "curve": log["eval"]}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, kind in zip(axes, ("box", "point")):
        for name, run in results["runs"].items():
            curve = run["curve"]
            line, = ax.plot([e["seconds"] / 60 for e in curve], [e[kind] for e in curve], "o-", label=name)
            ax.plot(run["seconds"] / 60, run["validation"][kind], "*", markersize=12, color=line.get_color())
        ax.set_title(f"{kind} prompt: validation mIoU", fontsize=10)
        ax.set_xlabel("training minutes (one thread each, side by side)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU")
    axes[0].legend()
    fig.suptitle(f"lines: each run's own evaluations (its log); stars: its latest weights on {results['scenes']} "
                 "validation scenes", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--scenes", type=int, default=100, help="validation scenes of the training generator")
    parser.add_argument("--shapes", type=int, default=60, help="scenes of the independent generator")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/architecture-comparison.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs/images/architecture_comparison.png")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not all((Path(folder) / f).is_file() for f in ("config.yaml", "state.pt", "log.json")):
            parser.error(f"--runs takes NAME=RUN_DIR with config.yaml, state.pt and log.json; got {item!r}")
        runs[name] = Path(folder)
    torch.set_num_threads(args.threads)
    results = {"command": " ".join(["python", "scripts/architecture_comparison.py"] + (argv or sys.argv[1:])),
               "scenes": args.scenes, "shapes": args.shapes, "runs": {}}
    for name, folder in runs.items():
        results["runs"][name] = {"run_dir": str(folder)} | measure(folder, args.scenes, args.shapes)
        summary = {k: v for k, v in results["runs"][name].items() if k != "curve"}
        print(name, json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    figure(results, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
