"""Do the attacks converge? mIoU of the original and the defended model against the attack budget.

    python scripts/attack_convergence.py --model sam2-small --steps 10,30,100 --limit 3

For each budget it runs ``python -m samdemo evaluate`` on **validation** scenes (settings are chosen
on validation, never on the test scenes) into ``OUT/steps-S/`` (resumable: rerun to finish), with
the shipped adapter as the defense, then collects per budget the worst case per object over the
ensemble and every attack row, original (white box) and defended (transfer and adaptive), into
``OUT/convergence.json`` and ``OUT/convergence.png``. The budget at which the worst case stops
falling is the one the results use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_budget(args, steps: int, out: Path) -> dict:
    command = [sys.executable, "-m", "samdemo", "evaluate", "--model", args.model, "--data",
               f"val-scenes:{args.scenes}", "--limit", str(args.limit), "--steps", str(steps), "--eps", str(args.eps),
               "--generator", args.generator, "--attacks", args.attacks, "--prompts", args.prompts,
               "--max-instances", str(args.max_instances), "--seed", "0", "--out", str(out)]
    if args.adapter:
        command += ["--adapter", args.adapter]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return json.loads((out / "results.json").read_text())


def series(results_by_steps: dict[int, dict]) -> list[dict]:
    """One series per (defense, mode, attack row, prompt type): mIoU (GT) per budget."""
    table: dict[tuple, dict] = {}
    for steps, results in sorted(results_by_steps.items()):
        for r in results["records"]:
            key = (r["defense"], r["mode"], r["attack"], r["crafted_with"], r["evaluated_with"])
            entry = table.setdefault(key, {"defense": r["defense"], "mode": r["mode"], "attack": r["attack"],
                                           "crafted_with": r["crafted_with"], "evaluated_with": r["evaluated_with"],
                                           "clean_miou_gt": r["clean_miou_gt"], "miou_gt": {}})
            entry["miou_gt"][steps] = r["miou_gt"]
    return list(table.values())


def plot(rows: list[dict], prompts: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(prompts), figsize=(5.2 * len(prompts), 4), squeeze=False)
    attacks = list(dict.fromkeys(f"{r['attack']}@{r['crafted_with']}" for r in rows))
    colours = {a: plt.cm.tab10(i % 10) for i, a in enumerate(attacks)}
    styles = {"white-box": "-", "worst-case": "-", "transfer": ":", "adaptive": "--"}
    for ax, prompt in zip(axes[0], prompts):
        for row in rows:
            if row["evaluated_with"] != prompt or row["attack"] == "random":
                continue
            steps = sorted(row["miou_gt"], key=int)
            label = f"{'original' if row['defense'] == 'none' else 'adapter'} {row['mode']}: {row['attack']}" + (
                f"@{row['crafted_with']}" if row["crafted_with"] not in ("none", "all") else "")
            worst = row["attack"] == "worst-case"
            ax.plot([int(s) for s in steps], [100 * row["miou_gt"][s] for s in steps], marker="o" if
                    row["defense"] == "none" else "s", lw=3 if worst else 1, ls=styles.get(row["mode"], "-"),
                    color=colours[f"{row['attack']}@{row['crafted_with']}"], alpha=1 if worst else 0.7,
                    label=label)
        ax.set_xscale("log")
        ax.set_xlabel("attack steps")
        ax.set_ylabel(f"mIoU vs ground truth (%), {prompt} prompts")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-small")
    parser.add_argument("--adapter", default=None, help="default checkpoints/<model>-adapter")
    parser.add_argument("--steps", default="10,30,100", help="comma-separated budgets")
    parser.add_argument("--scenes", type=int, default=3, help="validation scenes in the dataset")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N of them (default all)")
    parser.add_argument("--max-instances", type=int, default=3)
    parser.add_argument("--eps", type=float, default=8)
    parser.add_argument("--generator", default="apgd")
    parser.add_argument("--attacks", default="cross-prompt,key-channel,mask")
    parser.add_argument("--prompts", default="point,box")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/convergence/<model>")
    args = parser.parse_args(argv)
    args.adapter = args.adapter or f"checkpoints/{args.model}-adapter"
    args.limit = args.limit or args.scenes
    out = args.out or ROOT / "docs" / "results" / "convergence" / args.model
    budgets = [int(s) for s in args.steps.split(",")]
    results = {steps: run_budget(args, steps, out / f"steps-{steps}") for steps in budgets}
    rows = series(results)
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"data": f"val-scenes:{args.scenes}", "images": args.limit}
    (out / "convergence.json").write_text(json.dumps({"settings": settings, "series": rows}, indent=1))
    plot(rows, args.prompts.split(","), out / "convergence.png")
    for row in rows:
        if row["attack"] == "worst-case":
            values = ", ".join(f"{s}: {100 * v:.1f}" for s, v in sorted(row["miou_gt"].items()))
            print(f"{row['defense']:>28} {row['evaluated_with']:>6} worst case  {values}")
    print(f"-> {out / 'convergence.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
