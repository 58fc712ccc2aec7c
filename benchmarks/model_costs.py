"""Predicted peak memory and time per attack step for every registry model (``samdemo.costs``),
checked on this CPU for the models that fit.

    python benchmarks/model_costs.py                         # all models, check sam-small + sam2-small
    python benchmarks/model_costs.py --check sam-small --check-steps 3 --out /tmp/costs.json

Prediction: meta-device FLOPs and saved-activation bytes (no weights, no compute). Check: the
cross-prompt attack (32 prompts per step, random init: cost does not depend on the weights) run
for ``--check-steps`` steps in a fresh subprocess per model; its median step time is compared
with FLOPs / this CPU's measured matmul rate, and its peak resident memory (ru_maxrss, growth
over the model-loaded state) with the predicted fp32 step memory (saved activations + largest
intermediates + input). Also writes the markdown table (``--table``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_json  # noqa: E402
from samdemo import costs  # noqa: E402
from samdemo.build import MODEL_REGISTRY  # noqa: E402

CHECK_CODE = r"""
import json, resource, statistics, sys, time
import torch
from samdemo.attacks import CrossPromptAttack
from samdemo.build import get_spec, load_model
from samdemo.engine import SegmentEngine
name, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
engine = SegmentEngine(load_model(name, device="cpu", random_init=True), get_spec(name).family, name)
engine.model.requires_grad_(False)
size = engine.image_size
x = torch.rand(1, 3, size, size)
with torch.no_grad():
    engine.embed(x)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stamps = []
attack = CrossPromptAttack(engine, steps=steps, seed=0, prompts_per_step=32,
                           progress=lambda t, total: stamps.append(time.perf_counter()))
start = time.perf_counter()
attack(x)
times = [b - a for a, b in zip([start] + stamps, stamps)]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"step_s": statistics.median(times[1:] or times), "rss_growth_gb": (peak - base) / 2**20,
                  "peak_rss_gb": peak / 2**20}))
"""


def check(name: str, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHECK_CODE, name, str(steps)], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODEL_REGISTRY))
    parser.add_argument("--checkpointing-for", nargs="*", default=["sam-vit-b", "sam-vit-l", "sam-vit-h",
                                                                   "sam2.1-hiera-large"])
    parser.add_argument("--check", nargs="*", default=["sam-small", "sam2-small"])
    parser.add_argument("--check-steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model_costs.json")
    parser.add_argument("--table", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)

    rows = []
    for name in args.models:
        rows.append(costs.step_profile(name, args.prompts))
        if name in args.checkpointing_for:
            rows.append(costs.step_profile(name, args.prompts, checkpointing=True))
        r = rows[-1]
        print(f"{name}: {r['gflop_per_step']:.0f} GFLOP, peak {r['peak_memory_gb_bf16']:.2f} GB bf16", flush=True)
    rate = costs.cpu_matmul_gflops()
    checks = {}
    for name in args.check:
        predicted = next(r for r in rows if r["model"] == name and not r["checkpointing"])
        measured = check(name, args.check_steps)
        step_memory_gb = (predicted["peak_memory_gb_fp32"] - predicted["weights_mb"] / 1024)
        checks[name] = {**measured, "predicted_cpu_step_s": predicted["gflop_per_step"] / rate,
                        "predicted_step_memory_gb": step_memory_gb,
                        "time_ratio_measured_over_predicted": measured["step_s"] / (predicted["gflop_per_step"] / rate),
                        "memory_ratio_measured_over_predicted": measured["rss_growth_gb"] / step_memory_gb}
        print(f"check {name}: {json.dumps(checks[name])}", flush=True)
    result = {
        "what": "predicted cost of one cross-prompt attack step (encoder fwd+bwd to the pixels, decoder for "
                f"{args.prompts} prompts), meta-device count; GPU times assume {costs.GPU_NAME} at "
                f"{costs.GPU_UTILISATION:.0%} of peak {costs.GPU_PEAK_TFLOPS}",
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpu_note": f"CPU checks on {os.cpu_count()} cores shared with other jobs (timings noisy)",
        "torch_threads": torch.get_num_threads(), "cpu_matmul_gflops": rate,
        "rows": rows, "cpu_checks": checks, "table_markdown": costs.table(rows),
    }
    print(costs.table(rows))
    if args.table:
        args.table.write_text(costs.table(rows) + "\n")
    print(f"-> {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
