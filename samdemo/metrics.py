"""Mask and perturbation metrics. Masks are bool arrays/tensors of the same shape; IoU of two empty masks is 1."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PerturbationNorms:
    """Size of ``adversarial - clean`` for two H x W x 3 uint8 images, in 8-bit levels.

    linf255: max |delta| (levels, 0..255). l2_255: Euclidean norm of delta over all H*W*3 values
    (levels). rms255: l2 / sqrt(H*W*3). psnr_db: 20 log10(255 / rms), inf for identical images.
    """

    linf255: int
    l2_255: float
    rms255: float
    psnr_db: float


def perturbation_norms(clean: np.ndarray, adversarial: np.ndarray) -> PerturbationNorms:
    """L-inf, L2 and PSNR of the perturbation between two H x W x 3 uint8 images."""
    if clean.shape != adversarial.shape:
        raise ValueError(f"image shapes differ: {clean.shape} vs {adversarial.shape}")
    if clean.dtype != np.uint8 or adversarial.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {clean.dtype} and {adversarial.dtype}")
    delta = adversarial.astype(np.float64) - clean.astype(np.float64)
    l2 = float(np.sqrt(np.square(delta).sum()))
    rms = l2 / math.sqrt(max(delta.size, 1))
    psnr = math.inf if rms == 0 else 20 * math.log10(255.0 / rms)
    return PerturbationNorms(int(np.abs(delta).max()) if delta.size else 0, l2, rms, psnr)


def _as_bool(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)
