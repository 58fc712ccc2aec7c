"""Paired worst-case gains between the defenses of one ``evaluate`` run: how an adapter candidate is chosen on
validation scenes against the shipped adapter and its controls.

    python scripts/compare_defenses.py docs/results/sam-small-300-adv3-validation
    python scripts/compare_defenses.py RUN_DIR --reference sam-small-adapter
    python scripts/compare_defenses.py docs/results/sam-small-300-adv3-validation runs/val-candidate

Several runs that differ only in their adapters (the same images, objects, attacks, budget and seed) are
compared as one: a candidate is evaluated with the original model alone and compared with the shipped adapter
and its controls from an earlier run, at half the cost. The defenses the runs share (the original model at
least) must agree record for record, which they do at the same thread count (docs/METHOD.md, "Evaluation
protocol"); otherwise the runs are refused.

Per defense: clean and worst-case mIoU per prompt type (the worst case per object over every attack row of the
run, ``samdemo.protocol``); then, for each reference (default: every defense of the run), every other defense's
paired worst-case gain over it with its 95 % bootstrap interval over images (the seed of the run's settings).
Prints a markdown table; ``--out FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_results import fmt, fmt_gain, read_entries, run_settings  # noqa: E402

_PER_DEFENSE = ("clean", "grey")


def merge_defense_runs(folders: list[Path]) -> tuple[dict, list[dict]]:
    """One run from evaluate runs that differ only in their defenses: the first run's settings with every run's
    defenses, and per image every run's records. ValueError where the runs differ in anything else, are not on
    the same images, give one label to two different adapters, or disagree on a defense they share."""
    settings = [run_settings(f) for f in folders]
    if None in settings:
        raise ValueError(f"no evaluate run in {folders[settings.index(None)]}")
    if len(folders) == 1:
        return settings[0], read_entries(folders[0])
    strip = lambda s: {k: v for k, v in s.items() if k not in ("adapters", "defenses")}  # noqa: E731
    merged_settings = dict(settings[0])
    digests = {d["label"]: d["digest"] for d in settings[0]["defenses"]}
    for folder, other in zip(folders[1:], settings[1:]):
        if strip(other) != strip(settings[0]):
            changed = sorted(k for k in strip(other).keys() | strip(settings[0]).keys()
                             if strip(other).get(k) != strip(settings[0]).get(k))
            raise ValueError(f"{folder} differs from {folders[0]} in more than its adapters: {', '.join(changed)}")
        for defense in other["defenses"]:
            if digests.setdefault(defense["label"], defense["digest"]) != defense["digest"]:
                raise ValueError(f"two different adapters are labelled {defense['label']} in {folder} and "
                                 f"{folders[0]}: rename one folder")
            if defense not in merged_settings["defenses"]:
                merged_settings["defenses"] = merged_settings["defenses"] + [defense]
                merged_settings["adapters"] = merged_settings["adapters"] + [defense["ref"]]
    runs = [{e["name"]: e for e in read_entries(f)} for f in folders]
    if any(sorted(run) != sorted(runs[0]) for run in runs[1:]):
        raise ValueError(f"the runs in {', '.join(map(str, folders))} are not on the same images")
    entries = []
    for name in sorted(runs[0]):
        entry = {k: (dict(v) if k in _PER_DEFENSE else v) for k, v in runs[0][name].items()}
        if not entry["instances"]:
            entries.append(entry)
            continue
        entry["attacked"] = list(entry["attacked"])
        for folder, run in zip(folders[1:], runs[1:]):
            other = run[name]
            rows = {}
            for row in other["attacked"]:
                rows.setdefault(row["defense"], []).append(row)
            for defense in other["clean"]:
                shared = defense in entry["clean"]
                mine = [row for row in entry["attacked"] if row["defense"] == defense]
                if shared and (any(entry[k][defense] != other[k][defense] for k in _PER_DEFENSE if k in other)
                               or mine != rows.get(defense, [])):
                    made = lambda e: f"{e.get('threads', '?')} thread(s), {e.get('cpu', 'an unrecorded CPU')}"  # noqa: E731
                    raise ValueError(f"{name}: {folder} ({made(other)}) and {folders[0]} ({made(entry)}) disagree on "
                                     f"{defense}: runs are comparable only with the same thread count, CPU "
                                     f"instructions and code; evaluate the defenses together")
                if not shared:
                    for key in _PER_DEFENSE:
                        if key in other:
                            entry[key][defense] = other[key][defense]
                    entry["attacked"] += rows.get(defense, [])
        entries.append(entry)
    return merged_settings, entries


def comparison(entries: list[dict], references: list[str] | None, seed: int) -> str:
    from samdemo.protocol import worst_case_gains, worst_case_rows

    entries = [e for e in entries if e["instances"]]
    if not entries:
        raise ValueError("the run has no evaluated image yet")
    worst: dict[tuple[str, str], list[float]] = {}
    clean: dict[tuple[str, str], list[float]] = {}
    for entry in entries:
        for row in worst_case_rows(entry):
            worst.setdefault((row["defense"], row["evaluated_with"]), []).extend(row["iou_gt"])
        for defense, by_type in entry["clean"].items():
            for prompt, values in by_type.items():
                clean.setdefault((defense, prompt), []).extend(values)
    defenses = list(dict.fromkeys(d for d, _ in worst))
    prompts = list(dict.fromkeys(t for _, t in worst))
    unknown = sorted(set(references or []) - set(defenses))
    if unknown:
        raise ValueError(f"no defense {', '.join(unknown)} in the run (it has {', '.join(defenses)})")
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    lines = [f"{len(entries)} images, {sum(e['instances'] for e in entries)} objects; mIoU %, clean / worst case:", "",
             "| defense | " + " | ".join(prompts) + " |", "| --- |" + " --- |" * len(prompts)]
    for defense in defenses:
        lines.append(f"| {defense} | " + " | ".join(f"{fmt(mean(clean[defense, t]))} / {fmt(mean(worst[defense, t]))}"
                                                    for t in prompts) + " |")
    lines += ["", "Paired worst-case gain (points, 95 % bootstrap interval over images):", "",
              "| defense | over | " + " | ".join(prompts) + " |", "| --- | --- |" + " --- |" * len(prompts)]
    for reference in references or defenses:
        gains = {(g["defense"], g["evaluated_with"]): g for g in worst_case_gains(entries, reference, seed)}
        for defense in defenses:
            if defense != reference:
                lines.append(f"| {defense} | {reference} | " + " | ".join(fmt_gain(gains[defense, t]) for t in prompts)
                             + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", metavar="run",
                        help="an evaluate --out folder; several that differ only in their adapters are merged")
    parser.add_argument("--reference", action="append", help="compare with this defense only (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        settings, entries = merge_defense_runs(args.runs)
        text = comparison(entries, args.reference, settings["seed"])
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
