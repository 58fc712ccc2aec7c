"""Regenerate docs/RESULTS.md from ``python -m samdemo evaluate`` runs on both embedded models.

    python scripts/make_results.py                 # the committed numbers (resumable: rerun to finish)
    python scripts/make_results.py --limit 4       # a quick look (writes elsewhere with --out)

For each embedded model it evaluates the original model and every shipped defense of it
(``checkpoints/<model>-adapter`` = the SVD adapter the app uses, ``-adapter-neck`` = an SVD adapter
on the default neck layers where the shipped one sits elsewhere, and the baselines on the neck
``-adapter-lora-r1``, ``-adapter-full``) on held-out
procedural scenes with every attack, one ``evaluate`` process per model in parallel (one
thread each), into ``docs/results/<model>/`` (results.json, results.csv, report.md, plots,
per_image.jsonl: the raw outputs). Then it rewrites the generated part of docs/RESULTS.md
(between the GENERATED markers); the discussion outside the markers is kept as written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from samdemo.prompts import PROMPT_TYPES  # noqa: E402

MODELS = ("sam-small", "sam2-small")
DEFENSE_SUFFIXES = ("adapter", "adapter-neck", "adapter-lora-r1", "adapter-full")
BEGIN, END = "<!-- GENERATED: scripts/make_results.py -->", "<!-- END GENERATED -->"
DEFAULT_OUT = ROOT / "docs" / "results"


def defense_folders(model: str) -> list[Path]:
    return [ROOT / "checkpoints" / f"{model}-{s}" for s in DEFENSE_SUFFIXES
            if (ROOT / "checkpoints" / f"{model}-{s}" / "adapter_config.json").exists()]


def evaluate_command(model: str, args, out: Path) -> list[str]:
    command = [sys.executable, "-m", "samdemo", "evaluate", "--model", model, "--data", f"scenes:{args.limit}",
               "--limit", str(args.limit), "--steps", str(args.steps), "--eps", "8", "--max-instances",
               str(args.max_instances), "--seed", "0", "--out", str(out)]
    for folder in defense_folders(model):
        command += ["--adapter", str(folder.relative_to(ROOT))]
    return command


def run_evaluations(args) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    processes = []
    for model in args.models:
        out = args.out / model
        log = open(ROOT / "runs" / f"results-{model}.log", "w") if (ROOT / "runs").is_dir() else subprocess.DEVNULL
        processes.append((model, subprocess.Popen(evaluate_command(model, args, out), cwd=ROOT, env=env,
                                                  stdout=log, stderr=subprocess.STDOUT)))
    failed = [model for model, p in processes if p.wait() != 0]
    if failed:
        sys.exit(f"evaluate failed for {', '.join(failed)} (see runs/results-<model>.log); rerun to resume")


def fmt(value: float) -> str:
    return f"{100 * value:.1f}"


def pick(records, **where) -> list[dict]:
    return [r for r in records if all(r[k] == v for k, v in where.items())]


def row_label(r: dict) -> str:
    return r["attack"] if r["crafted_with"] == "none" else f"{r['attack']}@{r['crafted_with']}"


def attack_table(records: list[dict]) -> list[str]:
    """White-box attacks on the original model: attacked mIoU (GT) and ASR per evaluation type."""
    base = pick(records, defense="none")
    lines = ["| attack (crafted with) | " + " | ".join(f"{t}: mIoU / ASR" for t in PROMPT_TYPES) + " |",
             "| --- |" + " --- |" * len(PROMPT_TYPES)]
    clean = {t: pick(base, evaluated_with=t)[0]["clean_miou_gt"] for t in PROMPT_TYPES}
    lines.append("| clean | " + " | ".join(f"{fmt(clean[t])} / -" for t in PROMPT_TYPES) + " |")
    for label in dict.fromkeys(row_label(r) for r in base):
        cells = []
        for t in PROMPT_TYPES:
            r = next(r for r in base if row_label(r) == label and r["evaluated_with"] == t)
            cells.append(f"{fmt(r['miou_gt'])} / {fmt(r['asr'])}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def defense_table(records: list[dict], model: str, adapters_dir: Path = ROOT / "checkpoints") -> list[str]:
    """Per defense: size, training time, clean mIoU, mIoU under cross-prompt and under the worst attack.
    ``adapters_dir/<defense>/adapter_config.json`` gives a defense's size and training time."""
    lines = ["| defense | trainable | train min | clean point / box / mask | cross-prompt transfer point / box "
             "| cross-prompt adaptive point / box | worst transfer point / box | worst adaptive point / box |",
             "| --- | ---: | ---: | --- | --- | --- | --- | --- |"]
    for defense in dict.fromkeys(r["defense"] for r in records):
        rows = pick(records, defense=defense)
        clean = " / ".join(fmt(pick(rows, evaluated_with=t)[0]["clean_miou_gt"]) for t in PROMPT_TYPES)
        config = adapters_dir / defense / "adapter_config.json"
        if defense == "none":
            size, minutes, modes = "0", "-", ("white-box", "white-box")
        else:  # the size and training time need the adapter's folder; the numbers do not
            data = json.loads(config.read_text()) if config.exists() else None
            size = f"{data['num_trainable']:,}" if data else "?"
            minutes = f"{data['training']['train_seconds'] / 60:.0f}" if data else "?"
            modes = ("transfer", "adaptive")
        cells = []
        for mode in modes:
            cross = pick(rows, mode=mode, attack="cross-prompt")
            cells.append(" / ".join(fmt(pick(cross, evaluated_with=t)[0]["miou_gt"]) for t in ("point", "box")))
        for mode in modes:
            real = [r for r in pick(rows, mode=mode) if r["attack"] != "random"]
            cells.append(" / ".join(fmt(min(r["miou_gt"] for r in real if r["evaluated_with"] == t))
                                    for t in ("point", "box")))
        name = "none (original model)" if defense == "none" else defense
        lines.append(f"| {name} | {size} | {minutes} | {clean} | " + " | ".join(cells) + " |")
    return lines


def generated_section(args, md: Path) -> str:
    parts = [BEGIN, ""]
    for model in MODELS:
        if not (args.out / model / "results.json").exists():
            parts += [f"### {model}", "", "(not evaluated yet: run the command above)", ""]
            continue
        results = json.loads((args.out / model / "results.json").read_text())
        header, records = results["header"], results["records"]
        s = header["settings"]
        rel = Path(os.path.relpath(args.out / model, md.parent)).as_posix()
        parts += [f"### {model}", "",
                  f"{header['images']} held-out scenes, {header['instances']} instances (the {s['max_instances']} "
                  f"largest per image), eps {s['eps']:g}/255, {s['steps']} {s['generator']} steps, seed {s['seed']}. "
                  f"Raw outputs: [{rel}/]({rel}/) ([report]({rel}/report.md), results.json, results.csv). "
                  "mIoU against ground truth in %; ASR = % of instances whose IoU with the same model's clean "
                  "prediction is below 0.5.", "",
                  "**Attacks on the original model** (white box):", "", *attack_table(records), "",
                  "**Defenses** (transfer: crafted on the original model; adaptive: crafted on the defended model "
                  "itself; worst: the lowest mIoU over cross-prompt, mask@*, feature):", "",
                  *defense_table(records, model), ""]
    parts.append(END)
    return "\n".join(parts)


def write_results_md(args) -> Path:
    """docs/RESULTS.md for the default --out, else OUT/RESULTS.md (a quick look never overwrites the docs)."""
    path = ROOT / "docs" / "RESULTS.md" if args.out == DEFAULT_OUT else args.out / "RESULTS.md"
    text = path.read_text() if path.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + generated_section(args, path) + tail)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=20, help="held-out scenes per model")
    parser.add_argument("--steps", type=int, default=10, help="attack steps")
    parser.add_argument("--max-instances", type=int, default=4, help="largest instances evaluated per scene")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--models", type=lambda text: text.split(","), default=list(MODELS),
                        help="evaluate only these (comma-separated); the tables always cover both")
    parser.add_argument("--tables-only", action="store_true", help="only rewrite RESULTS.md from existing outputs")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if not args.tables_only:
        run_evaluations(args)
    print(f"wrote {write_results_md(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
