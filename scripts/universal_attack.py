"""An attack family the adapter never trained on: a universal perturbation (``samdemo.attacks.universal``).

    python scripts/universal_attack.py --model sam2-small --fit 8 --test 4 --steps 50

Fits one perturbation on ``--fit`` validation scenes against the original model (transfer to the
adapter) and one against the adapted model (adaptive), adds each unchanged to ``--test`` test
scenes it never saw, and reports mIoU against ground truth (point and box prompts of the 4 largest
objects) for the original model and the shipped adapter, clean and attacked, with random noise of
the same size as a control. Writes ``docs/results/universal/<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from samdemo.attacks.universal import apply_universal, fit_universal  # noqa: E402
from samdemo.engine import image_to_tensor  # noqa: E402
from samdemo.factory import load_engine, robust_copy  # noqa: E402
from samdemo.metrics import batch_iou  # noqa: E402
from samdemo.pipeline import predict_types  # noqa: E402
from samdemo.prompts import prompts_from_mask  # noqa: E402
from samdemo.scenes import test_scenes, validation_scenes  # noqa: E402

TYPES = ("point", "box")


def miou(engine, images: torch.Tensor, scenes) -> dict[str, float]:
    values = {t: [] for t in TYPES}
    for image, scene in zip(images, scenes):
        masks = scene.masks[np.argsort(-scene.masks.reshape(len(scene.masks), -1).sum(1), kind="stable")[:4]]
        objects = [prompts_from_mask(m) for m in masks]
        predicted = predict_types(engine, image[None], objects, TYPES)
        for t in TYPES:
            values[t] += batch_iou(predicted[t], torch.as_tensor(masks)).tolist()
    return {t: round(float(np.mean(v)), 4) for t, v in values.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam2-small")
    parser.add_argument("--fit", type=int, default=8, help="validation scenes the perturbation is fitted on")
    parser.add_argument("--test", type=int, default=4, help="test scenes it is evaluated on")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eps", type=float, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    original = load_engine(args.model, frozen=True)
    robust, _ = robust_copy(original, ROOT / "checkpoints" / f"{args.model}-adapter")
    size = original.image_size
    fit = torch.cat([image_to_tensor(s.image) for s in validation_scenes(args.fit, size=size)])
    scenes = test_scenes(args.test, size=size)
    test = torch.cat([image_to_tensor(s.image) for s in scenes])
    noise = (torch.rand((1, *test.shape[1:]), generator=torch.Generator().manual_seed(args.seed)) * 2 - 1) * args.eps / 255
    deltas = {"universal, fitted on the original model": fit_universal(original, fit, args.eps, args.steps, args.seed),
              "universal, fitted on the adapted model": fit_universal(robust, fit, args.eps, args.steps, args.seed),
              "random noise (control)": noise}
    rows = {"clean": {"original": miou(original, test, scenes), "adapter": miou(robust, test, scenes)}}
    for label, delta in deltas.items():
        attacked = apply_universal(delta, test)
        rows[label] = {"original": miou(original, attacked, scenes), "adapter": miou(robust, attacked, scenes)}
    out = ROOT / "docs" / "results" / "universal" / f"{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args) | {"prompts": TYPES, "objects": "4 largest per scene",
                                                         "fit_split": "validation", "test_split": "test",
                                                         "seconds": round(time.perf_counter() - start, 1)},
                               "miou_gt": rows}, indent=1))
    for label, row in rows.items():
        print(f"{label:>42}: " + "  ".join(f"{m} {v['point']:.3f}/{v['box']:.3f}" for m, v in row.items()))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
