"""Regenerate docs/RESULTS.md from ``python -m samdemo evaluate`` runs on both embedded models, under the
evaluation protocol (docs/METHOD.md, "Evaluation protocol").

    python scripts/make_results.py                 # the committed numbers (resumable: rerun to finish)
    python scripts/make_results.py --limit 2 --out /tmp/look    # a quick look (never overwrites the docs)

For each embedded model it evaluates, on the **test** scenes (never used to choose anything), the
original model, the shipped SVD adapter (``checkpoints/<model>-adapter``, the app's robust model) and
its controls (``-adapter-shuffled``: the same trained changes permuted within each layer;
``-adapter-clean-only``: the same parameters fine-tuned without attacks; ``-adapter-random-k``: as many
singular values per layer, drawn at random instead of the largest, trained with the adapter's recipe,
where the adapter trains fewer than all of them), with the attacks that
set the worst case on validation (ours, and the prompt-specific mask attack crafted with the point
and with the box; random noise as a control), transfer and adaptive, 100 APGD steps: the budget at
which the validation study (``scripts/attack_convergence.py``) still saw the defended model fall
from 30 steps. The paper's attack (``key-channel``: the key-channel feature loss alone) is a second
``evaluate`` run per model under the same settings (``docs/results/paper-attack/<model>/``); the two runs
are merged per image into one ensemble (:func:`merge_runs`, which refuses runs on other images, objects,
budgets or defenses), so the worst case is taken over both; a table shows what the paper's attack adds
(on sam2-small's validation scenes it set the worst case of only 1 to 3 objects per budget, on sam-small's
test scenes it sets it for a third of them). Prompts: point, box and a blocky copy of the ground-truth mask
(the exact mask is copied back by the decoder). One ``evaluate`` process per model, in parallel,
into ``docs/results/<model>/``, then the paper's attack likewise; the merged records go to
``docs/results/<model>/ensemble.json``. Then it rewrites the generated part of docs/RESULTS.md (between the
GENERATED markers): the worst case per object over every attack as the headline, paired bootstrap
gains over the original model and over each control, the grey-image baseline, then the per-attack rows.
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


MODELS = ("sam-small", "sam2-small")
DEFENSE_SUFFIXES = ("adapter", "adapter-shuffled", "adapter-clean-only", "adapter-random-k")
CONTROL_SUFFIXES = tuple(f"-{s}" for s in DEFENSE_SUFFIXES[1:])
ATTACKS = "cross-prompt,mask,random"
PAPER_ATTACK = "key-channel"  # Robust SAM's attack: the key-channel feature loss alone, its own rows
PROMPTS = ("point", "box", "coarse-mask")
BEGIN, END = "<!-- GENERATED: scripts/make_results.py -->", "<!-- END GENERATED -->"
DEFAULT_OUT = ROOT / "docs" / "results"


def defense_folders(model: str) -> list[Path]:
    return [ROOT / "checkpoints" / f"{model}-{s}" for s in DEFENSE_SUFFIXES
            if (ROOT / "checkpoints" / f"{model}-{s}" / "adapter_config.json").exists()]


def evaluate_command(model: str, args, out: Path, eps: float = 8.0,
                     suffixes: tuple[str, ...] = DEFENSE_SUFFIXES, attacks: str = ATTACKS) -> list[str]:
    """The ``evaluate`` command of the protocol for ``model`` at ``eps`` (1/255), with the shipped defenses
    whose folder suffix is in ``suffixes``; torchrun when ``args.processes`` > 1."""
    launcher = [sys.executable] if args.processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.processes)]
    command = launcher + ["-m", "samdemo", "evaluate", "--model", model, "--data", "scenes",
               "--limit", str(args.limit), "--steps", str(args.steps), "--generator", args.generator,
               "--eps", f"{eps:g}", "--attacks", attacks, "--prompts", ",".join(PROMPTS),
               "--max-instances", str(args.max_instances), "--seed", "0", "--out", str(out)]
    for folder in defense_folders(model):
        if folder.name.removeprefix(f"{model}-") in suffixes:
            command += ["--adapter", str(folder.relative_to(ROOT))]
    return command


def run_jobs(jobs: list[tuple[str, list[str]]]) -> None:
    """Run the (name, command) jobs in parallel, each logging to runs/<name>.log when runs/ exists; exit
    with one line naming the failed ones (every evaluate run resumes when rerun)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    processes = []
    for name, command in jobs:
        log = open(ROOT / "runs" / f"{name}.log", "w") if (ROOT / "runs").is_dir() else subprocess.DEVNULL
        processes.append((name, subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)))
    failed = [name for name, p in processes if p.wait() != 0]
    if failed:
        sys.exit(f"evaluate failed for {', '.join(failed)} (see runs/<name>.log); rerun to resume")


def paper_folder(out: Path, model: str) -> Path:
    """Where the paper's attack is evaluated for ``model``, under the same protocol as the ensemble."""
    return out / "paper-attack" / model


def run_evaluations(args) -> None:
    run_jobs([(f"results-{model}", evaluate_command(model, args, args.out / model)) for model in args.models])
    run_jobs([(f"results-{model}-{PAPER_ATTACK}",
               evaluate_command(model, args, paper_folder(args.out, model), attacks=PAPER_ATTACK))
              for model in args.models])


def fmt(value: float) -> str:
    return f"{100 * value:.1f}"


def fmt_gain(gain: dict) -> str:
    low, high = gain["gain_ci"]
    return f"{100 * gain['gain']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def pick(records, **where) -> list[dict]:
    return [r for r in records if all(r[k] == v for k, v in where.items())]


def one(records, **where) -> dict:
    found = pick(records, **where)
    if len(found) != 1:
        raise ValueError(f"expected one record for {where}, found {len(found)}")
    return found[0]


def row_label(r: dict) -> str:
    return r["attack"] if r["crafted_with"] in ("none", "all") else f"{r['attack']}@{r['crafted_with']}"


def defense_name(defense: str) -> str:
    return "original model" if defense == "none" else defense


def read_entries(folder: Path) -> list[dict]:
    """The per-image records of an evaluate run, from its log or its processes' logs (first line of each:
    the settings), in image-name order like evaluate's own aggregation."""
    from samdemo.evaluate import log_files

    entries = {}
    for path in log_files(folder):
        for line in path.read_text().splitlines()[1:]:
            if line.strip():
                entry = json.loads(line)
                entries.setdefault(entry["name"], entry)
    return [entries[name] for name in sorted(entries)]


def run_settings(folder: Path) -> dict | None:
    """The settings header of an evaluate run (None before it has written one)."""
    from samdemo.evaluate import log_files

    for path in log_files(folder):
        lines = path.read_text().splitlines()
        if lines:
            return json.loads(lines[0])["settings"]
    return None


def merge_runs(folders: list[Path]) -> tuple[dict, list[dict]]:
    """One ensemble from evaluate runs that differ only in their attacks (the same images, objects, budget,
    seed and defenses; ValueError otherwise): the first run's settings with every run's attacks, and per image
    the first run's entry with the attacked rows of all of them."""
    settings = [run_settings(f) for f in folders]
    if any(s is None for s in settings):
        raise ValueError(f"no evaluate run in {folders[settings.index(None)]}")
    strip = lambda s: {k: v for k, v in s.items() if k not in ("attacks", "attack_options")}  # noqa: E731
    for folder, other in zip(folders[1:], settings[1:]):
        if strip(other) != strip(settings[0]):
            changed = sorted(k for k in strip(other).keys() | strip(settings[0]).keys()
                             if strip(other).get(k) != strip(settings[0]).get(k))
            raise ValueError(f"{folder} differs from {folders[0]} in more than its attacks: {', '.join(changed)}")
    runs = [{e["name"]: e for e in read_entries(f)} for f in folders]
    if any(sorted(run) != sorted(runs[0]) for run in runs[1:]):
        raise ValueError(f"the runs in {', '.join(map(str, folders))} are not on the same images")
    merged = []
    for name in sorted(runs[0]):
        entry = dict(runs[0][name])
        if entry["instances"]:
            entry["attacked"] = [row for run in runs for row in run[name]["attacked"]]
        merged.append(entry)
    ensemble = dict(settings[0])
    ensemble["attacks"] = [a for s in settings for a in s["attacks"]]
    options = {k: v for s in settings for k, v in s.get("attack_options", {}).items()}
    if options:
        ensemble["attack_options"] = options
    return ensemble, merged


def ensemble_records(settings: dict, entries: list[dict]) -> list[dict]:
    """evaluate's records (worst case per object first, then every attack row) of merged entries."""
    from dataclasses import fields

    from samdemo.evaluate import Defense, Settings, aggregate

    defenses = [Defense(d["label"], d["method"], None, d["ref"], d["digest"]) for d in settings["defenses"]]
    names = {f.name for f in fields(Settings)}
    return aggregate(entries, defenses, Settings(**{k: v for k, v in settings.items() if k in names}))


def clean_gain(entries: list[dict], defense: str, reference: str, prompt: str, seed: int) -> dict:
    from samdemo.protocol import paired_gain_ci

    entries = [e for e in entries if e["instances"]]
    gain, low, high = paired_gain_ci([e["clean"][defense][prompt] for e in entries],
                                     [e["clean"][reference][prompt] for e in entries], seed)
    return {"gain": gain, "gain_ci": [low, high]}


def headline_table(records: list[dict], prompts: list[str]) -> list[str]:
    """Per defense: clean, grey-image and worst-case mIoU per prompt type."""
    lines = ["| defense | trainable | " + " | ".join(f"{t}: clean / grey / **worst case**" for t in prompts) + " |",
             "| --- | ---: |" + " --- |" * len(prompts)]
    for defense in dict.fromkeys(r["defense"] for r in records):
        config = ROOT / "checkpoints" / defense / "adapter_config.json"
        size = "0" if defense == "none" else (f"{json.loads(config.read_text())['num_trainable']:,}"
                                              if config.exists() else "?")
        cells = []
        for t in prompts:
            worst = one(records, defense=defense, mode="worst-case", evaluated_with=t)
            grey = fmt(worst["grey_miou_gt"]) if "grey_miou_gt" in worst else "-"
            cells.append(f"{fmt(worst['clean_miou_gt'])} / {grey} / **{fmt(worst['miou_gt'])}**")
        lines.append(f"| {defense_name(defense)} | {size} | " + " | ".join(cells) + " |")
    return lines


def gains_table(entries: list[dict], records: list[dict], prompts: list[str], seed: int) -> list[str]:
    """Paired gains of every adapter in worst-case mIoU over the original model and over each control, and
    its clean cost, with 95 % paired bootstrap intervals over images."""
    from samdemo.protocol import worst_case_gains

    defenses = [d for d in dict.fromkeys(r["defense"] for r in records) if d != "none"]
    lines = ["| defense | compared with | " + " | ".join(f"{t}: worst-case gain" for t in prompts) + " | "
             + " | ".join(f"{t}: clean change" for t in prompts) + " |",
             "| --- | --- |" + " --- |" * (2 * len(prompts))]
    for reference in ["none"] + [d for d in defenses if d.endswith(CONTROL_SUFFIXES)]:
        gains = {(g["defense"], g["evaluated_with"]): g for g in worst_case_gains(entries, reference, seed)}
        for defense in defenses:
            if defense == reference or (reference != "none" and not defense.endswith("-adapter")):
                continue
            worst = [fmt_gain(gains[defense, t]) for t in prompts]
            clean = [fmt_gain(clean_gain(entries, defense, reference, t, seed)) for t in prompts]
            lines.append(f"| {defense} | {defense_name(reference)} | " + " | ".join(worst + clean) + " |")
    return lines


def attack_table(records: list[dict], prompts: list[str]) -> list[str]:
    """Every attack row: mIoU (GT) per defense and mode, per prompt type."""
    columns = [(d, m) for d, m in dict.fromkeys((r["defense"], r["mode"]) for r in records) if m != "worst-case"]
    header = [f"{defense_name(d)}, {m}" for d, m in columns]
    lines = ["| attack | prompt | " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    labels = dict.fromkeys(row_label(r) for r in records if r["mode"] != "worst-case")
    for label in labels:
        for t in prompts:
            cells = []
            for d, m in columns:
                found = [r for r in pick(records, defense=d, mode=m, evaluated_with=t) if row_label(r) == label]
                cells.append(fmt(found[0]["miou_gt"]) if found else "-")
            lines.append(f"| {label} | {t} | " + " | ".join(cells) + " |")
    return lines


def paper_attack_effect(entries: list[dict], paper_entries: list[dict], prompts: list[str]) -> list[str]:
    """Per defense and prompt type: the worst-case mIoU of the ensemble, and with the paper's attack added to it
    (the objects whose worst case it lowers, of all): whether leaving it out of the ensemble flatters anyone."""
    from samdemo.protocol import worst_case_rows

    paper = {e["name"]: e for e in paper_entries if e["instances"]}
    entries = [e for e in entries if e["instances"]]
    if sorted(paper) != sorted(e["name"] for e in entries):
        raise ValueError("the paper's attack was not evaluated on the same images as the ensemble")
    totals: dict[tuple[str, str], list[float]] = {}  # (defense, prompt) -> [sum before, sum after, lowered, n]
    for entry in entries:
        merged = {**entry, "attacked": entry["attacked"] + paper[entry["name"]]["attacked"]}
        before = {(r["defense"], r["evaluated_with"]): r["iou_gt"] for r in worst_case_rows(entry)}
        for row in worst_case_rows(merged):
            key = (row["defense"], row["evaluated_with"])
            old, new = before[key], row["iou_gt"]
            total = totals.setdefault(key, [0.0, 0.0, 0, 0])
            total[0] += sum(old)
            total[1] += sum(new)
            total[2] += sum(b < a - 1e-9 for a, b in zip(old, new))
            total[3] += len(old)
    lines = ["| defense | " + " | ".join(f"{t}: ensemble -> with it (objects lowered)" for t in prompts) + " |",
             "| --- |" + " --- |" * len(prompts)]
    for defense in dict.fromkeys(d for d, _ in totals):
        cells = []
        for t in prompts:
            before_sum, after_sum, lowered, n = totals[defense, t]
            cells.append(f"{fmt(before_sum / n)} -> {fmt(after_sum / n)} ({lowered} of {n})")
        lines.append(f"| {defense_name(defense)} | " + " | ".join(cells) + " |")
    return lines


def paper_effect_section(args, model: str, prompts: list[str]) -> list[str]:
    folders = [args.out / model, paper_folder(args.out, model)]
    return ["**What the paper's attack adds** to the ensemble: worst-case mIoU without it -> with it, and the "
            "objects whose worst case it lowers:", "",
            *paper_attack_effect(read_entries(folders[0]), read_entries(folders[1]), prompts), ""]


def options_note(attack_options: dict) -> str:
    """The attack options of a run in words (the model's chosen ones, samdemo/build.py), or nothing."""
    if not attack_options:
        return ""
    chosen = "; ".join(f"`{attack}` with " + ", ".join(f"{key}={value}" for key, value in options.items())
                       for attack, options in attack_options.items())
    return f" ({chosen}: chosen for this model on validation scenes, `ModelSpec.attack_options`)"


def generated_section(args, md: Path) -> str:
    parts = [BEGIN, ""]
    for model in MODELS:
        folders = [args.out / model, paper_folder(args.out, model)]
        if not all((folder / "results.json").exists() for folder in folders):
            parts += [f"### {model}", "", "(not evaluated yet: run the command above)", ""]
            continue
        s, entries = merge_runs(folders)
        records = ensemble_records(s, entries)
        (folders[0] / "ensemble.json").write_text(json.dumps(
            {"runs": [Path(os.path.relpath(f, ROOT)).as_posix() for f in folders], "settings": s,
             "records": records}, indent=1) + "\n")
        images = sum(1 for e in entries if e["instances"])
        prompts = list(s["prompts"])
        links = []
        for folder in folders:
            rel = Path(os.path.relpath(folder, md.parent)).as_posix()
            links.append(f"[{rel}/]({rel}/) ([report]({rel}/report.md))")
        minutes = sum(e.get("seconds", 0) for f in folders for e in read_entries(f)) / 60
        parts += [f"### {model}", "",
                  f"{images} test scenes, {sum(e['instances'] for e in entries)} objects (the {s['max_instances']} "
                  f"largest per image), eps {s['eps']:g}/255, {s['steps']} {s['generator'].upper()} steps, seed "
                  f"{s['seed']}; {minutes / max(images, 1):.1f} minutes per image on one CPU thread"
                  f"{options_note(s.get('attack_options', {}))}. Raw outputs of the two evaluate runs (our attacks; "
                  f"the paper's): {' and '.join(links)}, each with results.json, results.csv and per_image*.jsonl; "
                  f"the ensemble's records in `{Path(os.path.relpath(folders[0], ROOT)).as_posix()}/ensemble.json`. "
                  "mIoU against ground truth in %.", "",
                  "**Worst case per object** over every attack (white box on the original model; transfer and "
                  "adaptive on each adapter), next to the clean mIoU and the same prompts on a uniform grey image:",
                  "", *headline_table(records, prompts), "",
                  "**Gains** in worst-case mIoU (points, paired bootstrap 95 % interval over images) over the "
                  "original model and over the controls, and the change in clean mIoU (negative: a clean cost):", "",
                  *gains_table(entries, records, prompts, s["seed"]), "",
                  "**Every attack** (mIoU %; `key-channel` is the paper's attack, the key-channel feature loss "
                  "alone; `cross-prompt` ours, with the sampled-prompt mask term):", "",
                  *attack_table(records, prompts), "",
                  *paper_effect_section(args, model, prompts)]
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


def protocol_arguments(description: str, models: list[str]) -> argparse.ArgumentParser:
    """The options shared by the scripts that run the protocol (this one and eps_sweep.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=8, help="test scenes per model (the first N; raising it resumes)")
    parser.add_argument("--steps", type=int, default=100, help="attack steps (the budget chosen on validation)")
    parser.add_argument("--generator", default="apgd")
    parser.add_argument("--max-instances", type=int, default=4, help="largest instances evaluated per scene")
    parser.add_argument("--processes", type=int, default=1,
                        help="evaluate processes per run (torchrun; the images are shared out, the numbers are "
                             "those of one process)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--models", type=lambda text: text.split(","), default=models,
                        help="evaluate only these (comma-separated)")
    parser.add_argument("--tables-only", action="store_true", help="only rewrite RESULTS.md from existing outputs")
    return parser


def main(argv=None) -> int:
    args = protocol_arguments(__doc__, list(MODELS)).parse_args(argv)
    args.out = args.out.resolve()
    if not args.tables_only:
        run_evaluations(args)
    print(f"wrote {write_results_md(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
