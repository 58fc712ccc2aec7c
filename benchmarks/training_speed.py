"""Training throughput of train-base: images per second of one optimisation step.

    python benchmarks/training_speed.py --device cpu --out benchmarks/results/training_speed.json

Times ``train_base.training_step_loss`` + backward + AdamW step on batches of training scenes for
each family and setting (threads, instances per image) on ``--device`` (default cuda when there is
one; the scenes are generated on the CPU outside the timed region), after a warm-up step, and the scene
generator alone (scenes per second in one process). ``--code DIR`` times the training step of
another checkout of samdemo (e.g. an older commit, ``git worktree add /tmp/old <commit>``) in the
same run, so that before/after are compared under the same machine load.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# this folder's _common, not benchmarks._common: in_process puts another checkout first on sys.path
from _common import clock, parse_args  # noqa: E402


def time_steps(family: str, threads: int, instances: int, batch: int, steps: int, device: str) -> dict:
    """Seconds per step of the samdemo importable from sys.path (run in a fresh process)."""
    import numpy as np
    import torch

    import samdemo  # noqa: F401  (torchvision patch before segment_anything)
    from samdemo import train_base
    from samdemo.build import CONFIG_DIR, build_architecture
    from samdemo.engine import SegmentEngine
    from samdemo.scenes import train_scene

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, family = build_architecture(CONFIG_DIR / f"{family}_small.yaml")
    engine = SegmentEngine(model.to(device), family)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    takes_scenes = "scenes" in inspect.signature(train_base.training_step_loss).parameters
    seconds = []
    for step in range(steps + 1):
        scenes = [train_scene(step * batch + i) for i in range(batch)]
        rng = np.random.default_rng(step)
        start = clock(device)
        if takes_scenes:  # the step's interface before the low-resolution loss and worker processes
            loss = train_base.training_step_loss(engine, scenes, instances, rng)
        else:
            images, masks = np.stack([s.image for s in scenes]), [s.masks for s in scenes]
            rngs = [np.random.default_rng([step, i]) for i in range(batch)]
            loss = train_base.training_step_loss(engine, images, masks, instances, rngs, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(clock(device) - start)
    per_step = float(np.median(seconds[1:]))
    return {"seconds_per_step": round(per_step, 3), "images_per_second": round(batch / per_step, 2)}


def scene_rate(count: int = 40) -> float:
    from samdemo.scenes import train_scene

    train_scene(0)
    start = time.perf_counter()
    for i in range(count):
        train_scene(1000 + i)
    return round(count / (time.perf_counter() - start), 1)


def in_process(code: Path, **setting) -> dict:
    """Run ``time_steps`` in a fresh interpreter with ``code`` first on sys.path."""
    program = (f"import sys, json; sys.path[:0] = [{str(code)!r}, {str(ROOT / 'benchmarks')!r}]; "
               f"import training_speed; print(json.dumps(training_speed.time_steps(**{setting!r})))")
    out = subprocess.run([sys.executable, "-c", program], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))  # this checkout's samdemo here (in_process gives each timing its own)
    from samdemo import distributed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sam,sam2")
    parser.add_argument("--settings", default="1x3,1x2,2x2", help="THREADSxINSTANCES, comma separated")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="LABEL=DIR: also time another checkout's training step (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/training_speed.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)
    checkouts = {"current": ROOT} | dict(str(c).split("=", 1) for c in args.code)
    result = {"command": " ".join(["python", "benchmarks/training_speed.py"] + (argv or sys.argv[1:])),
              "device": args.device, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "batch": args.batch, "steps_timed": args.steps, "scenes_per_second": scene_rate(), "runs": []}
    for family in args.families.split(","):
        for setting in args.settings.split(","):
            threads, instances = (int(v) for v in setting.split("x"))
            for label, code in checkouts.items():  # interleaved, so all see the same machine load
                timing = in_process(Path(code), family=family, threads=threads, instances=instances,
                                    batch=args.batch, steps=args.steps, device=args.device)
                row = {"code": label, "family": family, "threads": threads, "instances": instances, **timing}
                result["runs"].append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
