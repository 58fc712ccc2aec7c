"""Inference latency of a merged SVD adapter vs the original model (target: within 2 %).

A merged adapter writes W' = U diag(s) V^T into the targeted layers once, so the merged model has
exactly the original architecture and weight shapes: it should cost nothing at inference. This
measures it. "original" is the model without adapter, "merged" the *same model object* with an
adapter applied and merged (singular values perturbed by 10 %, so the weights really differ;
every other tensor is shared, so memory placement cannot bias the comparison). Both run the same
workload (encode one 256-px scene, decode a point, a box and a mask prompt, no gradient),
**interleaved** in one run: each round times both, in alternating order (AB, BA, ...), to cancel
drifts in machine load; a timing is the fastest of ``--reps`` calls. The ratio is
median(merged) / median(original) over the rounds (the median of the per-round ratios is
recorded too). The unmerged adapter (W' recomputed at every forward, on a copy of the model) is
timed too, for reference.

    OMP_NUM_THREADS=1 python benchmarks/adapter_merge.py --device cpu    # sam-small, CPU
    python benchmarks/adapter_merge.py --model sam2-small --out /tmp/sam2_merge.json

Timing does not depend on the weights, so a missing checkpoint falls back to random weights
(recorded in the JSON as "weights").
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import clock, parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.defense import apply_adapter, default_target_modules  # noqa: E402
from samdemo.build import ModelUnavailableError, get_spec, load_model  # noqa: E402
from samdemo.engine import SegmentEngine, image_to_tensor  # noqa: E402
from samdemo.prompts import prompts_from_mask  # noqa: E402
from samdemo.scenes import test_scenes  # noqa: E402


def load(name: str, device: str) -> tuple[torch.nn.Module, str]:
    try:
        return load_model(name, device=device), "trained"
    except ModelUnavailableError:
        torch.manual_seed(0)
        return load_model(name, device=device, random_init=True), "random init (no checkpoint)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam-small")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (each times every variant)")
    parser.add_argument("--reps", type=int, default=3, help="workload repetitions per timing")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "adapter_merge.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)
    torch.set_num_threads(args.threads)

    model, weights = load(args.model, args.device)
    family = get_spec(args.model).family
    # "original" and "merged" are the *same* model object (same memory for every other tensor):
    # merged = adapter applied and merged, original = adapter removed (the original tensors back).
    engine = SegmentEngine(model.eval(), family, name=args.model)
    unmerged = SegmentEngine(copy.deepcopy(model).eval(), family, name=args.model)
    g = torch.Generator().manual_seed(0)
    values = {}
    for name, module in model.named_modules():
        if name in default_target_modules(family):
            s = torch.linalg.svdvals(module.weight.detach().reshape(module.weight.shape[0], -1).double()).float()
            values[name] = s * (1 + 0.1 * torch.randn(len(s), generator=g).to(s.device))

    def merged_state():
        adapter = apply_adapter(engine)
        adapter.set_singular_values(values)
        adapter.merge()
        return adapter

    reference = apply_adapter(unmerged)
    reference.set_singular_values(values)
    adapter = merged_state()
    info = {"layers": adapter.names, "num_trainable": adapter.num_trainable}
    adapter.remove()

    scene = test_scenes(1, size=engine.image_size)[0]
    image = image_to_tensor(scene.image).to(engine.device)  # the copy to a GPU is not part of the workload
    mask = max(scene.masks, key=lambda m: m.sum())
    prompts = list(prompts_from_mask(mask).values())

    def workload(engine):
        with torch.no_grad():
            return engine.decode(engine.embed(image), prompts, validate=False)

    def timed(engine) -> float:
        """Fastest of ``reps`` calls, in ms (the minimum is the least disturbed by other processes)."""
        best = math.inf
        for _ in range(args.reps):
            start = clock(args.device)
            workload(engine)
            best = min(best, clock(args.device) - start)
        return best * 1000

    def merged_workload():
        adapter = merged_state()
        try:
            return workload(engine)
        finally:
            adapter.remove()

    with torch.no_grad():
        out = {"original": workload(engine), "merged": merged_workload(), "unmerged": workload(unmerged)}
    merged_vs_unmerged = float((out["merged"].low_res_all - out["unmerged"].low_res_all).abs().max())
    merged_vs_original = float((out["merged"].low_res_all - out["original"].low_res_all).abs().max())

    def timed_variant(name: str) -> float:
        if name == "original":
            return timed(engine)
        if name == "unmerged":
            return timed(unmerged)
        adapter = merged_state()  # (SVD and merge outside the timed region)
        try:
            return timed(engine)
        finally:
            adapter.remove()

    order = ["original", "merged", "unmerged"]
    for _ in range(args.warmup):
        for name in order:
            timed_variant(name)
    times: dict[str, list[float]] = {k: [] for k in order}
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].append(timed_variant(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["merged"] / med["original"]
    paired = [m / o for m, o in zip(times["merged"], times["original"])]
    result = {
        "benchmark": "adapter_merge",
        "command": "OMP_NUM_THREADS=1 python benchmarks/adapter_merge.py " + " ".join(sys.argv[1:] if argv is None
                                                                                       else argv),
        "model": args.model, "weights": weights, "family": family, "device": args.device, "threads": args.threads,
        "workload": "embed one 256-px scene + decode point, box and mask prompts (no gradient)",
        "adapter": info | {"perturbation": "s = s_base * (1 + 0.1 N(0, 1))"},
        "variants": {"original": "the model without adapter", "merged": "the same model object with the adapter "
                     "merged (W' written into the layers)", "unmerged": "a copy with the adapter applied, not merged "
                     "(W' recomputed at every forward)"},
        "rounds": args.rounds, "reps_per_timing": args.reps, "timing": "per round and variant: fastest of reps calls",
        "order": "interleaved, alternating AB/BA per round",
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "p10_p90_ms": {k: [round(q, 3) for q in statistics.quantiles(v, n=10)[::8]] for k, v in times.items()},
        "ratio_merged_over_original": round(ratio, 4),
        "median_paired_ratio_merged_over_original": round(statistics.median(paired), 4),
        "ratio_unmerged_over_original": round(med["unmerged"] / med["original"], 4),
        "within_2_percent": abs(ratio - 1) <= 0.02,
        "max_abs_logit_diff_merged_vs_unmerged": merged_vs_unmerged,
        "max_abs_logit_diff_merged_vs_original": merged_vs_original,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()
                    or platform.machine(), "cpus": os.cpu_count(),
                    "loadavg_1min_at_end": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("model", "weights", "median_ms", "ratio_merged_over_original",
                                              "median_paired_ratio_merged_over_original", "ratio_unmerged_over_original",
                                              "within_2_percent")}, indent=1))
    return result


if __name__ == "__main__":
    main()
