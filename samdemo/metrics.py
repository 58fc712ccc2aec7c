"""Mask metrics. Masks are bool arrays/tensors of the same shape; IoU of two empty masks is 1."""

from __future__ import annotations

import numpy as np
import torch

# An attack succeeds on an instance when the IoU of the adversarial mask with the clean one falls
# below this (the app's "fooled" column and evaluate's attack success rate).
ATTACK_SUCCESS_IOU = 0.5


def mask_iou(pred, target) -> float:
    """Intersection over union of two H x W bool masks (1.0 when both are empty)."""
    pred, target = _as_bool(pred), _as_bool(target)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, target).sum() / union)


def batch_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU per mask of P x H x W bool tensors -> P floats (1.0 where both are empty)."""
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    inter = (pred & target).sum(1).float()
    union = (pred | target).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mean_iou(ious) -> float:
    ious = np.asarray(list(ious), dtype=np.float64)
    if ious.size == 0:
        raise ValueError("mean IoU of no masks")
    return float(ious.mean())


def _as_bool(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)
