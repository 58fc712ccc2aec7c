"""Everything behind the web app (``app.py`` only wires components to the handlers at the end).

Layers, each usable without a browser:

* prompt editing on an immutable :class:`PromptState` (points, a box by two clicks, a painted
  mask prompt, a painted ground truth) with undo, kept per user in a :class:`Session`;
* rendering with numpy / OpenCV: prompts and masks over the image, the 2 x 2 results grid,
  the amplified perturbation with its scale, the transfer heatmap (matplotlib);
* :class:`ModelManager`: engines for the original and the adapter-defended ("robust") model,
  loaded once per process and shared by all sessions (their embedding cache is thread-safe);
* computations: the clean mask of a prompt, an attack with the four predictions and the
  results table, the transfer matrix across prompt types;
* Gradio handlers (``on_*``): turn user input into these calls and errors into readable
  ``gr.Warning`` / ``gr.Error`` messages, so that the server keeps serving.

Limits (upload size, pixels, steps, ε, time per attack, Hub timeout) live in ``samdemo/limits.py``.

Coordinates: prompts live in the original image frame (``samdemo.prompts``). The app shows
small images upscaled by an integer factor (:func:`display_scale`) so that the prompts can be
drawn crisply; clicks come back in the displayed frame and are mapped back with that factor.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import asyncio
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import gradio as gr
import numpy as np

from samdemo import limits
from samdemo.build import CHECKPOINT_DIR, MODEL_REGISTRY, get_spec
from samdemo.errors import AttackCancelled, ModelUnavailableError, PromptError, UserError
from samdemo.engine import EmbeddingCache, Prediction, SegmentEngine, image_to_tensor, tensor_to_image
from samdemo.metrics import ATTACK_SUCCESS_IOU, mask_iou
from samdemo.prompts import Prompt

log = logging.getLogger("samdemo.app")

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
DISPLAY_SIDE = 512  # small images are shown upscaled by an integer factor to about this size

# Models offered in the picker: the embedded ones, SAM ViT-B/L/H and SAM 2.1 Hiera T/S/B+/L.
APP_MODELS = [name for name in MODEL_REGISTRY
              if name in ("sam-small", "sam2-small") or name.startswith(("sam-vit-", "sam2.1-hiera-"))]

MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX, MODE_MASK = "positive point", "negative point", "box (2 clicks)", "mask (paint)"
PROMPT_MODES = [MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX, MODE_MASK]

ATTACK_CHOICES = [  # (label, name in samdemo.attacks.ATTACKS)
    ("cross-prompt, ours (key-channel features + sampled-prompt mask term)", "cross-prompt"),
    ("key-channel, the paper's (key-channel feature loss only)", "key-channel"),
    ("single-prompt mask (breaks the mask of your prompt)", "mask"),
    ("full-feature (pushes the image embedding away)", "feature"),
    ("random noise of the same ε (baseline)", "random"),
]
GENERATOR_CHOICES = [("PGD", "pgd"), ("FGSM", "fgsm"), ("MI-FGSM", "mifgsm"), ("APGD", "apgd")]
TARGET_ORIGINAL, TARGET_ROBUST = "original", "robust"
TARGET_CHOICES = [("original model → transfer to the robust one", TARGET_ORIGINAL),
                  ("robust model (adaptive attack)", TARGET_ROBUST)]
ADAPTER_SHIPPED, ADAPTER_HUB, ADAPTER_NONE = "shipped", "hub", "none"
ADAPTER_CHOICES = [("shipped with samdemo", ADAPTER_SHIPPED), ("from the Hugging Face Hub", ADAPTER_HUB),
                   ("none", ADAPTER_NONE)]
DEFAULT_ATTACK = "cross-prompt"  # the mission's attack: crafted without the user's prompt
TRANSFER_ROWS = 6  # cross-prompt, mask@point, mask@box, mask@mask, feature, random
TABLE_HEADERS = ["model", "input", "IoU vs original clean", "IoU vs own clean", "IoU vs ground truth",
                 "attack success (own IoU < 0.5)", "predicted IoU"]

HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
HUB_REVISION_RE = re.compile(r"^[\w.-][\w./-]{0,99}$")

INTRO_MD = """# samdemo · adversarial robustness lab for Segment Anything
Click the image to prompt SAM, then attack it with an invisible perturbation and compare the
**original** model with the **robust** one (the same model with a small trained adapter).
"""
PROMPT_HELP_MD = """**Prompts:** pick a mode, then click the image. *Positive* points mark the object, *negative*
points what is not part of it, a *box* takes two clicks (opposite corners), a *mask* is painted
in the **Paint** tab (as a prompt, or as the ground truth the results are scored against).
Combine them freely; the clean mask (blue) updates after each click. On the image: green ⊕ positive,
red ⊖ negative, yellow box, cyan outline the painted mask prompt, pink dashes the ground truth."""
ATTACK_HELP_MD = """**ε** is the largest change the attacker may make to any pixel, per colour channel, in units of
1/255: 8/255 ≈ 3 % of the range, hard to see. **Target:** a *transfer* attack is crafted on the
original model only and then shown to the robust model, as an attacker who does not know the
defence would; an *adaptive* attack is crafted on the robust model itself, the honest test of a
defence. An attack *succeeds* on a model when its adversarial mask overlaps its clean mask with
IoU below 0.5."""


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Prompt state and session
# ---------------------------------------------------------------------------------------------

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
    x, y = _coordinate(x), _coordinate(y)
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


def _coordinate(value) -> float:
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
    alpha = None
    for layer in layers or []:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] < 4:
            continue
        a = layer[..., 3].astype(np.float32) / 255.0
        alpha = a if alpha is None or alpha.shape != a.shape else np.maximum(alpha, a)
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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

MASK_RGB = (30, 144, 255)
POS_RGB, NEG_RGB, BOX_RGB = (0, 200, 70), (235, 30, 30), (255, 215, 0)
PAINT_RGB, GT_RGB = (0, 230, 230), (255, 70, 200)


def _contours(mask: np.ndarray):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return contours


def render_overlay(image: np.ndarray, mask: np.ndarray | None = None, prompts: PromptState | None = None,
                   color=MASK_RGB, show_ground_truth: bool = True) -> np.ndarray:
    """The image (upscaled by ``display_scale``) with a mask (filled and outlined) and the prompts."""
    s = display_scale(image.shape[:2])
    out = upscale(image, s)
    side = max(out.shape[:2])
    line = max(2, round(side / 256))  # strokes and markers grow with the picture, which is shown ~500 px wide
    if mask is not None and mask.any():
        big = upscale(mask.astype(np.uint8), s).astype(bool)
        tinted = out.astype(np.float32)
        tinted[big] = tinted[big] * 0.5 + np.array(color, np.float32) * 0.5
        out = tinted.clip(0, 255).astype(np.uint8)
        contours = _contours(big)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), line)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, line // 2))
    if prompts is None:
        return out
    if prompts.mask is not None:
        for contour in _contours(upscale(prompts.mask.astype(np.uint8), s)):
            cv2.polylines(out, [contour], True, PAINT_RGB, line, lineType=cv2.LINE_AA)
    if show_ground_truth and prompts.ground_truth is not None:
        for contour in _contours(upscale(prompts.ground_truth.astype(np.uint8), s)):
            _dashed(out, contour, GT_RGB, line, dash=3 * line)

    def disp(x, y):
        return int(round((x + 0.5) * s - 0.5)), int(round((y + 0.5) * s - 0.5))

    r = max(7, round(side / 64))
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box
        cv2.rectangle(out, disp(x0, y0), disp(x1, y1), (0, 0, 0), line + 2, cv2.LINE_AA)
        cv2.rectangle(out, disp(x0, y0), disp(x1, y1), BOX_RGB, line, cv2.LINE_AA)
    if prompts.corner is not None:
        cx, cy = disp(*prompts.corner)
        cv2.drawMarker(out, (cx, cy), (0, 0, 0), cv2.MARKER_CROSS, 4 * r, line + 2, cv2.LINE_AA)
        cv2.drawMarker(out, (cx, cy), BOX_RGB, cv2.MARKER_CROSS, 4 * r, line, cv2.LINE_AA)
    for x, y, label in prompts.points:
        c = disp(x, y)
        cv2.circle(out, c, r + line, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, c, r, POS_RGB if label else NEG_RGB, -1, cv2.LINE_AA)
        arm = max(2, r - 3)
        cv2.line(out, (c[0] - arm, c[1]), (c[0] + arm, c[1]), (255, 255, 255), line, cv2.LINE_AA)
        if label:
            cv2.line(out, (c[0], c[1] - arm), (c[0], c[1] + arm), (255, 255, 255), line, cv2.LINE_AA)
    return out


def _dashed(out: np.ndarray, contour: np.ndarray, color, thickness: int, dash: int = 6) -> None:
    pts = contour[:, 0, :]
    for i in range(0, len(pts), 2 * dash):
        seg = pts[i:i + dash]
        if len(seg) > 1:
            cv2.polylines(out, [seg.reshape(-1, 1, 2)], False, color, thickness, cv2.LINE_AA)


def banner(image: np.ndarray, text: str, color=(255, 255, 255)) -> np.ndarray:
    """Write ``text`` on a dark strip along the bottom of an RGB image (a copy; the top-left corner
    is where the app shows the panel's label)."""
    out = image.copy()
    scale = max(0.5, out.shape[1] / 640)
    thick = 1 if scale < 0.7 else 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(4, th // 2)
    strip = min(out.shape[0], th + base + 2 * pad)
    out[-strip:] = (out[-strip:].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (pad, out.shape[0] - pad - base), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick,
                cv2.LINE_AA)
    return out


def perturbation_image(clean: np.ndarray, adversarial: np.ndarray, eps255: float) -> tuple[np.ndarray, str]:
    """The perturbation amplified so that ±ε spans black..white (grey = 0), with a scale bar.

    Returns the picture (upscaled like the other panels) and a caption with its scale and norms."""
    delta = adversarial.astype(np.int16) - clean.astype(np.int16)
    eps255 = max(float(eps255), 1e-6)
    gain = 127.5 / eps255
    vis = np.clip(127.5 + delta.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    s = display_scale(clean.shape[:2])
    vis = upscale(vis, s)
    width = vis.shape[1]
    bar_h = max(28, width // 14)
    bar = np.full((bar_h, width, 3), 255, np.uint8)
    grad_h = bar_h // 3
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    bar[:grad_h] = ramp[None, :, None]
    font_scale = max(0.4, width / 1100)
    for frac, text in ((0.0, f"-{eps255:g}/255"), (0.5, "0"), (1.0, f"+{eps255:g}/255")):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        x = int(np.clip(frac * width - tw / 2, 2, width - tw - 2))
        cv2.putText(bar, text, (x, grad_h + th + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    linf = int(np.abs(delta).max()) if delta.size else 0
    mean_abs = float(np.abs(delta).mean()) if delta.size else 0.0
    caption = (f"Perturbation amplified ×{gain:.0f}: mid-grey is no change, black / white is −ε / +ε "
               f"(ε = {eps255:g}/255). Measured: L∞ = {linf}/255, mean |δ| = {mean_abs:.2f}/255.")
    return np.concatenate([vis, bar], axis=0), caption


def transfer_figure(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str):
    """A matplotlib heatmap of IoU values (0..1), annotated, red = attack worked."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.float64)
    fig = Figure(figsize=(4.6, 3.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="RdYlGn", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), labels=list(cols))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel("prompt type used to evaluate")
    ax.set_ylabel("attack (@ prompt type used to craft it)")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            ax.text(j, i, "—" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center",
                    color="black", fontsize=11)
    fig.colorbar(im, ax=ax, label="IoU with the clean mask")
    ax.set_title(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# Models and adapters
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdapterChoice:
    """Which defence the "robust" model uses: the shipped adapter, a Hub repo at a revision, or none."""

    kind: str = ADAPTER_SHIPPED
    repo_id: str = ""
    revision: str = ""

    @classmethod
    def parse(cls, kind: str | None, repo_id: str | None = "", revision: str | None = "") -> "AdapterChoice":
        kind = (kind or ADAPTER_NONE).strip().lower()
        if kind not in (ADAPTER_SHIPPED, ADAPTER_HUB, ADAPTER_NONE):
            raise UserError(f"Unknown adapter choice {limits.quoted(kind)}.")
        if kind != ADAPTER_HUB:
            return cls(kind)
        repo_id, revision = (repo_id or "").strip(), (revision or "").strip()
        if not HUB_REPO_RE.match(repo_id) or not _valid_hub_repo_id(repo_id):
            raise UserError(f"{limits.quoted(repo_id)} is not a Hugging Face Hub repo id: write it as owner/name.")
        if revision and (not HUB_REVISION_RE.match(revision) or ".." in revision):
            raise UserError(f"{limits.quoted(revision)} is not a valid revision (a branch, tag or commit hash).")
        return cls(kind, repo_id, revision)

    @classmethod
    def from_spec(cls, spec: str) -> "AdapterChoice":
        """``owner/name[@revision]`` (e.g. ``$SAMDEMO_ADAPTER_REPO``) -> a Hub choice; "" -> the shipped adapter."""
        spec = (spec or "").strip()
        if not spec:
            return cls()
        repo_id, _, revision = spec.partition("@")
        return cls.parse(ADAPTER_HUB, repo_id, revision)

    @property
    def label(self) -> str:
        if self.kind == ADAPTER_HUB:
            return f"{self.repo_id}@{self.revision or 'main'}"
        return {ADAPTER_SHIPPED: "shipped adapter", ADAPTER_NONE: "no adapter"}[self.kind]


@dataclass
class RobustModel:
    engine: SegmentEngine
    adapter: object  # the samdemo.defense.Adapter (for its plot and parameter count)
    trainable: int | None
    source: str


def _valid_hub_repo_id(repo_id: str) -> bool:
    """The Hub's own rules (huggingface_hub.utils.validate_repo_id: no '--' or '..', no trailing '.', ...)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def model_choices() -> list[tuple[str, str]]:
    """(label, name) for the model picker, with download size and whether the weights are here."""
    choices = []
    for name in APP_MODELS:
        spec = MODEL_REGISTRY[name]
        local = spec.local_file is not None and (CHECKPOINT_DIR / spec.local_file).exists()
        if spec.hub is None:
            where = "embedded" if local else "embedded, weights missing"
        else:
            where = "downloaded" if local or _hub_cached(spec) else f"downloads {spec.download_mb} MB"
        choices.append((f"{name} · {spec.description} · {where}", name))
    return choices


def _hub_cached(spec) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.hub.repo_id, spec.hub.filename, revision=spec.hub.revision)
        return isinstance(found, str)
    except Exception:
        return False


def default_engine_factory(cache: EmbeddingCache) -> Callable[[str], SegmentEngine]:
    def factory(name: str) -> SegmentEngine:
        return SegmentEngine.from_name(name, cache=cache)
    return factory


class ModelManager:
    """Original and robust engines, built once per process and shared by every session.

    ``factory(name) -> SegmentEngine`` builds an original model (default: the registry's weights,
    downloaded on demand). Engines are kept for at most ``max_models`` model names (LRU).
    Shipped adapters are read from ``adapter_root/<model>-adapter/`` (default ``checkpoints/``).
    """

    def __init__(self, factory: Callable[[str], SegmentEngine] | None = None, max_models: int = 2,
                 cache: EmbeddingCache | None = None, adapter_root: Path | None = None):
        self.cache = cache if cache is not None else EmbeddingCache(int(limits.EMBEDDING_CACHE_MB * 2**20))
        self.adapter_root = Path(adapter_root) if adapter_root is not None else CHECKPOINT_DIR
        self.factory = factory or default_engine_factory(self.cache)
        self.max_models = max_models
        self._engines: dict[str, SegmentEngine] = {}
        self._robust: dict[tuple[str, AdapterChoice], RobustModel | None] = {}
        self._order: list[str] = []
        self._lock = threading.Lock()
        self._key_locks: dict[object, threading.Lock] = {}

    def _key_lock(self, key) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _touch(self, name: str) -> None:
        with self._lock:
            if name in self._order:
                self._order.remove(name)
            self._order.append(name)
            while len(self._order) > self.max_models:
                old = self._order.pop(0)
                self._engines.pop(old, None)
                for key in [k for k in self._robust if k[0] == old]:
                    self._robust.pop(key, None)

    def engine(self, name: str) -> SegmentEngine:
        """The original model ``name`` (raises ModelUnavailableError with a readable message)."""
        get_spec(name)  # unknown names fail here, with the list of known ones
        with self._key_lock(("engine", name)):
            engine = self._engines.get(name)
            if engine is None:
                log.info("loading model %s", name)
                engine = self.factory(name)
                for p in engine.model.parameters():
                    p.requires_grad_(False)
                self._engines[name] = engine
        self._touch(name)
        return engine

    def is_loaded(self, name: str) -> bool:
        return name in self._engines

    def robust(self, name: str, choice: AdapterChoice) -> RobustModel | None:
        """The model with its adapter applied (None for "no adapter")."""
        if choice.kind == ADAPTER_NONE:
            return None
        key = (name, choice)
        with self._key_lock(("robust",) + key):
            if key not in self._robust:
                self._robust[key] = load_robust(self.engine(name), choice, self.adapter_root)
        return self._robust[key]


def load_robust(engine: SegmentEngine, choice: AdapterChoice, adapter_root: Path = CHECKPOINT_DIR) -> RobustModel:
    """Apply the adapter of ``choice`` to a copy of ``engine``'s model (merged: plain forward, no overhead).

    The copy shares the embedding cache; its ``adapter_tag`` keeps its cached embeddings apart."""
    import copy

    from samdemo import defense

    robust_engine = SegmentEngine(copy.deepcopy(engine.model), engine.family, name=engine.name,
                                  autocast_dtype=engine.autocast_dtype, cache=engine.cache)
    try:
        if choice.kind == ADAPTER_SHIPPED:
            folder = Path(adapter_root) / f"{engine.name}-adapter"
            if not folder.is_dir():
                raise UserError(f"No adapter is shipped for {engine.name} (no folder checkpoints/{folder.name}/): "
                                "choose another model, an adapter from the Hub, or none.")
            source = f"checkpoints/{folder.name}"
        else:
            from samdemo import hub

            if Path(choice.repo_id).expanduser().exists():  # hub.resolve_adapter also takes local folders
                raise UserError(f"{limits.quoted(choice.repo_id)} names a local path; the app loads adapters only from the Hub "
                                "(or the shipped one).")
            try:  # hub.py bounds the wait (Hub timeout, cached copy) and the size; its messages name the repo
                folder = hub.resolve_adapter(choice.repo_id, revision=choice.revision or None)
            except defense.AdapterError as error:
                raise UserError(f"{error} The shipped adapter and the embedded models still work.") from None
            source = f"Hub: {choice.label}"
        adapter = defense.load_adapter_folder(robust_engine, folder)
    except defense.AdapterError as error:
        raise UserError(f"Adapter {choice.label} cannot be used with {engine.name}: {error}") from None
    except ModelUnavailableError as error:
        raise UserError(str(error)) from None
    adapter.merge()
    robust_engine.model.requires_grad_(False)
    return RobustModel(robust_engine, adapter, adapter.num_trainable, source)


def adapter_figure(robust: RobustModel | None):
    if robust is None:
        return None
    from samdemo import plots

    return plots.singular_value_plot(robust.adapter)


# ---------------------------------------------------------------------------------------------
# Computations
# ---------------------------------------------------------------------------------------------

@dataclass
class CleanResult:
    mask: np.ndarray
    iou_pred: float
    seconds: float


def clean_prediction(engine: SegmentEngine, image: np.ndarray, prompts: PromptState) -> CleanResult:
    prompt = prompts.to_prompt()
    prompt.validate(image.shape[:2])
    t0 = time.perf_counter()
    prediction = engine.predict(image, [prompt])
    return CleanResult(prediction.masks[0].cpu().numpy(), float(prediction.iou_pred[0]), time.perf_counter() - t0)


@dataclass
class AttackSettings:
    attack: str = DEFAULT_ATTACK
    generator: str = "pgd"
    eps255: float = 8.0
    steps: int = 10
    seed: int = 0
    target: str = TARGET_ORIGINAL

    def validate(self) -> "AttackSettings":
        from samdemo.attacks import ATTACKS

        if self.attack not in ATTACKS:
            raise UserError(f"Unknown attack {limits.quoted(self.attack)}; choose one of {', '.join(ATTACKS)}.")
        if self.generator not in dict((v, k) for k, v in GENERATOR_CHOICES):
            raise UserError(f"Unknown generator {limits.quoted(self.generator)}.")
        if self.target not in (TARGET_ORIGINAL, TARGET_ROBUST):
            raise UserError(f"Unknown target {limits.quoted(self.target)}.")
        self.eps255 = limits.check_eps255(self.eps255)
        self.steps = limits.check_steps(self.steps)
        self.seed = limits.check_seed(self.seed)
        return self


@dataclass
class Panel:
    title: str
    image: np.ndarray | None  # rendered overlay (None: robust model absent)
    mask: np.ndarray | None
    iou_ref: float | None  # IoU with the reference (ground truth if painted, else original clean mask)


@dataclass
class AttackOutcome:
    panels: dict[str, Panel]  # keys: original/clean, original/adversarial, robust/clean, robust/adversarial
    table: list[list]
    adversarial: np.ndarray
    perturbation: np.ndarray
    perturbation_caption: str
    reference: str
    timings: dict[str, float]
    settings: AttackSettings
    losses: list[float]
    target_name: str

    @property
    def ious(self) -> dict[str, float | None]:
        return {key: panel.iou_ref for key, panel in self.panels.items()}


PANEL_KEYS = ("original/clean", "original/adversarial", "robust/clean", "robust/adversarial")


def make_attack(engine: SegmentEngine, settings: AttackSettings, progress=None, cancel: threading.Event | None = None):
    from samdemo.attacks import ATTACKS

    attack = ATTACKS[settings.attack](engine, eps=settings.eps255 / 255.0, steps=settings.steps,
                                      generator=settings.generator, seed=settings.seed)
    if progress is not None:
        attack.progress = progress
    if cancel is not None:
        attack.cancel = cancel
    return attack


def run_attack(manager: ModelManager, model: str, adapter: AdapterChoice, image: np.ndarray, prompts: PromptState,
               settings: AttackSettings, progress: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None, time_limit: float | None = None) -> AttackOutcome:
    """Craft a perturbation on the target model, then predict with both models on both images.

    The attack stops with :class:`samdemo.limits.TimeLimitExceeded` after ``time_limit`` seconds
    (default ``limits.ATTACK_TIME_LIMIT_S``), counted once the models are loaded."""
    settings.validate()
    prompt = prompts.to_prompt()
    prompt.validate(image.shape[:2])
    t_start = time.perf_counter()
    original = manager.engine(model)
    robust = manager.robust(model, adapter)
    if settings.target == TARGET_ROBUST and robust is None:
        raise UserError("An adaptive attack needs a robust model: choose an adapter, or attack the original model.")
    target = robust.engine if settings.target == TARGET_ROBUST else original
    t_load = time.perf_counter()

    seconds = limits.ATTACK_TIME_LIMIT_S if time_limit is None else time_limit
    attack = make_attack(target, settings, limits.with_time_limit(progress, seconds), cancel)
    images = image_to_tensor(image).to(target.device)
    result = attack.forward(images, prompts=[prompt])
    adversarial = tensor_to_image(result.adv_images)
    t_attack = time.perf_counter()

    engines = {"original": original, "robust": robust.engine if robust else None}
    preds: dict[str, tuple[np.ndarray, float] | None] = {}
    for model_key, engine in engines.items():
        for input_key, img in (("clean", image), ("adversarial", adversarial)):
            if engine is None:
                preds[f"{model_key}/{input_key}"] = None
                continue
            prediction: Prediction = engine.predict(img, [prompt])
            preds[f"{model_key}/{input_key}"] = (prediction.masks[0].cpu().numpy(), float(prediction.iou_pred[0]))
    t_predict = time.perf_counter()

    gt = prompts.ground_truth
    reference_mask = gt if gt is not None else preds["original/clean"][0]
    reference = "your ground truth" if gt is not None else "the original model's clean mask"
    panels, table = {}, []
    for key in PANEL_KEYS:
        model_key, input_key = key.split("/")
        model_label = f"{'Original' if model_key == 'original' else 'Robust'} model"
        shown = image if input_key == "clean" else adversarial
        entry = preds[key]
        title = f"{model_label} · {input_key}"
        if entry is None:
            panels[key] = Panel(f"{title}: no adapter loaded", None, None, None)
            table.append([model_label.lower(), input_key, None, None, None, "—", None])
            continue
        mask, iou_pred = entry
        iou_ref = mask_iou(mask, reference_mask)
        own_clean = preds[f"{model_key}/clean"][0]
        iou_own = mask_iou(mask, own_clean)
        iou_gt = mask_iou(mask, gt) if gt is not None else None
        iou_original = mask_iou(mask, preds["original/clean"][0])
        success = "—" if input_key == "clean" else ("yes" if iou_own < ATTACK_SUCCESS_IOU else "no")
        overlay = render_overlay(shown, mask, prompts, show_ground_truth=gt is not None)
        text = f"IoU {iou_ref:.2f}" + (" (reference)" if gt is None and key == "original/clean" else "")
        panels[key] = Panel(f"{title} — IoU {iou_ref:.2f}", banner(overlay, text), mask, iou_ref)
        table.append([model_label.lower(), input_key, round(iou_original, 3), round(iou_own, 3),
                      None if iou_gt is None else round(iou_gt, 3), success, round(iou_pred, 3)])
    perturbation, caption = perturbation_image(image, adversarial, settings.eps255)
    timings = {"load": t_load - t_start, "attack": t_attack - t_load, "predict": t_predict - t_attack,
               "steps_run": int(result.info.get("steps_run", settings.steps))}
    timings["total"] = time.perf_counter() - t_start
    losses = [float(v) for v in result.losses]
    return AttackOutcome(panels, table, adversarial, perturbation, caption, reference, timings, settings, losses,
                         "robust" if settings.target == TARGET_ROBUST else "original")


def save_png(image: np.ndarray, prefix: str = "adversarial") -> str:
    """Write an RGB uint8 image as a lossless PNG in the app's temporary folder; returns its path."""
    folder = Path(tempfile.gettempdir()) / "samdemo-app"
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in folder.glob("*.png"):  # keep the folder small: files older than an hour go
        try:
            if now - old.stat().st_mtime > 3600:
                old.unlink()
        except OSError:
            pass
    path = folder / f"{prefix}-{uuid.uuid4().hex[:12]}.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return str(path)


@dataclass
class TransferOutcome:
    matrix: np.ndarray  # rows x cols IoU with the clean prediction of the same prompt
    matrix_gt: np.ndarray | None  # rows x cols IoU with the painted ground truth (None without one)
    rows: list[str]
    cols: list[str]
    figure: object
    seconds: float


def run_transfer(manager: ModelManager, model: str, adapter: AdapterChoice, image: np.ndarray, prompts: PromptState,
                 settings: AttackSettings, progress: Callable[[str, int, int], None] | None = None,
                 cancel: threading.Event | None = None, time_limit: float | None = None) -> TransferOutcome:
    """The transfer matrix across prompt types (``samdemo.attacks.transfer``) of the user's object.

    Every attack is crafted on the target model (original or robust, as for the main attack)
    and evaluated on that same model with the object's point, box and mask prompts. The object
    is the painted ground truth when there is one, else the clean mask of the user's prompt. The six
    attacks together stop after ``time_limit`` seconds (default ``limits.TRANSFER_TIME_LIMIT_S``)."""
    from samdemo.attacks.transfer import transfer_matrix

    settings.validate()
    t0 = time.perf_counter()
    original = manager.engine(model)
    robust = manager.robust(model, adapter)
    if settings.target == TARGET_ROBUST and robust is None:
        raise UserError("An adaptive attack needs a robust model: choose an adapter, or attack the original model.")
    target = robust.engine if settings.target == TARGET_ROBUST else original
    gt = prompts.ground_truth
    user_prompts = [prompts.to_prompt()] if prompts.has_prompt else None
    if gt is None and user_prompts is None:
        raise PromptError("The transfer matrix needs an object: click it (or paint its ground truth) first.")
    seconds = limits.TRANSFER_TIME_LIMIT_S if time_limit is None else time_limit
    progress = limits.with_time_limit(progress, seconds, "transfer matrix")
    try:
        result = transfer_matrix(target, image, gt_masks=None if gt is None else gt[None], prompts=user_prompts,
                                 eps=settings.eps255 / 255.0, steps=settings.steps, generator=settings.generator,
                                 seed=settings.seed, progress=progress, cancel=cancel)
    except ValueError as error:
        if isinstance(error, (PromptError, UserError)):
            raise
        raise UserError(str(error)) from None
    matrix = np.asarray(result["iou_vs_clean"], dtype=np.float64)
    matrix_gt = None if result.get("iou_vs_gt") is None else np.asarray(result["iou_vs_gt"], dtype=np.float64)
    rows, cols = list(result["rows"]), list(result["cols"])
    who = "robust" if settings.target == TARGET_ROBUST else "original"
    title = f"Crafted and evaluated on the {who} model\n{settings.generator.upper()}, ε = {settings.eps255:g}/255, {settings.steps} steps"
    return TransferOutcome(matrix, matrix_gt, rows, cols, transfer_figure(matrix, rows, cols, title),
                           time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Examples (only files listed in assets/examples.json can be loaded from the UI)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    path: Path
    caption: str


def load_examples(folder: Path = ASSETS_DIR) -> list[Example]:
    import json

    index = folder / "examples.json"
    if not index.exists():
        return []
    examples = []
    for entry in json.loads(index.read_text()):
        path = (folder / entry["file"]).resolve()
        if path.parent == folder.resolve() and path.exists():
            examples.append(Example(path, entry["caption"]))
    return examples


def read_example(examples: Sequence[Example], index) -> tuple[np.ndarray, str]:
    try:
        number = float(index)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number == int(number) and 0 <= number < len(examples)):
        raise UserError(f"Pick one of the example images (an index from 0 to {len(examples) - 1}; "
                        f"got {limits.quoted(index)}).")
    example = examples[int(number)]
    bgr = cv2.imread(str(example.path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"Example {example.path.name} cannot be read.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), example.path.stem


# ---------------------------------------------------------------------------------------------
# Gradio handlers
# ---------------------------------------------------------------------------------------------

try:  # ZeroGPU on Hugging Face Spaces: heavy handlers get a GPU for their duration
    import spaces  # type: ignore

    def gpu(duration: int):
        return spaces.GPU(duration=duration)
except ImportError:  # anywhere else: no-op
    def gpu(duration: int):
        return lambda fn: fn


EXPECTED_ERRORS = (UserError, PromptError, ModelUnavailableError)


# An absolute path: a slash not preceded by a word character, ':' or '/' (so not "owner/name", "8/255"
# or a URL), then path characters.
_SERVER_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"`,;:()<>\[\]]+/)*[^\s'\"`,;:()<>\[\]]*")


def without_server_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part: a message never tells a visitor where the
    server keeps its files (checkpoints, the Hub cache, uploads), nor whether a file exists there."""
    return _SERVER_PATH.sub(lambda match: Path(match.group(0)).name or "(a server folder)", text)


def error_message(error: Exception) -> str:
    """What the user reads about ``error`` (call it in the ``except`` block): expected problems as they are,
    running out of memory with what to change, anything else logged with its traceback. Server paths are
    cut from what the user reads (the log keeps them)."""
    if isinstance(error, EXPECTED_ERRORS):
        message = str(error)
    elif limits.is_out_of_memory(error):
        log.warning("out of memory: %s", error)
        message = limits.out_of_memory_message(error) + " The app is still running."
    else:
        log.exception("unexpected error in a handler")
        message = (f"Something went wrong ({type(error).__name__}: {error}). The app is still running: try again, "
                   "or with another image or model.")
    public = without_server_paths(message)
    if public != message:
        log.info("told the user (paths cut): %s", message)
    return public


def _copy(session: Session | None) -> Session:
    """Handlers edit a copy, so that a failed edit leaves the stored session untouched."""
    if session is None:
        return Session()
    return replace(session, history=list(session.history))


def _progress_fn(progress, label: str):
    """An attack's ``progress(t, T)`` -> a gr.Progress update."""
    if progress is None:
        return None

    def update(step: int, total: int) -> None:
        progress((int(step), int(total)), desc=f"{label}: step {int(step)}/{int(total)}", unit="steps")
    return update


def _rows_progress_fn(progress, rows: int):
    """The transfer matrix's ``progress(row label, t, T)`` -> overall progress over ``rows`` attacks."""
    seen: list[str] = []

    def update(label: str, step: int, total: int) -> None:
        if label not in seen:
            seen.append(label)
        done = (len(seen) - 1 + int(step) / max(int(total), 1)) / rows
        progress(min(done, 1.0), desc=f"{label} ({len(seen)}/{rows}): step {int(step)}/{int(total)}")
    return update


def upload_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` whose upload reaches the handler as the path of the uploaded file, unopened.

    gr.Image opens every upload with Pillow before the handler runs, so a corrupt file or a
    decompression bomb would end in Gradio's bare "Error"; the app decodes uploads itself
    (:func:`samdemo.limits.read_image`: pixels counted before decoding, a message for every bad
    file). Gradio has already checked that the path is a file this user uploaded.

    The instance's ``preprocess`` is replaced rather than subclassed: Gradio writes a ``.pyi`` stub
    next to the module of every Component subclass when it is imported. Handlers must return plain
    values to it, not ``gr.Image(...)`` updates (Gradio rebuilds the component from its arguments
    then; ``image_mode=None`` keeps even that one handing over the unconverted file)."""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload):
        if payload is None or payload.path is None:  # nothing, or a data: URL (gr.Image writes it to a file)
            return gr.Image.preprocess(image, payload)
        return str(payload.path)

    image.preprocess = preprocess
    return image


def paint_editor(**kwargs) -> gr.ImageEditor:
    """A ``gr.ImageEditor`` (numpy layers) that refuses a layer of more than ``limits.MAX_PIXELS``
    pixels before decoding it.

    Gradio decodes the editor's background, layers and composite itself, before the handler; only
    Pillow's own decompression-bomb guard (about 179 M pixels) would stop a small PNG that claims
    to be huge, and the app would hold several copies of it in memory. Pillow reads the size from
    the header, so the check costs nothing. (Instance patch, not a subclass: see :func:`upload_image`.)"""
    editor = gr.ImageEditor(type="numpy", **kwargs)
    convert = editor.convert_and_format_image

    def checked_convert(file, *args, **kw):
        if file is not None:
            from PIL import Image

            try:
                with warnings.catch_warnings():  # Pillow's bomb warning: the size is checked right below
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(file.path if hasattr(file, "path") else io.BytesIO(file)) as image:
                        w, h = image.size
            except Exception:
                raise gr.Error("A painted layer is not a readable image.", print_exception=False) from None
            if w * h > limits.MAX_PIXELS:
                raise gr.Error(f"A painted layer is {w}x{h} px; at most {limits.MAX_PIXELS / 1e6:.0f} megapixels "
                               "are accepted (SAMDEMO_MAX_PIXELS).", print_exception=False)
        return convert(file, *args, **kw)

    editor.convert_and_format_image = checked_convert
    return editor


class Lab:
    """The app's handlers, bound to one :class:`ModelManager` (app.py wires them to components)."""

    def __init__(self, manager: ModelManager | None = None, examples: Sequence[Example] | None = None):
        self.manager = manager or ModelManager()
        self.examples = list(load_examples() if examples is None else examples)
        self._cancels: dict[str, threading.Event] = {}
        self._cancels_lock = threading.Lock()
        # ZeroGPU (Hugging Face Spaces): heavy handlers hold a GPU while they run; a no-op elsewhere.
        self.on_attack = gpu(int(limits.ATTACK_TIME_LIMIT_S))(self.on_attack)
        self.on_transfer = gpu(int(limits.TRANSFER_TIME_LIMIT_S))(self.on_transfer)

    # ----------------------------------------------------------------- helpers
    def _error(self, error: Exception) -> gr.Error:
        """A readable gr.Error for ``error`` (see :func:`error_message`)."""
        return gr.Error(error_message(error), print_exception=False)

    def _warning(self, error: Exception) -> str:
        """For handlers that report in their outputs rather than fail: a toast, and the text to show."""
        message = error_message(error)
        gr.Warning(message)
        return f"⚠️ {message}"

    def canvas(self, session: Session, model: str, note: str = "") -> tuple[np.ndarray | None, str]:
        """The prompt canvas (image, prompts, clean mask of the original model) and a status line."""
        if session.image is None:
            return None, note or "Upload or paste an image, or pick an example below."
        lines = [note] if note else []
        mask = None
        if session.prompts.has_prompt:
            try:
                result = clean_prediction(self.manager.engine(model), session.image, session.prompts)
            except (PromptError, ModelUnavailableError) as error:  # the prompt is kept; say why there is no mask
                lines.append(f"⚠️ {error}")
            else:
                mask = session.clean_mask = result.mask
                h, w = mask.shape
                lines.append(f"Clean mask of **{model}**: {int(mask.sum())} px ({100 * mask.mean():.1f} % of the "
                             f"image), the model's own IoU estimate {result.iou_pred:.2f}, {1000 * result.seconds:.0f} ms.")
        lines.append(f"Prompts: {session.prompts.describe()}.")
        return render_overlay(session.image, mask, session.prompts), "  \n".join(lines)

    def _editor_value(self, session: Session):
        if session.image is None:
            return None
        return {"background": upscale(session.image, display_scale(session.image.shape[:2])), "layers": [],
                "composite": None}

    # ----------------------------------------------------------------- image
    def on_upload(self, session, image, model):
        """A new image was uploaded or pasted (None: the user cleared it)."""
        try:
            session = _copy(session)
            if image is None:
                session = Session()
                return session, None, None, "Upload or paste an image, or pick an example below."
            note = set_image(session, image)
            canvas, status = self.canvas(session, model, note)
            return session, canvas, self._editor_value(session), status
        except Exception as error:
            raise self._error(error) from None

    def on_example(self, session, model, evt: gr.SelectData = None):
        """An example thumbnail was clicked (``evt.index`` indexes ``self.examples``; no other files)."""
        try:
            session = _copy(session)
            index = getattr(evt, "index", evt)
            if isinstance(index, (list, tuple)):
                index = index[0]
            image, name = read_example(self.examples, index)
            set_image(session, image, name)
            canvas, status = self.canvas(session, model, f"Loaded example **{name}**: {self.examples[int(index)].caption}")
            return session, canvas, self._editor_value(session), status
        except Exception as error:
            raise self._error(error) from None

    def on_example_index(self, session, model, index: float):
        """API form of :meth:`on_example` (index into the example list; read_example refuses a bad one)."""
        return self.on_example(session, model, index)

    # ----------------------------------------------------------------- prompts
    def on_select(self, session, mode, model, evt: gr.SelectData = None):
        """A click on the canvas: ``evt.index`` is (x, y) in the displayed image's pixels."""
        index = getattr(evt, "index", None)
        if not isinstance(index, (list, tuple)) or len(index) != 2:
            raise gr.Error("This click carried no position; click inside the image.", print_exception=False)
        session_image = session.image if session is not None else None
        if session_image is None:
            raise gr.Error("Upload or paste an image first, or pick one of the examples.", print_exception=False)
        try:
            px, py = _coordinate(index[0]), _coordinate(index[1])
        except UserError as error:
            raise self._error(error) from None
        x, y = to_image_frame(px, py, session_image.shape[:2])
        return self.on_click(session, mode, model, x, y)

    def on_click(self, session, mode, model, x, y):
        """A click at (x, y) in the original image's pixels (also the API's ``/click``)."""
        try:
            session = _copy(session)
            if mode == MODE_MASK:
                return (session, *self.canvas(session, model, "Mask mode: paint in the **Paint a mask** tab, then "
                                                              "press *Use as mask prompt*."))
            note = add_click(session, mode, x, y)
            return (session, *self.canvas(session, model, note))
        except Exception as error:
            raise self._error(error) from None

    def on_undo(self, session, model):
        try:
            session = _copy(session)
            return (session, *self.canvas(session, model, undo(session)))
        except Exception as error:
            raise self._error(error) from None

    def on_clear(self, session, model):
        try:
            session = _copy(session)
            return (session, *self.canvas(session, model, clear_prompts(session)))
        except Exception as error:
            raise self._error(error) from None

    def on_paint(self, session, editor_value, model, as_ground_truth: bool):
        try:
            session = _copy(session)
            image = session.require_image()
            note = set_painted(session, painted_mask(editor_value, image.shape[:2]), as_ground_truth)
            return (session, *self.canvas(session, model, note))
        except Exception as error:
            raise self._error(error) from None

    def on_paint_prompt(self, session, editor_value, model):
        return self.on_paint(session, editor_value, model, False)

    def on_paint_ground_truth(self, session, editor_value, model):
        return self.on_paint(session, editor_value, model, True)

    def on_mode(self, mode):
        """Mask mode opens the Paint tab; the other modes the Click tab."""
        return gr.Tabs(selected="paint" if mode == MODE_MASK else "click")

    def on_refresh(self, session, model):
        """Redraw the canvas (after the model changed)."""
        try:
            return (session, *self.canvas(_copy(session), model))
        except Exception as error:
            raise self._error(error) from None

    # ----------------------------------------------------------------- models
    def preload(self, model: str, adapter: AdapterChoice = AdapterChoice(), examples: bool = True) -> None:
        """Before serving: load the model (and its adapter) and embed the examples with both, so that the
        first click on an example is as fast as the next ones. Problems are only logged: the UI shows them."""
        engines = []
        try:
            engines.append(self.manager.engine(model))
            robust = self.manager.robust(model, adapter)
            engines += [robust.engine] if robust is not None else []
        except Exception as error:  # the app still starts; the UI shows the message on load
            log.warning("could not preload %s (%s): %s", model, adapter.label, error)
        for index in range(len(self.examples) if examples else 0):
            image = normalize_image(read_example(self.examples, index)[0])[0]
            for engine in engines:
                engine.embed_image(image)

    def on_adapter_kind(self, kind):
        """Show the Hub fields only for a Hub adapter."""
        return gr.Row(visible=kind == ADAPTER_HUB)

    def on_model(self, model, kind, repo_id, revision, progress=gr.Progress(track_tqdm=True)):
        """Load the model (downloading it if needed) and its adapter; returns (model info, adapter info, plot)."""
        try:
            spec = get_spec(model)
            if not self.manager.is_loaded(model):
                progress(0.05, desc=f"Loading {model}" + (f" (downloading up to {spec.download_mb} MB)" if spec.hub else ""))
            t0 = time.perf_counter()
            engine = self.manager.engine(model)
            n_params = sum(p.numel() for p in engine.model.parameters())
            info = (f"**{model}**: {spec.description}; {n_params / 1e6:.1f} M parameters, {engine.image_size} px input, "
                    f"on {engine.device.type.upper()} (ready in {time.perf_counter() - t0:.1f} s). "
                    f"**What it is good at**: {spec.suited_for}.")
            if engine.device.type == "cpu" and spec.hub is not None:
                info += " Full-size models are slow on a CPU: an attack step can take many seconds."
        except Exception as error:
            return self._warning(error), "", None
        adapter_md, figure = self.on_adapter(model, kind, repo_id, revision)
        return info, adapter_md, figure

    def on_adapter(self, model, kind, repo_id, revision):
        """Load the adapter; returns (markdown with its parameter count, singular-value figure)."""
        try:
            choice = AdapterChoice.parse(kind, repo_id, revision)
            robust = self.manager.robust(model, choice)
            if robust is None:
                return ("No adapter: the *robust* panels stay empty and only the original model is attacked.", None)
            count = f"{robust.trainable:,} trainable values" if robust.trainable is not None else "its trainable values"
            total = sum(p.numel() for p in robust.engine.model.parameters())
            md = (f"**Adapter** ({robust.source}): {robust.adapter.noun}, {count}, "
                  f"{100 * (robust.trainable or 0) / max(total, 1):.3f} % of the model's {total / 1e6:.1f} M. The plot "
                  "shows the singular values of the adapted weights before and after it.")
            return md, adapter_figure(robust)
        except Exception as error:
            return self._warning(error), None

    # ----------------------------------------------------------------- attack
    def _cancel_event(self, request) -> tuple[str, threading.Event]:
        key = getattr(request, "session_hash", None) or "default"
        with self._cancels_lock:
            event = self._cancels.setdefault(key, threading.Event())
            event.clear()
        return key, event

    def on_cancel(self, request: gr.Request = None):
        key = getattr(request, "session_hash", None) or "default"
        with self._cancels_lock:
            event = self._cancels.get(key)
        if event is None:
            return "No attack is running."
        event.set()
        return "Cancelling: the attack stops after its current step."

    def _run_heavy(self, request, session, adapter_inputs, attack_inputs, job):
        """What on_attack and on_transfer share: check the inputs, then ``job(image, prompts, adapter choice,
        settings, cancel event)`` with this session's cancel event. Returns None when the user cancelled."""
        key, cancel = self._cancel_event(request)
        try:
            session = session or Session()
            image = session.require_image()
            settings = AttackSettings(*attack_inputs).validate()
            choice = AdapterChoice.parse(*adapter_inputs)
            return job(image, session.prompts, choice, settings, cancel)
        except AttackCancelled:
            return None
        except Exception as error:
            raise self._error(error) from None
        finally:
            with self._cancels_lock:
                if self._cancels.get(key) is cancel:
                    del self._cancels[key]

    def on_attack(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed, target,
                  request: gr.Request = None, progress=gr.Progress()):
        """Run an attack; returns the 4 panels, the table, the perturbation and its caption, the PNG, timings."""
        def job(image, prompts, choice, settings, cancel):
            progress(0.0, desc="Preparing the attack")
            return run_attack(self.manager, model, choice, image, prompts, settings,
                              _progress_fn(progress, f"{attack} · {generator}"), cancel)

        outcome = self._run_heavy(request, session, (kind, repo_id, revision),
                                  (attack, generator, eps255, steps, seed, target), job)
        if outcome is None:
            gr.Warning("Attack cancelled.")
            return self._empty_results("Attack cancelled before it finished.")
        panels = [gr.Image(value=outcome.panels[k].image, label=outcome.panels[k].title) for k in PANEL_KEYS]
        table = [[_fmt(v) for v in row] for row in outcome.table]
        t = outcome.timings
        steps_run = t["steps_run"]
        per_step = f", {1000 * t['attack'] / steps_run:.0f} ms/step" if steps_run else ""
        device = self.manager.engine(model).device.type.upper()
        timings = (f"**Timings** ({device}): attack {t['attack']:.2f} s ({steps_run} step{'s' * (steps_run != 1)}{per_step}), "
                   f"4 predictions {t['predict']:.2f} s, total {t['total']:.2f} s. Crafted on the "
                   f"**{outcome.target_name}** model; IoUs in the panels are against {outcome.reference}.")
        return (*panels, table, outcome.perturbation, outcome.perturbation_caption,
                save_png(outcome.adversarial), timings)

    def _empty_results(self, message: str):
        """Leave the previous results in place (gr.skip) and say why."""
        return (*[gr.skip() for _ in PANEL_KEYS], gr.skip(), gr.skip(), gr.skip(), gr.skip(), message)

    async def _until_stopped(self, handler, inputs: tuple, request, progress):
        """Run a heavy handler in a worker thread. When Gradio ends the request early (its own cancel,
        e.g. ``gradio_client``'s ``job.cancel()``), set the session's cancel event and wait for the thread
        to stop before returning: Gradio frees the one-attack-at-a-time lane only when this returns."""
        work = asyncio.ensure_future(asyncio.to_thread(handler, *inputs, request, progress))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self.on_cancel(request)
            await asyncio.gather(work, return_exceptions=True)  # stops within one attack step
            raise

    async def attack_request(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed,
                             target, request: gr.Request = None, progress=gr.Progress()):
        """:meth:`on_attack` as the app serves it (stops its work when the request is cancelled)."""
        return await self._until_stopped(self.on_attack, (session, model, kind, repo_id, revision, attack, generator,
                                                          eps255, steps, seed, target), request, progress)

    async def transfer_request(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed,
                               target, request: gr.Request = None, progress=gr.Progress()):
        """:meth:`on_transfer` as the app serves it (stops its work when the request is cancelled)."""
        return await self._until_stopped(self.on_transfer, (session, model, kind, repo_id, revision, attack,
                                                            generator, eps255, steps, seed, target), request, progress)

    def on_transfer(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed, target,
                    request: gr.Request = None, progress=gr.Progress()):
        def job(image, prompts, choice, settings, cancel):
            progress(0.0, desc="Preparing the transfer matrix")
            return run_transfer(self.manager, model, choice, image, prompts, settings,
                                _rows_progress_fn(progress, TRANSFER_ROWS), cancel)

        outcome = self._run_heavy(request, session, (kind, repo_id, revision),
                                  (attack, generator, eps255, steps, seed, target), job)
        if outcome is None:
            gr.Warning("Transfer matrix cancelled.")
            return gr.skip(), "Transfer matrix cancelled before it finished."
        md = ("Each row is a perturbation (the *mask* attack is crafted once per prompt type: `mask@box` used "
              "the object's box); each column the prompt type then used to segment the attacked image. Cells: "
              "IoU with the clean mask of the same prompt (red = the attack worked there). A prompt-free attack "
              f"that is red across its whole row transfers to every prompt type. {outcome.seconds:.1f} s.")
        if outcome.matrix_gt is not None:
            md += " IoU with your ground truth: " + "; ".join(
                f"{row} " + "/".join(f"{v:.2f}" for v in values) for row, values in zip(outcome.rows, outcome.matrix_gt))
        return outcome.figure, md


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
