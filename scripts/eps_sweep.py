"""Robustness curves over the attack budget: the worst case per object of the evaluation protocol
(scripts/make_results.py) at eps 2, 4, 8 and 16 /255, original model against the shipped adapter.

    python scripts/eps_sweep.py --processes 2                 # the committed curves (resumable: rerun to finish)
    python scripts/eps_sweep.py --limit 1 --steps 5 --out /tmp/look    # a quick look (never touches the docs)

Every epsilon runs the same two ``evaluate`` commands as the headline results (same test scenes,
attacks, prompts, 100 APGD steps, seed; our attacks, then the paper's ``key-channel``) with only the
original model and the adapter, into ``<out>/eps-sweep/<model>/eps<E>/`` and
``<out>/eps-sweep/paper-attack/<model>/eps<E>/``, merged into one ensemble per epsilon like the headline
(``make_results.merge_runs``); eps 8 is read from the headline runs when they are there (their controls
are left out: the worst case of a defense depends only on the attacks evaluated on it). Then ``samdemo.protocol.worst_case_sweep`` gives worst-case mIoU per epsilon with bootstrap
intervals and the adapter's paired gain; ``<out>/eps-sweep/<model>/sweep.json`` keeps them,
``docs/images/eps_sweep_<model>.png`` draws them, and docs/RESULTS.md gets the table between the
EPS-SWEEP markers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_results import (DEFAULT_OUT, MODELS, PAPER_ATTACK, PROMPTS, evaluate_command, fmt, fmt_gain,  # noqa: E402
                          merge_runs, paper_folder, protocol_arguments, read_entries, run_jobs)

EPS255 = (2.0, 4.0, 8.0, 16.0)
HEADLINE_EPS = 8.0  # the budget of the headline run, reused when it is there
SWEEP_SUFFIXES = ("adapter",)
BEGIN, END = "<!-- GENERATED: scripts/eps_sweep.py -->", "<!-- END GENERATED: scripts/eps_sweep.py -->"


def run_folders(args, model: str, eps: float) -> list[Path]:
    """The evaluate runs of the ensemble at ``eps``: our attacks, then the paper's (the headline's at eps 8)."""
    headline = [args.out / model, paper_folder(args.out, model)]
    if eps == HEADLINE_EPS and all((f / "results.json").exists() for f in headline):
        settings = json.loads((headline[0] / "results.json").read_text())["header"]["settings"]
        if settings["steps"] == args.steps and settings["generator"] == args.generator and settings["eps"] == eps:
            return headline
    return [args.out / "eps-sweep" / model / f"eps{eps:g}", paper_folder(args.out / "eps-sweep", model) / f"eps{eps:g}"]


def run_sweep(args) -> None:
    """Per model and epsilon, the evaluate runs not yet complete, one after another (each on args.processes)."""
    for model in args.models:
        for eps in args.eps:
            folders = run_folders(args, model, eps)
            if folders[0] == args.out / model:
                continue
            for folder, attacks, name in zip(folders, (None, PAPER_ATTACK), ("", f"-{PAPER_ATTACK}")):
                command = evaluate_command(model, args, folder, eps, SWEEP_SUFFIXES, **({"attacks": attacks} if attacks else {}))
                run_jobs([(f"eps-sweep-{model}-eps{eps:g}{name}", command)])


def sweep_curves(args, model: str) -> list[dict]:
    from samdemo.protocol import worst_case_sweep

    merged = {eps: merge_runs(run_folders(args, model, eps)) for eps in args.eps}
    adapters = {eps: [(d["label"], d.get("digest")) for d in settings.get("defenses", [])]
                for eps, (settings, _) in merged.items() if settings.get("defenses")}
    if len({tuple(a) for a in adapters.values()}) > 1:  # e.g. a new shipped adapter, the sweep not yet rerun
        raise SystemExit(f"error: {model}'s runs evaluate other adapters at different budgets "
                         f"({', '.join(f'{e:g}/255' for e in adapters)}); rerun the sweep for the shipped adapter")
    entries = {eps: found for eps, (_, found) in merged.items()}
    entries = {eps: found[:args.limit] for eps, found in entries.items() if found}
    return worst_case_sweep(entries, ["none", f"{model}-adapter"], "none", seed=0)


def sweep_table(curves: list[dict], prompts: list[str]) -> list[str]:
    eps = sorted({r["eps255"] for r in curves})
    lines = ["| ε (/255) | " + " | ".join(f"{t}: original / adapter / gain [95 % CI]" for t in prompts) + " |",
             "| --- |" + " --- |" * len(prompts)]
    for e in eps:
        cells = []
        for t in prompts:
            rows = {r["defense"]: r for r in curves if r["eps255"] == e and r["evaluated_with"] == t}
            original, adapter = rows["none"], next(r for d, r in rows.items() if d != "none")
            cells.append(f"{fmt(original['miou_gt'])} / {fmt(adapter['miou_gt'])} / {fmt_gain(adapter)}")
        lines.append(f"| {'clean' if e == 0 else f'{e:g}'} | " + " | ".join(cells) + " |")
    return lines


def generated_section(args, md: Path) -> str:
    from samdemo.plots import eps_sweep_plot

    parts = [BEGIN, ""]
    for model in MODELS:  # every model's table, whichever --models this run evaluated
        if not all(read_entries(folder) for eps in args.eps for folder in run_folders(args, model, eps)):
            parts += [f"### {model}", "", "(not swept yet: run the command above)", ""]
            continue
        curves = sweep_curves(args, model)
        folder = args.out / "eps-sweep" / model
        folder.mkdir(parents=True, exist_ok=True)
        images, objects = curves[0]["images"], curves[0]["objects"]
        settings = {"eps255": args.eps, "steps": args.steps, "generator": args.generator, "limit": args.limit,
                    "prompts": list(PROMPTS), "runs": {f"{e:g}": [os.path.relpath(f, ROOT) for f in run_folders(args, model, e)]
                                                        for e in args.eps}}
        (folder / "sweep.json").write_text(json.dumps({"model": model, "settings": settings, "curves": curves},
                                                      indent=1) + "\n")
        figure_dir = ROOT / "docs" / "images" if args.out == DEFAULT_OUT else folder
        figure = figure_dir / f"eps_sweep_{model}.png"
        eps_sweep_plot(curves, {"none": "original model", f"{model}-adapter": "adapter (adaptive + transfer)"},
                       title=f"{model}: worst case per object, {args.steps} {args.generator.upper()} steps, "
                             f"{images} test scenes", prompts=list(PROMPTS)).savefig(figure, dpi=110)
        swept = [f for e in args.eps for f in run_folders(args, model, e) if args.out / "eps-sweep" in f.parents]
        seconds = [entry.get("seconds", 0) for f in swept for entry in read_entries(f)[:args.limit]]
        rel = lambda p: Path(os.path.relpath(p, md.parent)).as_posix()  # noqa: E731
        parts += [f"### {model}", "",
                  f"{images} test scenes, {objects} objects, {args.steps} {args.generator.upper()} steps per attack; "
                  f"worst-case mIoU (%) of the original model and of the adapter, and the adapter's paired gain "
                  f"(points); {sum(seconds) / 60 / max(len(seconds), 1):.1f} minutes per image and budget on one CPU "
                  f"thread (two defenses). Data: [{rel(folder / 'sweep.json')}]({rel(folder / 'sweep.json')}).", "",
                  f"![worst-case mIoU against epsilon]({rel(figure)})", "",
                  *sweep_table(curves, list(PROMPTS)), ""]
    parts.append(END)
    return "\n".join(parts)


def write_results_md(args) -> Path:
    path = ROOT / "docs" / "RESULTS.md" if args.out == DEFAULT_OUT else args.out / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Results\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + generated_section(args, path) + rest.split(END, 1)[1])
    return path


def main(argv=None) -> int:
    parser = protocol_arguments(__doc__, list(MODELS))
    parser.add_argument("--eps", type=lambda text: [float(e) for e in text.split(",")], default=list(EPS255),
                        help="budgets in 1/255 (comma-separated)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if not args.tables_only:
        run_sweep(args)
    print(f"wrote {write_results_md(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
