"""Time per attack step with 1, 8, 32 prompts per step, batched vs a naive per-prompt loop.

Batched: the cross-prompt attack with its mixed-prompt mask term (default ``mix=100``,
``prompts_per_step=N``): one encoder forward + backward per step and all N prompts through the
decoder in one ``engine.decode`` call. Naive: the same N prompts, but the image is re-encoded
for each prompt (N encoder forward + backward per step), as a loop over a single-prompt attack
would do. Also: the key-channel loss alone (``mix=0``, no decoder in the loop).

    OMP_NUM_THREADS=1 python benchmarks/attack_speed.py --device cpu            # sam-small, CPU
    python benchmarks/attack_speed.py --model sam-vit-b --random-init --steps 2 --out /tmp/vitb.json

Timing does not depend on the weights, so a missing checkpoint falls back to random weights
(recorded in the JSON). Per-step times are medians over steps 2..S of one run (step 1 warms up).

Also (``flop_projection``): FLOPs of one step (encoder forward + backward, decoder forward +
backward for 1 and 32 prompts, half points half boxes), counted with
``torch.utils.flop_counter`` on the meta device (no compute, no weights), for the embedded
model and Meta's SAM ViT-B / ViT-H architectures, where the encoder dominates.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import clock, parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.attacks import CrossPromptAttack  # noqa: E402
from samdemo.attacks.base import background_bce  # noqa: E402
from samdemo.build import ModelUnavailableError, load_model  # noqa: E402
from samdemo.engine import SegmentEngine, image_to_tensor  # noqa: E402
from samdemo.scenes import test_scenes  # noqa: E402


def get_engine(name: str, weights: Path | None, random_init: bool, device: str) -> tuple[SegmentEngine, str]:
    from samdemo.factory import load_engine
    from samdemo.build import get_spec

    if weights is not None:
        return load_engine(name, weights, device=device), f"weights {weights}"
    if not random_init:
        try:
            return SegmentEngine(load_model(name, device=device), get_spec(name).family, name), "trained"
        except ModelUnavailableError:
            pass
    torch.manual_seed(0)
    return SegmentEngine(load_model(name, device=device, random_init=True), get_spec(name).family, name), "random init"


def step_times(attack: CrossPromptAttack, x: torch.Tensor) -> list[float]:
    device = attack.engine.device
    stamps = []
    attack.progress = lambda t, total: stamps.append(clock(device))
    start = clock(device)
    attack(x)
    stamps.insert(0, start)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def naive_step_times(engine: SegmentEngine, x: torch.Tensor, attack: CrossPromptAttack, n: int, steps: int):
    """Per step: for each of n prompts, re-encode the image, decode that prompt, backward."""
    with torch.no_grad():
        state = attack.prepare(x, None, [torch.Generator().manual_seed(0)])
    pool, rng = state["pools"][0], torch.Generator().manual_seed(0)
    delta, times = torch.zeros_like(x), []
    for _ in range(steps):
        start = clock(engine.device)
        grad = torch.zeros_like(x)
        for prompt in pool.sample(n, rng):
            adv = (x + delta).requires_grad_(True)
            features = engine.embed(adv)
            loss = -background_bce(engine.decode(features, [prompt], validate=False).low_res_all).mean()
            grad += torch.autograd.grad(loss, adv)[0]
        delta = (delta + attack.step_size * grad.sign()).clamp(-attack.eps, attack.eps)
        times.append(clock(engine.device) - start)
    return times


def step_flops(name: str, counts=(1, 32)) -> dict:
    """FLOPs of one attack step on the meta device: {prompts: GFLOP}, 0 = encoder only."""
    import contextlib

    import torch.fx.experimental._config as fx_config
    from torch.utils.flop_counter import FlopCounterMode

    from samdemo.build import build_architecture, get_spec
    from samdemo.prompts import box_prompt, point_prompt

    fx_config.meta_nonzero_assume_all_nonzero = True  # boolean indexing in the prompt encoder
    autocast = torch.autocast
    torch.autocast = lambda *args, **kwargs: contextlib.nullcontext()  # no autocast for "meta"
    try:
        spec = get_spec(name)
        with torch.device("meta"):
            model, family = build_architecture(spec.config)
        engine = SegmentEngine(model.eval().requires_grad_(False), family, name)
        size = engine.image_size
        x = torch.zeros(1, 3, size, size, device="meta", requires_grad=True)
        result = {}
        for n in (0, *counts):
            prompts = ([point_prompt(10 + i, 20) for i in range((n + 1) // 2)]
                       + [box_prompt(5, 5, 50 + i, 60) for i in range(n // 2)])
            with FlopCounterMode(display=False) as counter:
                features = engine.embed(x)
                loss = (engine.decode(features, prompts, validate=False).low_res_all.mean() if n
                        else features.image_embed.square().mean())
                torch.autograd.grad(loss, x)
            result[str(n)] = counter.get_total_flops() / 1e9
        return result
    finally:
        torch.autocast = autocast


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam-small")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--flops-models", nargs="*", default=["sam-small", "sam-vit-b", "sam-vit-h"],
                        help="SAM v1 architectures whose step FLOPs to count (meta device)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attack_speed.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)

    engine, weights = get_engine(args.model, args.weights, args.random_init, args.device)
    engine.model.requires_grad_(False)  # as in an attack: no parameter gradients
    scene = test_scenes(1, size=engine.image_size)[0]
    x = image_to_tensor(scene.image).to(engine.device)
    med = lambda ts: statistics.median(ts[1:] if len(ts) > 1 else ts)  # noqa: E731

    results = {"model": args.model, "weights": weights, "device": args.device, "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "image": list(scene.image.shape[:2]), "steps_timed": args.steps, "per_step_s": {}}
    feature_only = med(step_times(CrossPromptAttack(engine, steps=args.steps, seed=0, mix=0.0), x))
    results["per_step_s"]["key_channels_only"] = feature_only
    print(f"key-channel loss only (no decoder): {feature_only * 1000:.0f} ms/step", flush=True)
    for n in args.counts:
        attack = CrossPromptAttack(engine, steps=args.steps, seed=0, prompts_per_step=n)
        batched = med(step_times(attack, x))
        row = {"batched": batched}
        if not args.no_naive:
            row["naive_reencode"] = med(naive_step_times(engine, x, attack, n, min(args.steps, 3)))
            row["naive_over_batched"] = row["naive_reencode"] / batched
        results["per_step_s"][str(n)] = row
        print(f"{n:>3} prompts/step: batched {batched * 1000:.0f} ms"
              + (f", naive re-encode {row['naive_reencode'] * 1000:.0f} ms" if "naive_reencode" in row else ""),
              flush=True)
    counts = [str(n) for n in args.counts]
    base = results["per_step_s"][counts[0]]["batched"]
    results["ratio_vs_first"] = {n: results["per_step_s"][n]["batched"] / base for n in counts}
    if "32" in counts and "1" in counts:
        results["ratio_32_over_1"] = results["per_step_s"]["32"]["batched"] / results["per_step_s"]["1"]["batched"]
        print(f"ratio 32/1 prompts: {results['ratio_32_over_1']:.2f} (target <= 1.3)")
    results["flop_projection"] = {}
    for name in args.flops_models:
        gflops = step_flops(name)
        results["flop_projection"][name] = {"gflop_per_step": gflops, "ratio_32_over_1": gflops["32"] / gflops["1"]}
        print(f"FLOPs per step, {name}: encoder only {gflops['0']:.1f} G, 1 prompt {gflops['1']:.1f} G, "
              f"32 prompts {gflops['32']:.1f} G (ratio {gflops['32'] / gflops['1']:.2f})")
    print(f"-> {write_json(args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
