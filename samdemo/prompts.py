"""Prompts in the original image's pixel frame, with validation.

Frames: a point is (x, y) in pixels of the original H x W image, x to the right, y down; the
pixel in column j, row i is the point (j, i) (SAM's prompt encoder itself shifts by +0.5 to the
pixel centre); a box is (x0, y0, x1, y1) in the same frame; a mask
prompt is an H x W bool array in the original frame (the engine converts it to the model's
low-resolution logits) or low-resolution logits ``1 x 4h x 4w`` taken from a previous decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from samdemo.errors import PromptError

PROMPT_TYPES = ("point", "box", "mask")  # SAM's prompt types, in the order tables show them
MASK_PROMPT_LOGIT = 10.0  # a bool mask prompt becomes +-10 logits, the scale of SAM's own outputs


@dataclass(frozen=True)
class Prompt:
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # N x 2 (x, y)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # N: 1 positive, 0 negative
    box: np.ndarray | None = None  # (x0, y0, x1, y1)
    mask: np.ndarray | None = None  # H x W bool, or 1 x 4h x 4w float low-res logits
    mask_is_logits: bool = False

    @property
    def kind(self) -> str:
        """'point', 'box', 'mask' or a '+'-joined combination, for tables and transfer matrices."""
        parts = [name for name, present in (("point", len(self.points) > 0), ("box", self.box is not None),
                                             ("mask", self.mask is not None)) if present]
        return "+".join(parts) if parts else "empty"

    @property
    def is_single_point(self) -> bool:
        """SAM's ambiguous case: one click alone, answered with three masks."""
        return len(self.points) == 1 and self.box is None and self.mask is None

    def validate(self, image_hw: tuple[int, int]) -> "Prompt":
        """Raise PromptError with a clear message if the prompt does not fit an H x W image."""
        h, w = image_hw
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2) if len(self.points) else np.zeros((0, 2))
        labels = np.asarray(self.labels).reshape(-1)
        if len(points) == 0 and self.box is None and self.mask is None:
            raise PromptError("Empty prompt: give at least one point, a box or a mask.")
        if len(points) != len(labels):
            raise PromptError(f"{len(points)} points but {len(labels)} labels.")
        if not np.all(np.isfinite(points)):
            raise PromptError("A point has a NaN or infinite coordinate.")
        for x, y in points:
            if not (0 <= x <= w and 0 <= y <= h):
                raise PromptError(f"Point ({x:.1f}, {y:.1f}) lies outside the {w}x{h} image.")
        if not np.isin(labels, (0, 1)).all():
            raise PromptError("Point labels must be 1 (positive) or 0 (negative).")
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape != (4,) or not np.all(np.isfinite(box)):
                raise PromptError("A box is four finite numbers (x0, y0, x1, y1).")
            x0, y0, x1, y1 = box
            if x1 < x0 or y1 < y0:
                raise PromptError(f"Inverted box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}): x1 must be >= x0 and y1 >= y0.")
            if x1 - x0 < 1 or y1 - y0 < 1:
                raise PromptError("The box has zero area: drag a box at least two pixels wide and high.")
            if x0 < -0.5 or y0 < -0.5 or x1 > w + 0.5 or y1 > h + 0.5:
                raise PromptError(f"Box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) extends outside the {w}x{h} image.")
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if self.mask_is_logits:
                if mask.ndim != 3 or mask.shape[0] != 1 or not np.all(np.isfinite(mask)):
                    raise PromptError("Mask logits must be a finite 1 x h x w array from a previous prediction.")
            else:
                if mask.shape != (h, w):
                    raise PromptError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}.")
                if not mask.any():
                    raise PromptError("The painted mask is empty: paint over the object first.")
        return self


def point_prompt(x: float, y: float, positive: bool = True) -> Prompt:
    return Prompt(points=np.array([[x, y]], np.float32), labels=np.array([int(positive)]))


def box_prompt(x0: float, y0: float, x1: float, y1: float) -> Prompt:
    return Prompt(box=np.array([x0, y0, x1, y1], np.float32))


def mask_prompt(mask: np.ndarray) -> Prompt:
    return Prompt(mask=np.asarray(mask, dtype=bool))


def prompts_from_mask(mask: np.ndarray) -> dict[str, Prompt]:
    """The standard evaluation prompts of one ground-truth instance (H x W bool).

    point: the instance pixel farthest from its boundary (the "center-most" point used by SAM
    evaluations); box: its tight bounding box; mask: the mask itself.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise PromptError("Cannot derive prompts from an empty mask.")
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    ys, xs = np.nonzero(mask)
    return {
        "point": point_prompt(x, y),
        "box": box_prompt(xs.min(), ys.min(), xs.max(), ys.max()),  # inclusive, as SAM's batched_mask_to_box
        "mask": mask_prompt(mask),
    }


def blocky_mask(mask: np.ndarray, cells: int = 12) -> np.ndarray:
    """A coarse H x W bool copy of ``mask``: area-averaged over a ``cells`` x ``cells`` grid, kept where
    half a cell is covered. As a mask prompt it says where the object is but not its boundary, so
    the answer must come from the image (the exact mask as a prompt is copied back by the decoder)."""
    import cv2

    h, w = mask.shape
    small = cv2.resize(np.asarray(mask, np.float32), (cells, cells), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) >= 0.5
    return coarse if coarse.any() else np.asarray(mask, bool).copy()


def is_finite_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
