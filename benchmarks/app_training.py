"""What training a robust adapter in the app costs with the embedded models (issue 18, item 4).

The app's own path (``samdemo.app.actions.run_training`` through a ``ModelManager``, as the Train
button runs it): the default run of the accordion (20 steps of 2 images, the paper's budget,
generated scenes) including both held-out checks (4 scenes, clean and under a 10-step cross-prompt
attack) and the build of the session's robust model; the seconds per stage come from the progress
callback.

    OMP_NUM_THREADS=2 python benchmarks/app_training.py --device cpu   # -> benchmarks/results/app_training.json

``--device``: where the app's models run (default cuda when there is one). Times are wall seconds,
on a CPU possibly shared with other jobs (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import clock, parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.app.actions import TrainJob, run_training  # noqa: E402
from samdemo.app.models import ModelManager  # noqa: E402


def measure(manager: ModelManager, model: str, steps: int, source: str) -> dict:
    device = manager.engine(model).device  # loading is not part of a training run
    marks: dict[str, float] = {}
    start = clock(device)

    def progress(step, total, stage=""):
        marks.setdefault("first step" if step == 1 else stage.split(",")[0], clock(device) - start)

    job = TrainJob.from_widgets(model=model, budget="paper", values_per_layer=14, steps=steps, source=source)
    with tempfile.TemporaryDirectory() as folder:
        outcome = run_training(manager, job, None, Path(folder), progress)
    final_check = marks["held-out check of the adapted model"]
    return {"steps": steps, "batch": job.config.batch, "source": source, "num_trainable": outcome.log["num_trainable"],
            "total_seconds": round(outcome.seconds, 1),
            "check_before_and_first_step_seconds": round(marks["first step"], 1),
            "seconds_per_step_after_the_first": round((final_check - marks["first step"]) / max(steps - 1, 1), 2),
            "check_after_and_robust_model_seconds": round(outcome.seconds - final_check, 1),
            "table": outcome.table}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sam-small", "sam2-small"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app_training.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)
    torch.set_num_threads(args.threads)
    manager = ModelManager(device=args.device)
    result = {"device": args.device, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "load_average_before": list(os.getloadavg()),
              "models": {model: measure(manager, model, args.steps, "scenes") for model in args.models}}
    result["load_average_after"] = list(os.getloadavg())
    print(write_json(args.out, result).read_text())


if __name__ == "__main__":
    main()
