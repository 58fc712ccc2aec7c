"""What the lab features cost on CPU with the embedded models (issue 18).

* robustness curve: mIoU of the original and the robust (shipped adapter) model at
  eps 0, 1, 2, 4, 8, 16 /255, crafted on each (transfer and adaptive), the mask attack with
  ``--steps`` steps: 5 x 2 attacks, 5 x 4 evaluations;
* segment everything: ``SamAutomaticMaskGenerator`` through the engine (16 x 16 points) on one
  image, clean embedding cached and not; and the whole comparison of issue 18 (a cross-prompt
  attack, then both models on the clean and the adversarial image);
* perturbation norms (L-inf, L2, PSNR) of one 256 x 256 image.

    OMP_NUM_THREADS=2 python benchmarks/lab_features.py     # -> benchmarks/results/lab_features.json

Times are wall seconds on a CPU shared with other jobs (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import write_json  # noqa: E402
from samdemo.adapter import load_adapter  # noqa: E402
from samdemo.attacks import make_attack  # noqa: E402
from samdemo.build import CHECKPOINT_DIR  # noqa: E402
from samdemo.engine import SegmentEngine, image_to_tensor, tensor_to_image  # noqa: E402
from samdemo.metrics import perturbation_norms  # noqa: E402
from samdemo.prompts import Prompt  # noqa: E402
from samdemo.robustness_curve import robustness_curve  # noqa: E402
from samdemo.segment_everything import compare_everything, segment_everything  # noqa: E402


def robust_copy(engine: SegmentEngine) -> SegmentEngine:
    import copy

    robust = SegmentEngine(copy.deepcopy(engine.model), engine.family, name=engine.name, cache=engine.cache)
    load_adapter(robust, CHECKPOINT_DIR / f"{engine.name}-adapter", merge=True)
    return robust


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 2)


def measure(model: str, image: np.ndarray, steps: int) -> dict:
    original = SegmentEngine.from_name(model)
    robust = robust_copy(original)
    prompts = [Prompt(points=np.array([[128.0, 128.0]], np.float32), labels=np.array([1]))]
    original.predict(image, prompts)  # warm up, cache the clean embedding
    curve, curve_s = timed(lambda: robustness_curve(original, image, prompts, robust=robust, steps=steps))
    original.cache.clear()
    masks, everything_uncached_s = timed(lambda: segment_everything(original, image))
    _, everything_cached_s = timed(lambda: segment_everything(original, image))
    attack = make_attack("cross-prompt", original, eps=8 / 255, steps=steps, seed=0)
    adversarial, attack_s = timed(lambda: tensor_to_image(attack.forward(image_to_tensor(image)).adv_images))
    comparisons, compare_s = timed(lambda: {name: compare_everything(engine, image, adversarial)
                                            for name, engine in (("original", original), ("robust", robust))})
    _, norms_s = timed(lambda: [perturbation_norms(image, adversarial) for _ in range(100)])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sam-small", "sam2-small"])
    parser.add_argument("--image", type=Path, default=ROOT / "assets" / "scene-0.png")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lab_features.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = cv2.cvtColor(cv2.imread(str(args.image)), cv2.COLOR_BGR2RGB)
    result = {"image": args.image.name, "image_hw": list(image.shape[:2]), "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "load_average_before": list(os.getloadavg()),
              "models": {model: measure(model, image, args.steps) for model in args.models}}
    result["load_average_after"] = list(os.getloadavg())
    print(write_json(args.out, result).read_text())


if __name__ == "__main__":
    main()
