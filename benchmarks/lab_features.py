"""What the lab features cost with the embedded models (issue 18).

* robustness curve: mIoU of the original and the robust (shipped adapter) model at
  eps 0, 1, 2, 4, 8, 16 /255, crafted on each (transfer and adaptive), the mask attack with
  ``--steps`` steps: 5 x 2 attacks, 5 x 4 evaluations;
* segment everything: ``SamAutomaticMaskGenerator`` through the engine (16 x 16 points) on one
  image, clean embedding cached and not; and the whole comparison of issue 18 (a cross-prompt
  attack, then both models on the clean and the adversarial image);
* perturbation norms (L-inf, L2, PSNR) of one 256 x 256 image.

    OMP_NUM_THREADS=2 python benchmarks/lab_features.py --device cpu   # -> benchmarks/results/lab_features.json

``--device``: where the models run (default cuda when there is one). Times are wall seconds, on a
CPU possibly shared with other jobs (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import clock, parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.build import CHECKPOINT_DIR  # noqa: E402
from samdemo.factory import load_engine, robust_copy  # noqa: E402
from samdemo.metrics import perturbation_norms  # noqa: E402
from samdemo.pipeline import AttackRequest  # noqa: E402
from samdemo.prompts import Prompt  # noqa: E402
from samdemo.robustness_curve import robustness_curve  # noqa: E402
from samdemo.segment_everything import everything_under_attack, segment_everything  # noqa: E402


def timed(fn, device: str):
    start = clock(device)
    value = fn()
    return value, round(clock(device) - start, 2)


def measure(model: str, image: np.ndarray, steps: int, device: str) -> dict:
    original = load_engine(model, device=device, frozen=True)
    robust, _ = robust_copy(original, CHECKPOINT_DIR / f"{model}-adapter")
    prompts = [Prompt(points=np.array([[128.0, 128.0]], np.float32), labels=np.array([1]))]
    original.predict(image, prompts)  # warm up, cache the clean embedding
    curve, curve_s = timed(lambda: robustness_curve(original, image, prompts, AttackRequest(attack="mask", steps=steps),
                                                    robust=robust), device)
    original.cache.clear()
    masks, everything_uncached_s = timed(lambda: segment_everything(original, image), device)
    _, everything_cached_s = timed(lambda: segment_everything(original, image), device)
    under_attack = everything_under_attack(AttackRequest(attack="cross-prompt", eps255=8, steps=steps),
                                           {"original": original, "robust": robust}, image)
    attack_s, compare_s = (round(under_attack.timings[key], 2) for key in ("attack", "segment"))
    comparisons = under_attack.comparisons
    _, norms_s = timed(lambda: [perturbation_norms(image, under_attack.adversarial) for _ in range(100)], device)
    return {
        "robustness_curve": {"seconds": curve_s, "attacks": 10, "steps": steps,
                             "miou": {f"{a}->{e}": [round(v, 3) for v in values] for (a, e), values in curve.miou.items()},
                             "eps255": curve.eps255},
        "segment_everything": {"seconds_uncached_embedding": everything_uncached_s,
                               "seconds_cached_embedding": everything_cached_s, "masks": len(masks)},
        "everything_under_attack": {"attack_seconds": attack_s, "compare_seconds": compare_s,
                                    "total_seconds": round(attack_s + compare_s, 2),
                                    **{name: c.summary for name, c in comparisons.items()}},
        "perturbation_norms_ms": round(norms_s * 10, 3),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sam-small", "sam2-small"])
    parser.add_argument("--image", type=Path, default=ROOT / "assets" / "scene-0.png")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lab_features.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)
    torch.set_num_threads(args.threads)
    image = cv2.cvtColor(cv2.imread(str(args.image)), cv2.COLOR_BGR2RGB)
    result = {"device": args.device, "image": args.image.name, "image_hw": list(image.shape[:2]),
              "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "load_average_before": list(os.getloadavg()),
              "models": {model: measure(model, image, args.steps, args.device) for model in args.models}}
    result["load_average_after"] = list(os.getloadavg())
    print(write_json(args.out, result).read_text())


if __name__ == "__main__":
    main()
