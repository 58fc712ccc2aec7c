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
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from samdemo.attacks import ATTACKS
from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.metrics import batch_iou
from samdemo.pipeline import AttackRequest, craft, predict_types
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


@dataclass
class TransferMatrix:
    """Rows: attack labels; cols: evaluation prompt types. Arrays are rows x cols mean IoUs over the
    image's N objects; ``per_object_*`` keep the N values (rows x cols x N) for pooling over images;
    ``*_vs_gt`` are None without ground truth."""

    rows: list[str]
    cols: list[str]
    iou_vs_clean: np.ndarray
    iou_vs_gt: np.ndarray | None
    clean_vs_gt: np.ndarray | None  # cols: the clean predictions against the ground truth
    per_object_vs_clean: np.ndarray
    per_object_vs_gt: np.ndarray | None
    clean_per_object_vs_gt: np.ndarray | None  # cols x N
    seconds: dict[str, float]  # per row
    objects: int
    adv_images: dict[str, np.ndarray]  # row -> uint8 image (only with ``keep_images``)
    request: AttackRequest
    engine: str
    eval_engine: str


def transfer_matrix(engine: SegmentEngine, image: np.ndarray, gt_masks: np.ndarray | None = None,
                    prompts: Sequence[Prompt] | None = None, attacks: Sequence[str] = DEFAULT_ATTACKS,
                    request: AttackRequest = AttackRequest(), eval_engine: SegmentEngine | None = None,
                    attack_options: dict[str, dict] | None = None, craft_types: Sequence[str] = EVAL_TYPES,
                    eval_types: Sequence[str] = EVAL_TYPES, progress: Callable[[str, int, int], None] | None = None,
                    cancel: threading.Event | None = None, keep_images: bool = False) -> TransferMatrix:
    """Transfer matrix of one H x W x 3 uint8 image: every row's attack is ``request`` with that attack
    (and its ``attack_options``), crafted on ``engine`` and evaluated on ``eval_engine`` (default the
    same). ``progress(row, t, T)`` reports each attack's steps."""
    eval_engine = eval_engine or engine
    attack_options = attack_options or {}
    rows = attack_rows(attacks, craft_types)
    objects, masks = object_prompts(eval_engine, image, gt_masks, prompts)
    x = image_to_tensor(image)
    gt = torch.as_tensor(masks) if gt_masks is not None else None
    clean_pred = predict_types(eval_engine, x, objects, eval_types)

    n = len(objects)
    vs_clean = np.zeros((len(rows), len(eval_types), n))
    vs_gt = np.zeros((len(rows), len(eval_types), n)) if gt is not None else None
    seconds, adv_images = {}, {}
    for r, (label, name, craft_type) in enumerate(rows):
        callback = (lambda t, total, label=label: progress(label, t, total)) if progress else None
        row_request = request.with_(attack=name, options=attack_options.get(name, {}))
        result = craft(row_request, engine, x, [o[craft_type] for o in objects] if craft_type else None,
                       callback, cancel)
        seconds[label] = result.seconds
        adv_pred = predict_types(eval_engine, result.adv_images, objects, eval_types)
        for c, t in enumerate(eval_types):
            vs_clean[r, c] = batch_iou(adv_pred[t], clean_pred[t]).numpy()
            if gt is not None:
                vs_gt[r, c] = batch_iou(adv_pred[t], gt).numpy()
        if keep_images:
            adv_images[label] = result.to_uint8()

    clean_per_object = np.stack([batch_iou(clean_pred[t], gt).numpy() for t in eval_types]) if gt is not None else None
    return TransferMatrix(
        rows=[label for label, _, _ in rows], cols=list(eval_types), iou_vs_clean=vs_clean.mean(2),
        iou_vs_gt=vs_gt.mean(2) if vs_gt is not None else None,
        clean_vs_gt=clean_per_object.mean(1) if clean_per_object is not None else None,
        per_object_vs_clean=vs_clean, per_object_vs_gt=vs_gt, clean_per_object_vs_gt=clean_per_object,
        seconds=seconds, objects=n, adv_images=adv_images, request=request, engine=engine.name,
        eval_engine=eval_engine.name)


def format_matrix(result: TransferMatrix, key: str = "iou_vs_gt") -> str:
    """A plain-text table of one matrix of :func:`transfer_matrix` (for the CLI and logs)."""
    matrix = getattr(result, key)
    if matrix is None:
        return f"({key}: no ground truth)"
    width = max(len(r) for r in result.rows + ["crafted \\ eval", "clean"]) + 2
    lines = ["crafted \\ eval".ljust(width) + "".join(c.rjust(8) for c in result.cols)]
    if key == "iou_vs_gt" and result.clean_vs_gt is not None:
        lines.append("clean".ljust(width) + "".join(f"{v:8.3f}" for v in result.clean_vs_gt))
    for label, row in zip(result.rows, matrix):
        lines.append(label.ljust(width) + "".join(f"{v:8.3f}" for v in row))
    return "\n".join(lines)
