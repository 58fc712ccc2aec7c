"""Attack strength on held-out scenes: clean vs attacked mIoU against ground truth, per attack x
crafting prompt type x evaluation prompt type (``samdemo.attacks.transfer.transfer_matrix``).

    OMP_NUM_THREADS=1 python benchmarks/attack_strength.py --scenes 20           # sam-small
    python benchmarks/attack_strength.py --model sam2-small --scenes 20 --out benchmarks/results/attack_strength_sam2.json

Objects: up to ``--max-instances`` ground-truth instances per scene (the largest ones), each
prompted with its centre-most point, tight box and its own mask. mIoU pools all objects of all
scenes. Also measured, to explain the mask-prompt column: the mask prompts decoded on a blank
(uniform grey) image, i.e. with no image information at all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from samdemo.attacks.transfer import DEFAULT_ATTACKS, EVAL_TYPES, predict_types, transfer_matrix  # noqa: E402
from samdemo.engine import image_to_tensor  # noqa: E402
from samdemo.metrics import batch_iou  # noqa: E402
from samdemo.prompts import prompts_from_mask  # noqa: E402
from samdemo.scenes import heldout_scenes  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sam-small")
    parser.add_argument("--weights", type=Path, default=None, help="e.g. a partially trained runs/<model>/state.pt")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--max-instances", type=int, default=4)
    parser.add_argument("--eps", type=float, default=8.0, help="1/255 units")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--generator", default="pgd")
    parser.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS))
    parser.add_argument("--cross", type=json.loads, default={}, help='cross-prompt options as JSON, e.g. {"k": 64}')
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attack_strength.json")
    args = parser.parse_args(argv)

    from samdemo.attacks.cli import load_engine

    engine = load_engine(args.model, args.weights)
    engine.model.requires_grad_(False)
    attack_kwargs = {"cross-prompt": args.cross} if args.cross else {}
    vs_gt, vs_clean, clean, blank, seconds, rows = [], [], [], [], {}, None
    start = time.perf_counter()
    for number, scene in enumerate(heldout_scenes(args.scenes, size=engine.image_size)):
        order = np.argsort(-scene.masks.reshape(len(scene.masks), -1).sum(1), kind="stable")[:args.max_instances]
        masks = scene.masks[np.sort(order)]
        result = transfer_matrix(engine, scene.image, masks, attacks=args.attacks, eps=args.eps / 255,
                                 steps=args.steps, generator=args.generator, seed=number, attack_kwargs=attack_kwargs)
        rows = result["rows"]
        vs_gt.append(result["per_object_vs_gt"])
        vs_clean.append(result["per_object_vs_clean"])
        clean.append(result["clean_per_object_vs_gt"])
        for row, s in result["seconds"].items():
            seconds[row] = seconds.get(row, 0.0) + s
        grey = np.full_like(scene.image, 128)
        objects = [prompts_from_mask(m) for m in masks]
        blank_masks = predict_types(engine, image_to_tensor(grey), objects, ("mask",))["mask"]
        blank.append(batch_iou(blank_masks, torch.as_tensor(masks)).numpy())
        print(f"scene {number + 1}/{args.scenes}: {len(masks)} objects, "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    vs_gt, vs_clean = np.concatenate(vs_gt, axis=2), np.concatenate(vs_clean, axis=2)
    clean = np.concatenate(clean, axis=1)
    clean_miou = {t: float(clean[c].mean()) for c, t in enumerate(EVAL_TYPES)}
    table = {row: {t: float(vs_gt[r, c].mean()) for c, t in enumerate(EVAL_TYPES)} for r, row in enumerate(rows)}
    output = {
        "model": engine.name,
        "settings": {"eps": f"{args.eps:g}/255", "steps": args.steps, "generator": args.generator,
                     "scenes": args.scenes, "max_instances": args.max_instances, "cross_prompt": args.cross,
                     "step_size": "2.5 * eps / steps", "seeds": "scene index"},
        "objects": int(vs_gt.shape[2]),
        "clean_miou_vs_gt": clean_miou,
        "attacked_miou_vs_gt": table,
        "attacked_over_clean": {row: {t: v / clean_miou[t] if clean_miou[t] else None for t, v in cells.items()}
                                for row, cells in table.items()},
        "attacked_miou_vs_clean_prediction": {row: {t: float(vs_clean[r, c].mean()) for c, t in enumerate(EVAL_TYPES)}
                                              for r, row in enumerate(rows)},
        "mask_prompt_on_blank_image_miou_vs_gt": float(np.concatenate(blank).mean()),
        "seconds_per_scene": {row: s / args.scenes for row, s in seconds.items()},
        "rows_legend": "cross-prompt/feature/random: crafted without prompts; mask@T: crafted with the objects' "
                       "T prompts. Columns: the prompt type used for evaluation.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(output, indent=1) + "\n")
    width = max(map(len, rows)) + 2
    print("mIoU vs ground truth".ljust(width) + "".join(t.rjust(8) for t in EVAL_TYPES))
    print("clean".ljust(width) + "".join(f"{clean_miou[t]:8.3f}" for t in EVAL_TYPES))
    for row in rows:
        print(row.ljust(width) + "".join(f"{table[row][t]:8.3f}" for t in EVAL_TYPES))
    print(f"mask prompts on a blank grey image: {output['mask_prompt_on_blank_image_miou_vs_gt']:.3f}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
