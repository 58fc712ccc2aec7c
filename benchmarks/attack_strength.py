"""Attack strength on held-out scenes: clean vs attacked mIoU against ground truth, per attack x
crafting prompt type x evaluation prompt type (``samdemo.attacks.transfer.transfer_matrix``).

    OMP_NUM_THREADS=1 python benchmarks/attack_strength.py --scenes 20 --device cpu   # sam-small and sam2-small
    python benchmarks/attack_strength.py --models sam-small --weights runs/sam-small/state.pt --scenes 5 --out /tmp/s.json

Objects: up to ``--max-instances`` ground-truth instances per scene (the largest ones), each
prompted with its centre-most point, tight box and its own mask. mIoU pools all objects of all
scenes. Also measured: the same prompts decoded on a blank (uniform grey) image, i.e. with no
image information at all. It tells how much a prompt type relies on the image (the decoder
largely copies a mask prompt) and so how much any image perturbation can change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import clock, parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.attacks.transfer import DEFAULT_ATTACKS, EVAL_TYPES, transfer_matrix  # noqa: E402
from samdemo.engine import image_to_tensor  # noqa: E402
from samdemo.metrics import batch_iou  # noqa: E402
from samdemo.pipeline import AttackRequest, predict_types  # noqa: E402
from samdemo.prompts import prompts_from_mask  # noqa: E402
from samdemo.scenes import validation_scenes  # noqa: E402


def evaluate(engine, args) -> dict:
    attack_kwargs = {"cross-prompt": args.cross} if args.cross else {}
    vs_gt, vs_clean, clean, blank, seconds, rows = [], [], [], [], {}, None
    start = clock(engine.device)
    for number, scene in enumerate(validation_scenes(args.scenes, size=engine.image_size)):
        order = np.argsort(-scene.masks.reshape(len(scene.masks), -1).sum(1), kind="stable")[:args.max_instances]
        masks = scene.masks[np.sort(order)]
        request = AttackRequest(eps255=args.eps, steps=args.steps, generator=args.generator, seed=number)
        result = transfer_matrix(engine, scene.image, masks, attacks=args.attacks, request=request,
                                 attack_options=attack_kwargs)
        rows = result.rows
        vs_gt.append(result.per_object_vs_gt)
        vs_clean.append(result.per_object_vs_clean)
        clean.append(result.clean_per_object_vs_gt)
        for row, s in result.seconds.items():
            seconds[row] = seconds.get(row, 0.0) + s
        grey = np.full_like(scene.image, 128)
        objects = [prompts_from_mask(m) for m in masks]
        blank_masks = predict_types(engine, image_to_tensor(grey), objects, EVAL_TYPES)
        blank.append(np.stack([batch_iou(blank_masks[t], torch.as_tensor(masks)).numpy() for t in EVAL_TYPES]))
        print(f"{engine.name} scene {number + 1}/{args.scenes}: {len(masks)} objects, "
              f"{clock(engine.device) - start:.0f} s", file=sys.stderr, flush=True)

    vs_gt, vs_clean = np.concatenate(vs_gt, axis=2), np.concatenate(vs_clean, axis=2)
    clean = np.concatenate(clean, axis=1)
    clean_miou = {t: float(clean[c].mean()) for c, t in enumerate(EVAL_TYPES)}
    table = {row: {t: float(vs_gt[r, c].mean()) for c, t in enumerate(EVAL_TYPES)} for r, row in enumerate(rows)}
    output = {
        "model": engine.name,
        "objects": int(vs_gt.shape[2]),
        "clean_miou_vs_gt": clean_miou,
        "attacked_miou_vs_gt": table,
        "attacked_over_clean": {row: {t: v / clean_miou[t] if clean_miou[t] else None for t, v in cells.items()}
                                for row, cells in table.items()},
        "attacked_miou_vs_clean_prediction": {row: {t: float(vs_clean[r, c].mean()) for c, t in enumerate(EVAL_TYPES)}
                                              for r, row in enumerate(rows)},
        "blank_image_miou_vs_gt": {t: float(v) for t, v in zip(EVAL_TYPES, np.concatenate(blank, axis=1).mean(1))},
        "seconds_per_scene": {row: s / args.scenes for row, s in seconds.items()},
    }
    width = max(map(len, rows + ["blank grey image"])) + 2
    print(f"{engine.name}: mIoU vs ground truth over {output['objects']} objects")
    print("".ljust(width) + "".join(t.rjust(8) for t in EVAL_TYPES))
    print("clean".ljust(width) + "".join(f"{clean_miou[t]:8.3f}" for t in EVAL_TYPES))
    for row in rows:
        print(row.ljust(width) + "".join(f"{table[row][t]:8.3f}" for t in EVAL_TYPES))
    print("blank grey image".ljust(width) + "".join(f"{output['blank_image_miou_vs_gt'][t]:8.3f}" for t in EVAL_TYPES))
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sam-small", "sam2-small"])
    parser.add_argument("--weights", type=Path, nargs="+", default=None,
                        help="one weights file per model, e.g. a partially trained runs/<model>/state.pt")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--max-instances", type=int, default=4)
    parser.add_argument("--eps", type=float, default=8.0, help="1/255 units")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--generator", default="pgd")
    parser.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS))
    parser.add_argument("--cross", type=json.loads, default={}, help='cross-prompt options as JSON, e.g. {"k": 64}')
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attack_strength.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)

    from samdemo.factory import load_engine

    if args.weights is not None and len(args.weights) != len(args.models):
        parser.error("give one --weights file per model")
    output = {"settings": {"eps": f"{args.eps:g}/255", "steps": args.steps, "generator": args.generator,
                           "scenes": args.scenes, "max_instances": args.max_instances, "cross_prompt": args.cross,
                           "step_size": "2.5 * eps / steps", "seeds": "scene index", "device": args.device,
                           "torch_threads": torch.get_num_threads()},
              "rows_legend": "cross-prompt/feature/random: crafted without prompts; mask@T: crafted with the "
                             "objects' T prompts. Columns: the prompt type used for evaluation. blank: the same "
                             "prompts on a uniform grey image (no image information at all).",
              "models": {}}
    for index, model in enumerate(args.models):
        engine = load_engine(model, args.weights[index] if args.weights else None, device=args.device, frozen=True)
        output["models"][model] = evaluate(engine, args)
    print(f"-> {write_json(args.out, output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
