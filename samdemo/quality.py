"""Held-out segmentation quality of an engine: mIoU per prompt type on scenes with ground truth."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.metrics import batch_iou
from samdemo.prompts import PROMPT_TYPES, prompts_from_mask



@torch.no_grad()
def prompt_quality(engine: SegmentEngine, scenes: Iterable, max_instances: int | None = None) -> dict[str, float]:
    """mIoU against ground truth over every instance of every scene.

    Prompts per instance (``prompts.prompts_from_mask``): the center-most positive point
    (SAM's rule picks one of its three masks: "point"; the best of the three against ground
    truth: "point_best3", an oracle upper bound), the tight box ("box"), the mask itself ("mask").
    """
    ious: dict[str, list[float]] = {"point": [], "point_best3": [], "box": [], "mask": []}
    for scene in scenes:
        features = engine.embed(image_to_tensor(scene.image))
        masks = scene.masks[:max_instances] if max_instances else scene.masks
        per_type = [prompts_from_mask(m) for m in masks]
        gt = torch.as_tensor(np.asarray(masks), device=engine.device)
        for kind in PROMPT_TYPES:
            prediction = engine.decode(features, [p[kind] for p in per_type], validate=False)
            ious[kind] += batch_iou(prediction.masks, gt).tolist()
            if kind == "point":
                all_masks = engine.postprocess(prediction.low_res_all[:, 1:], features.orig_hw, features.input_hw) > 0
                best = torch.stack([batch_iou(all_masks[:, k], gt) for k in range(3)], 1).max(1).values
                ious["point_best3"] += best.tolist()
    return {kind: float(np.mean(values)) for kind, values in ious.items()} | {"instances": len(ious["box"])}


IMAGE_VARIANTS = ("image", "grey", "shuffled")


def image_variant(scene, variant: str, seed: int = 0):
    """The scene with its image replaced, masks unchanged: what the model gets without the pixels.

    * ``image``: unchanged;
    * ``grey``: a uniform mid-grey image (128), so prompts are all there is;
    * ``shuffled``: the pixels inside the union of the objects permuted among themselves, the
      background untouched: the objects' colours stay, their shapes and inner boundaries go.
    """
    if variant == "image":
        return scene
    image = scene.image.copy()
    if variant == "grey":
        image[:] = 128
    elif variant == "shuffled":
        inside = np.asarray(scene.masks).any(0)
        pixels = image[inside]
        image[inside] = pixels[np.random.default_rng(seed).permutation(len(pixels))]
    else:
        raise ValueError(f"unknown image variant {variant!r}; choose from {IMAGE_VARIANTS}")
    return replace(scene, image=image)


def image_dependence(engine: SegmentEngine, scenes: list, variants: Iterable[str] = IMAGE_VARIANTS,
                     max_instances: int | None = None) -> dict[str, dict[str, float]]:
    """``prompt_quality`` of the same prompts on each image variant: variant -> prompt type -> mIoU.

    A model that segments what it sees loses most of its mIoU on ``grey``; one that draws a
    shape from the prompt alone keeps it."""
    return {variant: prompt_quality(engine, [image_variant(s, variant, seed=i) for i, s in enumerate(scenes)],
                                    max_instances)
            for variant in variants}


def photo_quality(engine: SegmentEngine, assets: Path) -> dict[str, dict[str, float]]:
    """IoU on the bundled photos against their reference masks (``assets/masks/index.json``):
    photo -> {"box": IoU of the tight box's mask, "point": IoU of the center-most point's}."""
    index = json.loads((assets / "masks" / "index.json").read_text())
    results = {}
    for name, entry in index.items():
        image = np.array(Image.open(assets / f"{name}.png").convert("RGB"))
        reference = np.asarray(Image.open(assets / entry["mask"])) > 0
        prompts = prompts_from_mask(reference)
        prediction = engine.predict(image, [prompts["box"], prompts["point"]])
        ious = batch_iou(prediction.masks, torch.as_tensor(np.stack([reference] * 2), device=engine.device))
        results[name] = {"box": round(float(ious[0]), 4), "point": round(float(ious[1]), 4)}
    return results
