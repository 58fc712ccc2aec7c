"""Do more random restarts change the headline? The evaluation protocol (scripts/make_results.py) rerun with
``--restarts R`` on the original model and the shipped adapter, compared object by object with the one-restart
headline.

    python scripts/restart_check.py --model sam-small --restarts 2 --processes 2    # resumable: rerun to finish
    python scripts/restart_check.py --model sam-small --limit 2 ...   # the first 2 test scenes (resumes later)

The same two ``evaluate`` commands as the headline (test scenes, our attacks, then the paper's ``key-channel``;
100 APGD steps, seed 0) with ``--restarts R``, into ``<out>/restarts/<model>/`` and
``<out>/restarts/paper-attack/<model>/``. An attack's first restart is the headline's run (the same seed
stream), the others start elsewhere in the ball, and the attack keeps the iterate of highest loss over all. A
100-step sign-gradient attack can end in another basin after a tiny change (another thread count does it on
some images), so the one-restart worst case may be an upper bound that a reviewer's rerun lowers.

Per defense and prompt type it reports the worst-case mIoU of the headline (1 restart), of the R-restart run,
and over both runs together (per object the lower), the objects the restarts lowered by more than 0.05 IoU, and
the adapter's paired gain over the original model under each. ``<out>/restarts/<model>/restarts.json`` keeps the
numbers, ``restarts.md`` the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_results import (MODELS, PAPER_ATTACK, evaluate_command, fmt, fmt_gain, merge_runs,  # noqa: E402
                          paper_folder, protocol_arguments, run_jobs)

DEFENSE_SUFFIXES = ("adapter",)
LOWERED = 0.05  # IoU: what counts as a restart finding a worse perturbation for an object


def restart_folders(out: Path, model: str) -> list[Path]:
    return [out / "restarts" / model, paper_folder(out / "restarts", model)]


def run_restarts(args) -> None:
    for folder, attacks, name in zip(restart_folders(args.out, args.model), (None, PAPER_ATTACK),
                                     ("", f"-{PAPER_ATTACK}")):
        command = evaluate_command(args.model, args, folder, suffixes=DEFENSE_SUFFIXES,
                                   **({"attacks": attacks} if attacks else {}))
        run_jobs([(f"restarts-{args.model}{name}", command + ["--restarts", str(args.restarts)])])


def only(entries: list[dict], defenses: set[str]) -> list[dict]:
    """The entries with the rows of ``defenses`` only (the headline also holds the controls)."""
    kept = []
    for entry in entries:
        if not entry["instances"]:
            continue
        kept.append({**entry, "clean": {d: v for d, v in entry["clean"].items() if d in defenses},
                     "attacked": [r for r in entry["attacked"] if r["defense"] in defenses]})
    return kept


def combined(first: list[dict], second: list[dict]) -> list[dict]:
    """Per image, the attacked rows of both runs: the worst case over both is the lower one per object."""
    by_name = {e["name"]: e for e in second}
    if sorted(by_name) != sorted(e["name"] for e in first):
        raise ValueError("the two runs are not on the same images")
    return [{**e, "attacked": e["attacked"] + by_name[e["name"]]["attacked"]} for e in first]


def same_images(headline: list[dict], restarted: list[dict]) -> list[dict]:
    """The headline's entries of the images the restart run has done (it may cover the first few only)."""
    names = {e["name"] for e in restarted}
    kept = [e for e in headline if e["name"] in names]
    if len(kept) != len(names):
        raise ValueError("the restart run has images the headline has not evaluated")
    return kept


def compare(headline: list[dict], restarted: list[dict], adapter: str, seed: int) -> dict:
    """Worst-case mIoU per defense and prompt type under each run and both, objects lowered, adapter gains."""
    from samdemo.protocol import worst_case_gains, worst_case_rows

    runs = {"1 restart": headline, "restarts": restarted, "both": combined(headline, restarted)}
    worst: dict[str, dict] = {}
    for label, entries in runs.items():
        for entry in entries:
            for row in worst_case_rows(entry):
                worst.setdefault(label, {}).setdefault((row["defense"], row["evaluated_with"]), []).append(
                    (entry["name"], row["iou_gt"]))
    table = []
    for (defense, prompt), per_image in worst["1 restart"].items():
        both = dict(worst["both"][defense, prompt])
        objects = sum(len(v) for _, v in per_image)
        lowered = sum(b < a - LOWERED for name, values in per_image for a, b in zip(values, both[name]))
        row = {"defense": defense, "evaluated_with": prompt, "objects": objects, "lowered": lowered}
        for label in runs:
            values = [v for _, image in worst[label][defense, prompt] for v in image]
            row[label] = sum(values) / len(values)
        table.append(row)
    gains = {label: {g["evaluated_with"]: g for g in worst_case_gains(entries, "none", seed) if g["defense"] == adapter}
             for label, entries in runs.items()}
    return {"worst_case": table, "gains": gains}


def report(model: str, restarts: int, result: dict, images: int) -> str:
    lines = [f"### {model}: {restarts} restarts against 1", "",
             f"{images} test scenes, the original model and the shipped adapter, the headline's ensemble (ours and "
             f"the paper's attack; transfer and adaptive). Worst-case mIoU (%) with the headline's single restart, "
             f"with {restarts} restarts, and over both runs (per object the lower); objects whose worst case "
             f"the restarts lowered by more than {LOWERED} IoU:", "",
             "| defense | prompt | 1 restart | " + f"{restarts} restarts | both | objects lowered |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in result["worst_case"]:
        name = "original model" if row["defense"] == "none" else row["defense"]
        lines.append(f"| {name} | {row['evaluated_with']} | {fmt(row['1 restart'])} | {fmt(row['restarts'])} | "
                     f"{fmt(row['both'])} | {row['lowered']} of {row['objects']} |")
    lines += ["", "The adapter's paired worst-case gain over the original model (points, 95 % interval over images):",
              "", "| prompt | 1 restart | " + f"{restarts} restarts | both |", "| --- | --- | --- | --- |"]
    for prompt in result["gains"]["1 restart"]:
        lines.append(f"| {prompt} | " + " | ".join(fmt_gain(result["gains"][label][prompt])
                                                    for label in ("1 restart", "restarts", "both")) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = protocol_arguments(__doc__, list(MODELS))
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--restarts", type=int, default=2, help="random restarts per attack (the headline: 1)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.restarts < 2:
        parser.error("--restarts must be at least 2 (the headline already has 1)")
    if not args.tables_only:
        run_restarts(args)
    headline_settings, headline = merge_runs([args.out / args.model, paper_folder(args.out, args.model)])
    settings, restarted = merge_runs(restart_folders(args.out, args.model))
    differing = sorted(k for k in settings if k not in ("adapters", "defenses", "restarts")
                       and settings[k] != headline_settings.get(k))
    if differing:
        sys.exit(f"the restart runs differ from the headline in {', '.join(differing)}")
    adapter = f"{args.model}-adapter"
    keep = {"none", adapter}
    restarted = only(restarted, keep)
    result = compare(same_images(only(headline, keep), restarted), restarted, adapter, settings["seed"])
    images = len(restarted)
    out = restart_folders(args.out, args.model)[0]
    (out / "restarts.json").write_text(json.dumps({"model": args.model, "restarts": args.restarts, "images": images,
                                                   **result}, indent=1) + "\n")
    text = report(args.model, args.restarts, result, images)
    (out / "restarts.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
