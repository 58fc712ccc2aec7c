"""Paired worst-case gains between the defenses of one ``evaluate`` run: how an adapter candidate is chosen on
validation scenes against the shipped adapter and its controls.

    python scripts/compare_defenses.py docs/results/sam-small-300-adv3-validation
    python scripts/compare_defenses.py RUN_DIR --reference sam-small-adapter

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
    parser.add_argument("run", type=Path, help="an evaluate --out folder")
    parser.add_argument("--reference", action="append", help="compare with this defense only (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    settings = run_settings(args.run)
    if settings is None:
        parser.exit(2, f"error: no evaluate run in {args.run}\n")
    try:
        text = comparison(read_entries(args.run), args.reference, settings["seed"])
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
