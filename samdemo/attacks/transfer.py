"""Cross-prompt transfer matrices: craft with prompt type A, evaluate with prompt type B.

Rows ("crafted with"): every prompt-free attack once (``cross-prompt``, ``feature``,
``random``), and every prompt-specific attack (``mask``) once per crafting type A, labelled
``mask@point``, ``mask@box``, ``mask@mask``. Columns ("evaluated with"): point, box, mask.
Each cell is the mean IoU, over the image's objects, of the mask predicted on the adversarial
image with a prompt of type B against (a) the clean prediction with the same prompt and (b) the
ground truth when it is given.

Objects: the ground-truth masks when given, else the clean prediction for the user's prompts
(or for the image centre), and their standard prompts (``prompts.prompts_from_mask``): the
centre-most point, the tight box, the mask itself. Crafting uses ``engine``; evaluation uses
``eval_engine`` (default the same): a different eval engine measures transfer between models,
a defended crafting engine an adaptive attack.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np
import torch

from samdemo.attacks import ATTACKS, AttackResult, make_attack
from samdemo.attacks.base import DEFAULT_EPS, DEFAULT_STEPS
from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.metrics import batch_iou
from samdemo.prompts import Prompt, point_prompt, prompts_from_mask

EVAL_TYPES = ("point", "box", "mask")
DEFAULT_ATTACKS = ("cross-prompt", "mask", "feature", "random")


def object_prompts(engine: SegmentEngine, image: np.ndarray, gt_masks: np.ndarray | None = None,
                   prompts: Sequence[Prompt] | None = None) -> tuple[list[dict[str, Prompt]], np.ndarray]:
    """(per-object {point, box, mask} prompts, N x H x W object masks).

    Ground truth when given; else each user prompt's clean mask; else the clean mask of the
    image-centre point. An object whose mask is empty is dropped (ValueError if none is left).
    """
    if gt_masks is not None:
        masks = np.asarray(gt_masks, dtype=bool).reshape(-1, *image.shape[:2])
    else:
        h, w = image.shape[:2]
        prompts = list(prompts) if prompts else [point_prompt(w / 2, h / 2)]
        masks = engine.predict(image, prompts).masks.cpu().numpy()
    masks = np.stack([m for m in masks if m.any()]) if any(m.any() for m in masks) else masks[:0]
    if len(masks) == 0:
        raise ValueError("No object to evaluate: the masks (ground truth or the clean prediction) are empty.")
    return [prompts_from_mask(m) for m in masks], masks


@torch.no_grad()
def predict_types(engine: SegmentEngine, image: torch.Tensor, objects: list[dict[str, Prompt]],
                  types: Sequence[str] = EVAL_TYPES) -> dict[str, torch.Tensor]:
    """{type: N x H x W bool} masks predicted on a 1 x 3 x H x W image for every object's prompt."""
    features = engine.embed(image)
    return {t: engine.decode(features, [o[t] for o in objects], validate=False).masks.cpu() for t in types}


def attack_rows(attacks: Sequence[str], craft_types: Sequence[str] = EVAL_TYPES) -> list[tuple[str, str, str | None]]:
    """Rows of a transfer matrix: (label, attack, crafting prompt type or None for prompt-free attacks).

    A prompt-free attack is one row; a prompt-specific one a row per crafting type, ``mask@box``.
    """
    rows: list[tuple[str, str, str | None]] = []
    for name in attacks:
        if name not in ATTACKS:
            raise ValueError(f"Unknown attack {name!r}; choose among {', '.join(ATTACKS)}.")
        if ATTACKS[name].uses_prompts:
            rows += [(f"{name}@{t}", name, t) for t in craft_types]
        else:
            rows.append((name, name, None))
    return rows


def craft_attack(engine: SegmentEngine, image: torch.Tensor, objects: list[dict[str, Prompt]], attack: str,
                 craft_type: str | None, **kwargs) -> AttackResult:
    """Run ``attack`` against ``engine`` on a 1 x 3 x H x W image; a prompt-specific attack is crafted with
    every object's ``craft_type`` prompt. ``kwargs`` go to :func:`make_attack` (eps, steps, seed...)."""
    return make_attack(attack, engine, **kwargs)(image, [o[craft_type] for o in objects] if craft_type else None)


def transfer_matrix(engine: SegmentEngine, image: np.ndarray, gt_masks: np.ndarray | None = None,
                    prompts: Sequence[Prompt] | None = None, attacks: Sequence[str] = DEFAULT_ATTACKS,
                    eps: float = DEFAULT_EPS, steps: int = DEFAULT_STEPS, generator: str = "pgd", seed: int = 0,
                    eval_engine: SegmentEngine | None = None, attack_kwargs: dict[str, dict] | None = None,
                    craft_types: Sequence[str] = EVAL_TYPES, eval_types: Sequence[str] = EVAL_TYPES,
                    progress: Callable[[str, int, int], None] | None = None,
                    cancel: threading.Event | None = None, keep_images: bool = False) -> dict:
    """Transfer matrix of one H x W x 3 uint8 image.

    Returns a dict: ``rows`` (attack labels), ``cols`` (evaluation types), ``iou_vs_clean`` and
    ``iou_vs_gt`` (rows x cols arrays of mean IoU; the latter None without ground truth),
    ``clean_vs_gt`` (cols, or None), ``per_object_vs_clean`` / ``per_object_vs_gt``
    (rows x cols x N arrays, for pooling over many images), ``clean_per_object_vs_gt``
    (cols x N), ``seconds`` (per row), ``objects`` (N), ``adv_images`` (row -> uint8 image,
    only with ``keep_images``). ``progress(row, t, T)`` reports each attack's steps.
    """
    eval_engine = eval_engine or engine
    attack_kwargs = attack_kwargs or {}
    rows = attack_rows(attacks, craft_types)
    objects, masks = object_prompts(eval_engine, image, gt_masks, prompts)
    x = image_to_tensor(image)
    gt = torch.as_tensor(masks) if gt_masks is not None else None
    clean_pred = predict_types(eval_engine, x, objects, eval_types)

    n = len(objects)
    vs_clean = np.zeros((len(rows), len(eval_types), n))
    vs_gt = np.zeros((len(rows), len(eval_types), n)) if gt is not None else None
    seconds, adv_images = {}, {}
    for r, (label, name, craft) in enumerate(rows):
        callback = (lambda t, total, label=label: progress(label, t, total)) if progress else None
        result = craft_attack(engine, x, objects, name, craft, eps=eps, steps=steps, generator=generator, seed=seed,
                              progress=callback, cancel=cancel, **attack_kwargs.get(name, {}))
        seconds[label] = result.seconds
        adv_pred = predict_types(eval_engine, result.adv_images, objects, eval_types)
        for c, t in enumerate(eval_types):
            vs_clean[r, c] = batch_iou(adv_pred[t], clean_pred[t]).numpy()
            if gt is not None:
                vs_gt[r, c] = batch_iou(adv_pred[t], gt).numpy()
        if keep_images:
            adv_images[label] = result.to_uint8()

    clean_per_object = np.stack([batch_iou(clean_pred[t], gt).numpy() for t in eval_types]) if gt is not None else None
    return {
        "rows": [label for label, _, _ in rows],
        "cols": list(eval_types),
        "iou_vs_clean": vs_clean.mean(2),
        "iou_vs_gt": vs_gt.mean(2) if vs_gt is not None else None,
        "clean_vs_gt": clean_per_object.mean(1) if clean_per_object is not None else None,
        "per_object_vs_clean": vs_clean,
        "per_object_vs_gt": vs_gt,
        "clean_per_object_vs_gt": clean_per_object,
        "seconds": seconds,
        "objects": n,
        "adv_images": adv_images,
        "settings": {"eps": eps, "steps": steps, "generator": generator, "seed": seed, "engine": engine.name,
                     "eval_engine": eval_engine.name, "attack_kwargs": attack_kwargs},
    }


def format_matrix(result: dict, key: str = "iou_vs_gt") -> str:
    """A plain-text table of one matrix of :func:`transfer_matrix` (for the CLI and logs)."""
    matrix = result[key]
    if matrix is None:
        return f"({key}: no ground truth)"
    width = max(len(r) for r in result["rows"] + ["crafted \\ eval", "clean"]) + 2
    lines = ["crafted \\ eval".ljust(width) + "".join(c.rjust(8) for c in result["cols"])]
    if key == "iou_vs_gt" and result["clean_vs_gt"] is not None:
        lines.append("clean".ljust(width) + "".join(f"{v:8.3f}" for v in result["clean_vs_gt"]))
    for label, row in zip(result["rows"], matrix):
        lines.append(label.ljust(width) + "".join(f"{v:8.3f}" for v in row))
    return "\n".join(lines)
