"""Meta's models end to end without their weights: random-initialised registry models at their
real size (1024 px) through attack, train-adapter, evaluate and the app's attack handler, with
timings and peak memory. Slow on a CPU (minutes per model); not part of the test suite, which runs
it on the embedded 256-px models (``tests/test_gpu_check.py``).

    python benchmarks/real_size.py --models sam-vit-b sam2.1-hiera-tiny --stages attack train evaluate app \
        --attack-steps 2 --out benchmarks/results/real_size_cpu.json
    python benchmarks/real_size.py --device cuda --bf16 --models sam-vit-h --stages attack   # on a GPU

Each (model, stage) runs in its own subprocess so that its peak memory is its own: CUDA
``max_memory_allocated`` on a GPU, the process's peak resident set (ru_maxrss) on a CPU. On a GPU
every time is read after ``torch.cuda.synchronize``. ``--device``: default cuda when there is one.

* attack: the cross-prompt attack (32 prompts per step) for ``--attack-steps`` steps; the median
  step time excludes the first step (warm-up) when there are several.
* train: ``python -m samdemo train-adapter --arch <the model's YAML>`` (random weights), the default
  SVD neck targets (512 values for SAM ViT-B), 1 step of batch ``--train-batch``; the time includes
  building the model.
* evaluate: ``python -m samdemo evaluate`` on 1 procedural scene at the model's size, the random
  weights stood in for the registry's (written to a temporary file first).
* app: the app's attack handler (``run_attack``: 4 panels, the table, the perturbation) on one
  scene with a point prompt, the original model also standing in as the "robust" one's base.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STAGES = ("attack", "train", "evaluate", "app")

from benchmarks._common import clock, parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402


def _peak(device: str) -> float:
    """Peak memory of this process so far, GB."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _random_weights(name: str, folder: Path) -> Path:
    """The model's random-init state dict as safetensors under ``folder`` (seed 0)."""
    import torch
    from safetensors.torch import save_file

    from samdemo.build import build_architecture, get_spec

    path = folder / f"{name}-random.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        model, _ = build_architecture(get_spec(name).config)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _stand_in(name: str, weights: Path) -> None:
    """Registry entry ``name`` reads ``weights`` (no download, no digest) in this process."""
    import dataclasses

    import samdemo.build as build

    build.MODEL_REGISTRY[name] = dataclasses.replace(build.MODEL_REGISTRY[name], local_file=str(weights), hub=None)


def stage_attack(args) -> dict:
    import torch

    from samdemo.attacks import CrossPromptAttack
    from samdemo.build import get_spec, load_model
    from samdemo.efficiency import enable_activation_checkpointing
    from samdemo.engine import SegmentEngine

    torch.manual_seed(0)
    model = load_model(args.model, device=args.device, random_init=True).requires_grad_(False)
    if args.checkpointing:
        enable_activation_checkpointing(model)
    engine = SegmentEngine(model, get_spec(args.model).family, args.model,
                           autocast_dtype=torch.bfloat16 if args.bf16 else None)
    x = torch.rand(1, 3, engine.image_size, engine.image_size)
    stamps = []
    attack = CrossPromptAttack(engine, steps=args.attack_steps, seed=0, prompts_per_step=32,
                               progress=lambda t, total: stamps.append(clock(args.device)))
    start = clock(args.device)
    attack(x)
    total = clock(args.device) - start
    steps = [b - a for a, b in zip([start] + stamps, stamps)]
    return {"image_size": engine.image_size, "steps": args.attack_steps, "attack_s": total,
            "step_s_median": statistics.median(steps[1:] or steps), "step_s": steps}


def stage_train(args) -> dict:
    from samdemo.__main__ import main as cli
    from samdemo.build import get_spec

    with tempfile.TemporaryDirectory() as tmp:
        # in this process (itself one stage's), so that its peak memory is the training's
        argv = ["train-adapter", "--arch", str(get_spec(args.model).config), "--out", f"{tmp}/adapter", "--run-dir",
                f"{tmp}/run", "--steps", "1", "--batch", str(args.train_batch), "--instances", "1", "--attack-steps",
                str(args.attack_steps), "--warmup", "0", "--eval-every", "0", "--device", args.device]
        argv += ["--image-size", str(args.image_size)] if args.image_size else []
        start = clock(args.device)
        with contextlib.redirect_stdout(io.StringIO()) as out:  # stdout's last line is this stage's JSON
            code = cli(argv)
        seconds = clock(args.device) - start
        if code != 0:
            raise RuntimeError(f"train-adapter exited with {code}")
        adapter = Path(tmp) / "adapter"
        meta = json.loads((adapter / "adapter.json").read_text()) if (adapter / "adapter.json").exists() else {}
    return {"argv": " ".join(argv), "seconds": seconds,
            "trained_values": meta.get("trainable_values") or meta.get("num_values") or meta.get("values"),
            "stdout_tail": out.getvalue()[-600:]}


def stage_evaluate(args) -> dict:
    from samdemo.__main__ import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        _stand_in(args.model, _random_weights(args.model, Path(tmp)))
        n = args.eval_images
        argv = ["evaluate", "--model", args.model, "--data", f"scenes:{n}", "--limit", str(n), "--steps",
                str(args.attack_steps), "--attacks", "cross-prompt", "--prompts", "point", "--max-instances", "2",
                "--device", args.device, "--out", f"{tmp}/eval"]
        start = clock(args.device)
        code = cli(argv)
        seconds = clock(args.device) - start
        if code != 0:
            raise RuntimeError(f"evaluate exited with {code}")
    return {"argv": " ".join(argv), "seconds": seconds, "images": n, "images_per_s": n / seconds,
            "note": "procedural scenes (256 px, resized to the model's input), 1 attack, point prompts, 2 objects "
                    "per image; the time includes loading the model"}


def stage_app(args) -> dict:
    import numpy as np
    import torch

    from samdemo.build import get_spec, load_model
    from samdemo.engine import SegmentEngine

    from samdemo.app.actions import AttackJob, run_attack
    from samdemo.app.models import AdapterChoice, ModelManager
    from samdemo.app.session import PromptState
    from samdemo.pipeline import AttackRequest
    torch.manual_seed(0)
    engine = SegmentEngine(load_model(args.model, device=args.device, random_init=True),
                           get_spec(args.model).family, args.model,
                           autocast_dtype=torch.bfloat16 if args.bf16 else None)
    manager = ModelManager(factory=lambda name: engine)
    from samdemo.scenes import test_scenes

    image = test_scenes(1, size=512)[0].image
    prompts = PromptState(points=((256.0, 256.0, 1),))
    job = AttackJob(model=args.model, adapter=AdapterChoice.parse(None),  # no adapter: the robust panels stay empty
                    request=AttackRequest(attack="cross-prompt", steps=args.attack_steps))
    start = clock(args.device)
    outcome = run_attack(manager, job, image, prompts, time_limit=1e9)
    return {"seconds": clock(args.device) - start, "timings": outcome.timings, "image": list(image.shape[:2])}


def run_one(args) -> dict:
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    fn = {"attack": stage_attack, "train": stage_train, "evaluate": stage_evaluate, "app": stage_app}[args.stage]
    result = fn(args)
    result["peak_memory_gb"] = _peak(args.device)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sam-vit-b", "sam2.1-hiera-tiny"])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--attack-steps", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=0, help="train-adapter --image-size (0: 1024)")
    parser.add_argument("--eval-images", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600, help="per (model, stage), seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_size.json")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)
    import torch

    if args.stage:  # child: one (model, stage), JSON on the last line of stdout
        print(json.dumps(run_one(args)))
        return 0
    result = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "bf16": args.bf16, "checkpointing": args.checkpointing,
              "attack_steps": args.attack_steps, "weights": "random init (timing does not depend on the weights)",
              "models": {}}
    passthrough = ["--device", args.device, "--attack-steps", str(args.attack_steps), "--train-batch",
                   str(args.train_batch), "--eval-images", str(args.eval_images), "--image-size", str(args.image_size), "--threads", str(args.threads)]
    passthrough += ["--bf16"] * args.bf16 + ["--checkpointing"] * args.checkpointing
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for model in args.models:
        result["models"][model] = {}
        for stage in args.stages:
            cmd = [sys.executable, __file__, "--stage", stage, "--model", model, *passthrough]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
                row = (json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0
                       else {"error": out.stderr[-1500:]})
            except subprocess.TimeoutExpired:
                row = {"error": f"timed out after {args.timeout:g} s"}
            result["models"][model][stage] = row
            print(model, stage, json.dumps({k: v for k, v in row.items() if k != "stdout_tail"})[:400], flush=True)
            write_json(args.out, result)  # partial results survive a stop
    print(f"-> {args.out}")
    return 0 if all("error" not in r for m in result["models"].values() for r in m.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
