"""One user's image and prompts, without gradio.

Coordinates: prompts live in the original image frame (``samdemo.prompts``). The app shows small
images upscaled by an integer factor (:func:`display_scale`) so that the prompts can be drawn
crisply; clicks come back in the displayed frame and are mapped back with that factor
(:func:`to_image_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from samdemo import limits
from samdemo.app.models import TrainedAdapter
from samdemo.errors import PromptError, UserError
from samdemo.prompts import Prompt

DISPLAY_SIDE = 512  # small images are shown upscaled by an integer factor to about this size
MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX, MODE_MASK = "positive point", "negative point", "box (2 clicks)", "mask (paint)"
PROMPT_MODES = [MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX, MODE_MASK]


def normalize_image(image) -> tuple[np.ndarray, str]:
    """An upload -> H x W x 3 uint8 of at most ``limits.MAX_SIDE`` px, and a note for the user ("" when
    nothing was changed). ``image``: a file path (what the canvas hands over: it is decoded here, within
    the limits, see :func:`samdemo.limits.read_image`) or an array of any layout (:func:`samdemo.limits.to_rgb8`)."""
    if image is None:
        raise UserError("Upload or paste an image first, or pick one of the examples.")
    if isinstance(image, (str, Path)):
        return limits.read_image(image)[:2]
    return limits.to_rgb8(image)


def display_scale(hw: tuple[int, int]) -> int:
    """Integer upscaling factor used to show an H x W image (1 for images of 512 px and more)."""
    return int(max(1, min(4, DISPLAY_SIDE // max(hw))))


def upscale(image: np.ndarray, s: int) -> np.ndarray:
    if s == 1:
        return image.copy()
    return cv2.resize(image, (image.shape[1] * s, image.shape[0] * s), interpolation=cv2.INTER_NEAREST)


def to_image_frame(px: float, py: float, hw: tuple[int, int]) -> tuple[float, float]:
    """A click in the displayed (upscaled) frame -> a point in the original image frame."""
    s = display_scale(hw)
    h, w = hw
    x = (float(px) + 0.5) / s - 0.5
    y = (float(py) + 0.5) / s - 0.5
    return float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))



@dataclass(frozen=True)
class PromptState:
    """The user's prompts on one image, in the original image frame. Immutable: edits return a new one."""

    points: tuple[tuple[float, float, int], ...] = ()  # (x, y, label 1/0)
    box: tuple[float, float, float, float] | None = None
    corner: tuple[float, float] | None = None  # the first corner of a box awaiting its second click
    mask: np.ndarray | None = field(default=None, compare=False)  # painted mask prompt, H x W bool
    ground_truth: np.ndarray | None = field(default=None, compare=False)  # painted ground truth

    @property
    def has_prompt(self) -> bool:
        return bool(self.points) or self.box is not None or self.mask is not None

    @property
    def is_empty(self) -> bool:
        return not self.has_prompt and self.corner is None and self.ground_truth is None

    def to_prompt(self) -> Prompt:
        """The one SAM prompt combining all of the user's points, box and painted mask."""
        if not self.has_prompt:
            raise PromptError("No prompt yet: click the object (positive point), drag a box with two clicks, "
                              "or paint a mask.")
        points = np.array([(x, y) for x, y, _ in self.points], np.float32).reshape(-1, 2)
        labels = np.array([label for _, _, label in self.points], np.int64)
        box = None if self.box is None else np.array(self.box, np.float32)
        return Prompt(points=points, labels=labels, box=box, mask=self.mask)

    def describe(self) -> str:
        parts = []
        pos = sum(1 for p in self.points if p[2] == 1)
        neg = len(self.points) - pos
        if pos:
            parts.append(f"{pos} positive point{'s' * (pos > 1)}")
        if neg:
            parts.append(f"{neg} negative point{'s' * (neg > 1)}")
        if self.box is not None:
            parts.append("a box")
        if self.corner is not None:
            parts.append("a box corner (click the opposite corner)")
        if self.mask is not None:
            parts.append("a painted mask")
        if self.ground_truth is not None:
            parts.append("a painted ground truth")
        return ", ".join(parts) if parts else "no prompt"


@dataclass
class Session:
    """One user's state (kept in ``gr.State``, so no user sees another's)."""

    image: np.ndarray | None = None
    image_name: str = ""
    prompts: PromptState = field(default_factory=PromptState)
    history: list[PromptState] = field(default_factory=list)  # for undo
    clean_mask: np.ndarray | None = None  # last clean mask of the original model (for the canvas)
    trained: TrainedAdapter | None = None  # the adapter this session trained (its robust model's choice)

    def require_image(self) -> np.ndarray:
        if self.image is None:
            raise UserError("Upload or paste an image first, or pick one of the examples.")
        return self.image

    def push(self, new: PromptState) -> None:
        """Make ``new`` the current prompts, keeping the old ones for undo within the session's bounds
        (``limits.UNDO_STEPS`` entries, ``limits.SESSION_MB`` of painted masks): oldest dropped first."""
        self.history.append(self.prompts)
        del self.history[:-limits.UNDO_STEPS]
        self.prompts = new
        self.clean_mask = None
        while self.history and self.painted_bytes() > limits.SESSION_MB * 2**20:
            del self.history[0]

    def painted_bytes(self) -> int:
        """Bytes of the painted masks this session holds (an array shared by several states counts once)."""
        arrays = {id(a): a for state in (self.prompts, *self.history) for a in (state.mask, state.ground_truth)
                  if a is not None}
        return sum(a.nbytes for a in arrays.values())


def set_image(session: Session, image, name: str = "upload") -> str:
    """Load a new image into the session, dropping its prompts. Returns a note ("" or a resize note)."""
    image, note = normalize_image(image)
    session.image, session.image_name = image, name
    session.prompts, session.history, session.clean_mask = PromptState(), [], None
    return note


def add_click(session: Session, mode: str, x: float, y: float) -> str:
    """Apply one click at (x, y) (original image frame) in ``mode``. Returns what it did."""
    image = session.require_image()
    h, w = image.shape[:2]
    x, y = click_coordinate(x), click_coordinate(y)
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        raise UserError(f"The click ({x:.0f}, {y:.0f}) is outside the {w}x{h} image.")
    state = session.prompts
    if mode in (MODE_POSITIVE, MODE_NEGATIVE):
        label = int(mode == MODE_POSITIVE)
        session.push(replace(state, points=state.points + ((float(x), float(y), label),)))
        return f"Added a {'positive' if label else 'negative'} point at ({x:.0f}, {y:.0f})."
    if mode == MODE_BOX:
        if state.corner is None:
            session.push(replace(state, corner=(float(x), float(y))))
            return f"Box corner at ({x:.0f}, {y:.0f}): now click the opposite corner."
        (x0, y0), (x1, y1) = state.corner, (float(x), float(y))
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            raise UserError("That box is too thin: click a second corner at least 2 px away in both directions.")
        session.push(replace(state, box=box, corner=None))
        return "Box set" + (" (it replaces the previous box)." if state.box is not None else ".")
    if mode == MODE_MASK:
        raise UserError("In mask mode, paint in the 'Paint a mask' tab and press 'Use as mask prompt'.")
    raise UserError(f"Unknown prompt mode {limits.quoted(mode)}.")


def click_coordinate(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise UserError(f"A click needs two finite pixel coordinates (got {limits.quoted(value)}).")
    return number


def painted_mask(editor_value, hw: tuple[int, int]) -> np.ndarray:
    """The union of the painted strokes of a ``gr.ImageEditor`` value, as an H x W bool mask."""
    if not editor_value:
        raise UserError("Nothing painted: paint over the object in the 'Paint a mask' tab first.")
    layers = editor_value.get("layers") if isinstance(editor_value, dict) else None
    alpha, without_alpha = None, 0
    for layer in layers or []:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] < 4:
            without_alpha += 1
            continue
        a = layer[..., 3].astype(np.float32) / 255.0
        alpha = a if alpha is None or alpha.shape != a.shape else np.maximum(alpha, a)
    if alpha is None and without_alpha:  # sent through the API: the strokes are a layer's opaque pixels
        raise UserError("A painted layer must be an RGBA image whose opaque pixels are the strokes; the layer "
                        "sent has no transparency channel.")
    if alpha is None or not (alpha > 0).any():
        raise UserError("Nothing painted: paint over the object in the 'Paint a mask' tab first.")
    h, w = hw
    if alpha.shape != (h, w):
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA)
    mask = alpha >= 0.5
    if not mask.any():
        raise UserError("The painted strokes are too thin at the image's resolution: paint a larger area.")
    return mask


def set_painted(session: Session, mask: np.ndarray, as_ground_truth: bool) -> str:
    image = session.require_image()
    if mask.shape != image.shape[:2]:
        raise UserError(f"The painted mask is {mask.shape[1]}x{mask.shape[0]}, the image {image.shape[1]}x{image.shape[0]}.")
    key = "ground_truth" if as_ground_truth else "mask"
    session.push(replace(session.prompts, **{key: mask.copy()}))
    what = "ground truth (results are scored against it)" if as_ground_truth else "mask prompt"
    return f"Painted {what} set: {int(mask.sum())} px."


def undo(session: Session) -> str:
    if not session.history:
        return "Nothing to undo."
    session.prompts = session.history.pop()
    session.clean_mask = None
    return "Undid the last prompt."


def clear_prompts(session: Session) -> str:
    if session.prompts.is_empty:
        return "No prompts to clear."
    session.push(PromptState())
    return "Cleared all prompts (undo brings them back)."
