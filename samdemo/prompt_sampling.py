"""Random prompts drawn from ground-truth masks, for training (SAM's interactive recipe).

Masks are H x W bool in the image frame; points are (x, y) pixel coordinates, boxes
(x0, y0, x1, y1) in the same frame.
"""

from __future__ import annotations

import cv2
import numpy as np


def jittered_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The tight box with each side moved by N(0, 0.1 x side), clipped at 0.2 x side."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
    box = box + np.clip(rng.normal(0, 0.1, 4) * side, -0.2 * side, 0.2 * side)
    h, w = mask.shape
    box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
    box[2], box[3] = max(box[2], box[0] + 2), max(box[3], box[1] + 2)
    return box.astype(np.float32)


def random_point(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pixel of ``region`` drawn uniformly, as (x, y) float32."""
    ys, xs = np.nonzero(region)
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], np.float32)


def corrective_click(pred: np.ndarray, gt: np.ndarray, rng) -> tuple[np.ndarray, int]:
    """A click in the largest error region: positive in a miss, negative in a false positive.

    Without any error: a positive click inside ``gt``, or, for an empty ``gt``, a negative one
    anywhere."""
    miss, extra = gt & ~pred, pred & ~gt
    region, label = (miss, 1) if miss.sum() >= extra.sum() else (extra, 0)
    if not region.any():
        return (random_point(gt, rng), 1) if gt.any() else (random_point(np.ones_like(gt), rng), 0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return random_point(labels == largest, rng), label


def coarse_mask(mask: np.ndarray, rng) -> np.ndarray:
    """A degraded copy of ``mask`` as a mask prompt, so that the model must find the boundary in
    the image rather than copy it: half the time blocky (area-downsampled to 8 to 16 cells a side
    and thresholded at a random level), otherwise eroded or dilated by 1 to 3 px."""
    h, w = mask.shape
    if rng.random() < 0.5:
        cells = int(rng.integers(8, 17))
        small = cv2.resize(mask.astype(np.float32), (cells, cells), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) > rng.uniform(0.3, 0.7)
    else:
        k = int(rng.integers(1, 4))
        kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
        op = cv2.erode if rng.random() < 0.5 else cv2.dilate
        out = op(mask.astype(np.uint8), kernel).astype(bool)
    return out if out.any() else mask


def featureless_image(rng, size: int) -> np.ndarray:
    """A size x size x 3 uint8 image with nothing to segment: one colour or a smooth blend of two,
    with faint noise. Trained with empty targets, it teaches that a mask needs an object."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if rng.random() < 0.5:
        b = a
    t = np.linspace(0, 1, size, dtype=np.float32)
    ramp = t[None, :] if rng.random() < 0.5 else t[:, None]
    image = a + (b - a) * ramp[..., None] + rng.normal(0, rng.uniform(0, 3), (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)
