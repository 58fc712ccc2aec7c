"""Wall time of ``python -m samdemo evaluate`` in 1 process against ``torchrun --nproc-per-node 2`` on CPU.

    python benchmarks/evaluate_scaling.py --images 8 --device cpu --out benchmarks/results/evaluate_scaling.json

Runs the same small evaluation (procedural scenes, the embedded model) once per setting in a fresh output
folder: one process with torch's default threads (all cores), one process with one thread, and two gloo
processes with one thread each (torchrun's default). On cores busy with other work, the threads of one process
wait on each other (torch's default, spinning) and one thread is faster: the fair baseline there. Times the
whole command (start, model loading, merging, plots) and the evaluation loop (the slowest process's sum of
per-image seconds), and checks that the merged records equal the single processes'. On a machine whose cores
are shared with other jobs the numbers are indicative only: the JSON records the load average around each run.
``--device`` is passed on to evaluate (default cuda when there is one; under torchrun, ``cuda`` gives each process
its local rank's GPU, so the 2-process setting needs 2 GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402


def evaluate_argv(args, out: Path) -> list[str]:
    return ["evaluate", "--model", args.model, "--data", "scenes", "--limit", str(args.images), "--attacks",
            args.attacks, "--prompts", args.prompts, "--steps", str(args.steps), "--max-instances",
            str(args.max_instances), "--device", args.device, "--out", str(out)]


def run_setting(args, processes: int, threads: int | None, out: Path) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    command = launcher + ["-m", "samdemo", *evaluate_argv(args, out)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}: {done.stderr[-2000:]}")
    logs = sorted(out.glob("per_image*.jsonl"))
    per_log = [sum(json.loads(line)["seconds"] for line in log.read_text().splitlines()[1:]) for log in logs]
    return {"processes": processes, "threads_per_process": threads or "torch default",
            "command": " ".join(command[1:]).replace(str(out), "OUT"), "wall_seconds": round(seconds, 2),
            "loop_seconds": round(max(per_log), 2), "images_per_log": [len(log.read_text().splitlines()) - 1 for log in logs],
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def records(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["records"]


def max_difference(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        for key, value in x.items():
            if isinstance(value, float):
                worst = max(worst, abs(value - y[key]))
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam-small")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--attacks", default="cross-prompt")
    parser.add_argument("--prompts", default="point,box")
    parser.add_argument("--max-instances", type=int, default=2)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "evaluate_scaling.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)

    settings = [(1, None), (1, 1), (2, 1)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (processes, threads) in enumerate(settings):
            out = Path(tmp) / f"run{k}"
            runs.append(run_setting(args, processes, threads, out))
            runs[-1]["records"] = records(out)
            print(json.dumps({key: v for key, v in runs[-1].items() if key != "records"}), flush=True)
    references = {"1_process": runs[0], "1_process_1_thread": runs[1]}
    for run in runs:
        for name, reference in references.items():
            run[f"records_equal_to_{name}"] = run["records"] == reference["records"]
            run[f"max_metric_difference_to_{name}"] = max_difference(run["records"], reference["records"])
            run[f"wall_ratio_to_{name}"] = round(run["wall_seconds"] / reference["wall_seconds"], 3)
            run[f"loop_ratio_to_{name}"] = round(run["loop_seconds"] / reference["loop_seconds"], 3)
    for run in runs:
        del run["records"]
    result = {"benchmark": "evaluate_scaling", "command": " ".join(["python", *sys.argv]),
              "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "settings": {k: getattr(args, k) for k in ("model", "images", "steps", "attacks", "prompts",
                                                          "max_instances", "device")},
              "note": args.note, "target": "2 processes: wall time at most 0.6x of 1 process for 8 scenes (issue 17)",
              "runs": runs, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(args.out, result)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
