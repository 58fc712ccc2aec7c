"""Why does the prompt-free cross-prompt attack carry over badly to other scenes? Variants side by side.

    python scripts/cross_prompt_diagnosis.py --scenes 12 --out docs/results/cross-prompt-diagnosis

For each model and each variant of the cross-prompt attack (10 steps, 8/255 unless told), the
ratio of adversarial to clean mIoU (against ground truth, the center-most point and the tight box
of every instance, at most ``--max-instances`` per scene) on two sets that are **not** the
reported ones: validation scenes of the training generator (where settings are chosen) and a
*diagnosis* range of the independent generator (seeds ``SHAPES_SEED_START + 1_000_000 + i``,
disjoint from the first seeds that ``benchmarks/model_quality.py`` and the results use).

It also records how well the attack's prompt pool covers the objects: the share of ground-truth
instances that some pool segment matches at IoU >= 0.5 ("pool recall"), and the pool's size.
Writes ``OUT/diagnosis.json``; the variants are attack options (``AttackRequest.options``, and the
noise generator).

``--split test`` reports a variant chosen on those sets, once, where the item-8 target is judged: test
scenes of the training generator and the first seeds of the independent generator (the reported ones).

    python scripts/cross_prompt_diagnosis.py --models sam2-small --scenes 12 --split test --variants 1,2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import samdemo  # noqa: F401  (torchvision patch)
from samdemo.attacks.cross_prompt import sample_prompt_pool
from samdemo.engine import image_to_tensor
from samdemo.factory import load_engine
from samdemo.metrics import batch_iou
from samdemo.pipeline import AttackRequest, craft, predict_types
from samdemo.prompts import prompts_from_mask
from samdemo.scenes import test_scenes, validation_scenes
from samdemo.shapes_eval import SHAPES_SEED_START, independent_scenes, shapes_scene

DIAGNOSIS_OFFSET = 1_000_000
VARIANTS = {
    "box attack with the evaluation's own prompts (prompt-specific reference)": ("mask", {}),
    "cross-prompt (default: grid 4, mask term 100)": ("cross-prompt", {}),
    "cross-prompt, grid 8": ("cross-prompt", {"grid": 8}),
    "cross-prompt, grid 16": ("cross-prompt", {"grid": 16}),
    "cross-prompt, 64 prompts per step": ("cross-prompt", {"prompts_per_step": 64}),
    "cross-prompt, mask term 1000": ("cross-prompt", {"mix": 1000.0}),
    "cross-prompt, uniform prompts": ("cross-prompt", {"prompt_source": "uniform"}),
    "cross-prompt, uniform prompts, all channels": ("cross-prompt", {"prompt_source": "uniform", "k": 10_000}),
    "key-channel (feature loss only)": ("key-channel", {}),
    "key-channel, all channels": ("key-channel", {"k": 10_000}),
    "key-channel, all channels, cosine": ("key-channel", {"k": 10_000, "distance": "cosine"}),
    "key-channel, all channels, high-res maps x4": ("key-channel", {"k": 10_000, "high_res_weight": 4.0}),
    "key-channel, all channels, APGD": ("key-channel", {"k": 10_000, "generator": "apgd"}),
    "point attack with the evaluation's own prompts (prompt-specific reference)": ("mask", {"craft_with": "point"}),
    "cross-prompt, mask term flips the clean masks": ("cross-prompt", {"mask_target": "flip"}),
    "cross-prompt, mask term flips the clean masks, APGD": ("cross-prompt", {"mask_target": "flip", "generator": "apgd"}),
    "cross-prompt, APGD": ("cross-prompt", {"generator": "apgd"}),
    # what any prompt-free attack with a mask term approaches at best: the evaluation's own points and boxes
    "point and box attack with the evaluation's own prompts (joint white-box reference)":
        ("mask", {"craft_with": "point+box"}),
    "point and box attack with the evaluation's own prompts, APGD": ("mask", {"craft_with": "point+box", "generator": "apgd"}),
    # the pool without the background's large segments, which the mask term can empty without touching an object
    "cross-prompt, grid 8, segments up to 30 % of the image": ("cross-prompt", {"grid": 8, "max_area": 0.3}),
    "cross-prompt, grid 8, segments up to 10 % of the image": ("cross-prompt", {"grid": 8, "max_area": 0.1}),
    "cross-prompt, grid 8, segments off the image border": ("cross-prompt", {"grid": 8, "interior_only": True}),
    "cross-prompt, grid 8, APGD": ("cross-prompt", {"grid": 8, "generator": "apgd"}),
}


def scene_sets(n: int, split: str = "diagnosis") -> dict[str, list]:
    if split == "test":
        return {"test": test_scenes(n), "independent (reported seeds)": independent_scenes(n)}
    return {"validation": validation_scenes(n),
            "independent (diagnosis seeds)": [shapes_scene(SHAPES_SEED_START + DIAGNOSIS_OFFSET + i) for i in range(n)]}


def pool_recall(engine, scene, masks: np.ndarray, grid: int) -> tuple[float, int]:
    features = engine.embed(image_to_tensor(scene.image))
    pool = sample_prompt_pool(engine, features, grid=grid)
    gt = torch.as_tensor(masks)
    best = torch.stack([batch_iou(torch.as_tensor(seg)[None].expand_as(gt), gt) for seg in pool.segments], 1)
    return float((best.max(1).values >= 0.5).float().mean()), len(pool.segments)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    out: dict = {"command": "python scripts/cross_prompt_diagnosis.py " + " ".join(args.argv), "eps255": args.eps,
                 "steps": args.steps, "split": args.split, "models": {}}
    sets = scene_sets(args.scenes, args.split)
    variants = {name: v for i, (name, v) in enumerate(VARIANTS.items())
                if not args.variants or str(i) in args.variants.split(",")}
    for model in args.models.split(","):
        engine = load_engine(model)
        result: dict = {}
        for set_name, scenes in sets.items():
            clean = {"point": [], "box": []}
            adv = {name: {"point": [], "box": []} for name in variants}
            recall = {4: [], 8: [], 16: []}
            pool_size = {4: [], 8: [], 16: []}
            start = time.time()
            for index, scene in enumerate(scenes):
                masks = np.asarray(scene.masks[:args.max_instances])
                objects = [prompts_from_mask(m) for m in masks]
                gt = torch.as_tensor(masks)
                image = image_to_tensor(scene.image)
                for kind, predicted in predict_types(engine, image, objects, ("point", "box")).items():
                    clean[kind] += batch_iou(predicted, gt).tolist()
                for grid in recall:
                    r, size = pool_recall(engine, scene, masks, grid)
                    recall[grid].append(r)
                    pool_size[grid].append(size)
                for name, (attack, options) in variants.items():
                    options = dict(options)
                    craft_with = options.pop("craft_with", "box")
                    request = AttackRequest(attack=attack, eps255=args.eps, steps=args.steps, seed=index,
                                            generator=options.pop("generator", "pgd"), options=options)
                    craft_prompts = [o[kind] for kind in craft_with.split("+") for o in objects]
                    adv_image = craft(request, engine, image, [craft_prompts]).adv_images
                    for kind, predicted in predict_types(engine, adv_image, objects, ("point", "box")).items():
                        adv[name][kind] += batch_iou(predicted, gt).tolist()
            clean_miou = {k: float(np.mean(v)) for k, v in clean.items()}
            result[set_name] = {
                "scenes": len(scenes), "instances": len(clean["box"]), "clean_miou": clean_miou,
                "pool_recall": {str(g): float(np.mean(v)) for g, v in recall.items()},
                "pool_segments": {str(g): float(np.mean(v)) for g, v in pool_size.items()},
                "variants": {name: {k: {"miou": float(np.mean(v)), "ratio": float(np.mean(v)) / max(clean_miou[k], 1e-9)}
                                    for k, v in per.items()} for name, per in adv.items()},
                "minutes": round((time.time() - start) / 60, 1)}
            print(model, set_name, json.dumps(result[set_name]["variants"], indent=None)[:2000], flush=True)
        out["models"][model] = result
    return out


def main(argv=None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="sam-small,sam2-small")
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--max-instances", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=8.0)
    parser.add_argument("--variants", default="", help="comma-separated indices into VARIANTS (default: all)")
    parser.add_argument("--split", choices=("diagnosis", "test"), default="diagnosis",
                        help="diagnosis: validation + independent diagnosis seeds (choosing); test: reporting once")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/results/cross-prompt-diagnosis"))
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "diagnosis.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'diagnosis.json'}")


if __name__ == "__main__":
    main()
