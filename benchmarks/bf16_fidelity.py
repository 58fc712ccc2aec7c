"""Does bf16 autocast keep the results? Logits and attack outcomes, bf16 against fp32.

    python benchmarks/bf16_fidelity.py [--models sam-small sam2-small] [--scenes 4] [--steps 10] [--device cpu]

The engine runs the image encoder under ``torch.autocast(dtype=bfloat16)`` (``SegmentEngine
(autocast_dtype=...)``); the decoder and the losses stay fp32. On CPU the engine leaves autocast
off (CPUs without bf16 units only slow down), so this script switches it on for CPU too: the
numerics of bf16 autocast are the same on CPU and GPU (same rounding of matmul inputs to bf16,
fp32 accumulation), only the kernels differ. ``--device`` (default cuda when there is one) is
where both run, recorded in the JSON. Measured per model on held-out test scenes:

* clean: the chosen mask's logits (point and box prompt per object) with the encoder in bf16
  vs fp32: mean / max absolute difference, and the IoU of the two binary masks;
* attack: the cross-prompt attack (eps 8/255, ``--steps``) crafted with the encoder in bf16 vs
  fp32 from the same seed, each adversarial image then scored in fp32: the mean IoU of the
  attacked masks against the clean ones (lower = stronger attack), for both.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.attacks import CrossPromptAttack  # noqa: E402
from samdemo.engine import SegmentEngine, image_to_tensor  # noqa: E402
from samdemo.factory import load_engine  # noqa: E402
from samdemo.metrics import mask_iou  # noqa: E402
from samdemo.prompts import prompts_from_mask  # noqa: E402
from samdemo.scenes import test_scenes  # noqa: E402


def set_bf16(engine: SegmentEngine, on: bool) -> None:
    engine.autocast_dtype = torch.bfloat16 if on else None
    engine._autocast_enabled = lambda: engine.autocast_dtype is not None  # on CPU too (see docstring)
    engine.cache.clear()


def scene_prompts(scene):
    out = []
    for mask in scene.masks[:3]:
        p = prompts_from_mask(mask)
        out += [p["point"], p["box"]]
    return out


def logits(engine, image, prompts):
    with torch.no_grad():
        return engine.decode(engine.embed(image_to_tensor(image)), prompts).logits


def measure(name: str, n_scenes: int, steps: int, device: str) -> dict:
    engine = load_engine(name, device=device)
    engine.model.requires_grad_(False)
    scenes = test_scenes(n_scenes, size=engine.image_size)
    diffs, maxdiffs, agree, adv_iou = [], [], [], {"fp32": [], "bf16": []}
    for scene in scenes:
        prompts = scene_prompts(scene)
        set_bf16(engine, False)
        ref = logits(engine, scene.image, prompts)
        set_bf16(engine, True)
        low = logits(engine, scene.image, prompts)
        diffs.append(float((ref - low).abs().mean()))
        maxdiffs.append(float((ref - low).abs().max()))
        agree += [mask_iou(a > 0, b > 0) for a, b in zip(ref, low)]
        for mode in ("fp32", "bf16"):
            set_bf16(engine, mode == "bf16")
            adv = CrossPromptAttack(engine, steps=steps, seed=0)(image_to_tensor(scene.image)).to_uint8()
            set_bf16(engine, False)
            attacked = logits(engine, adv, prompts)
            adv_iou[mode] += [mask_iou(a > 0, b > 0) for a, b in zip(attacked, ref)]
    set_bf16(engine, False)
    return {"clean_logit_abs_diff_mean": float(np.mean(diffs)), "clean_logit_abs_diff_max": float(np.max(maxdiffs)),
            "clean_logit_scale_mean_abs": float(ref.abs().mean()),
            "clean_mask_iou_bf16_vs_fp32_mean": float(np.mean(agree)),
            "clean_mask_iou_bf16_vs_fp32_min": float(np.min(agree)),
            "attacked_iou_vs_clean_fp32_attack": float(np.mean(adv_iou["fp32"])),
            "attacked_iou_vs_clean_bf16_attack": float(np.mean(adv_iou["bf16"])),
            "masks_compared": len(agree)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sam-small", "sam2-small"])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bf16_fidelity.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)
    result = {"device": args.device, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "scenes": args.scenes, "attack_steps": args.steps, "eps": "8/255",
              "note": "bf16 autocast on the image encoder, switched on for CPU (same numerics as on GPU)",
              "models": {}}
    for name in args.models:
        result["models"][name] = measure(name, args.scenes, args.steps, args.device)
        print(name, result["models"][name], flush=True)
    print(f"-> {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
