"""Segmentation losses of SAM's training recipe, shared by base-model and adapter training.

All take logits and targets of the same shape ``... x H x W`` (targets in [0, 1], soft targets
allowed) and return one value per mask (shape ``...``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over the last two dims: ... x H x W -> ..."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid().flatten(-2)
    target = target.flatten(-2)
    return 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)


def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded prediction (logits > 0) with the target (>= 0.5); 0 when both are empty."""
    pred = (logits > 0).float().flatten(-2)
    target = (target >= 0.5).float().flatten(-2)
    inter = (pred * target).sum(-1)
    union = ((pred + target) > 0).float().sum(-1)
    return inter / union.clamp(min=1)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAM's mask loss: 20 x focal + dice, per mask."""
    return 20 * focal_loss(logits, target) + dice_loss(logits, target)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
    """Per mask: 20 focal + dice + MSE(IoU head, true IoU). logits/target ... x H x W, iou_pred ..."""
    return mask_loss(logits, target) + (iou_pred - hard_iou(logits.detach(), target)) ** 2


def low_res_target(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x H x W {0,1} masks -> N x h x w soft targets: the fraction of each low-res cell covered.

    Comparing the decoder's low-resolution logits (4x below the input) with this target costs
    16x fewer pixels than upsampling the logits to the image, in the forward and backward pass."""
    return F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0]
