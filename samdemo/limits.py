"""Resource limits of the app and the CLI, in one place, and the image decoder that enforces them.

| limit | default | environment variable |
| --- | --- | --- |
| upload size (Gradio refuses larger files) | 25 MB | ``SAMDEMO_MAX_UPLOAD_MB`` |
| decoded pixels per image (checked on the header, before decoding) | 40 M | ``SAMDEMO_MAX_PIXELS`` |
| longest side the models see (larger images are downscaled, with a notice) | 1024 px | ``SAMDEMO_MAX_SIDE`` |
| attack steps (app) | 100 | ``SAMDEMO_MAX_STEPS`` |
| ε | 32/255 | (the threat model's bound, ``samdemo.attacks.EPS_MAX``) |
| time per attack / transfer matrix | 120 s / 300 s | ``SAMDEMO_ATTACK_TIME_LIMIT`` / ``SAMDEMO_TRANSFER_TIME_LIMIT`` |
| time per robustness curve (all its attacks) | 600 s | ``SAMDEMO_CURVE_TIME_LIMIT`` |
| training an adapter in the app: time / steps / uploaded images | 900 s / 300 / 32 | ``SAMDEMO_TRAIN_TIME_LIMIT`` / ``SAMDEMO_MAX_TRAIN_STEPS`` / ``SAMDEMO_MAX_TRAIN_IMAGES`` |
| robust models of adapters trained in the app kept in memory (all sessions; others are rebuilt from their files) | 4 | ``SAMDEMO_TRAINED_MODELS`` |
| waiting for the Hugging Face Hub to answer | 10 s | ``SAMDEMO_HUB_TIMEOUT`` |
| an adapter's weights from the Hub (checked before downloading) | 20 MB | ``SAMDEMO_MAX_ADAPTER_MB`` |
| requests waiting in the app's queue | 64 | ``SAMDEMO_QUEUE_SIZE`` |
| image embeddings kept for re-use, all sessions together | 256 MB | ``SAMDEMO_EMBEDDING_CACHE_MB`` |

The variables are read once, at import; a malformed value stops the start with a message naming it.
Everything here is plain Python and numpy (Pillow, OpenCV and torch are imported where used), so
that the CLI and the app share the same checks.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from samdemo.attacks.base import EPS_MAX_255
from samdemo.errors import TimeLimitExceeded, UserError  # noqa: F401  (raised here)


def _env(name: str, default, cast=float):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(float(raw)) if cast is int else cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number.") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number; got {raw!r}.")
    return value


MAX_UPLOAD_MB: float = _env("SAMDEMO_MAX_UPLOAD_MB", 25.0)
MAX_PIXELS: int = _env("SAMDEMO_MAX_PIXELS", 40_000_000, int)
MAX_SIDE: int = _env("SAMDEMO_MAX_SIDE", 1024, int)
MIN_SIDE = 8  # smaller images carry no object a model could segment
MAX_STEPS: int = _env("SAMDEMO_MAX_STEPS", 100, int)
MAX_EPS255 = EPS_MAX_255  # the L-inf threat model, not a resource limit
MAX_SEED = 2**32 - 1  # exact in the browser's numbers (torch itself takes 64-bit seeds)
ATTACK_TIME_LIMIT_S: float = _env("SAMDEMO_ATTACK_TIME_LIMIT", 120.0)
TRANSFER_TIME_LIMIT_S: float = _env("SAMDEMO_TRANSFER_TIME_LIMIT", 300.0)
CURVE_TIME_LIMIT_S: float = _env("SAMDEMO_CURVE_TIME_LIMIT", 600.0)
TRAIN_TIME_LIMIT_S: float = _env("SAMDEMO_TRAIN_TIME_LIMIT", 900.0)  # training an adapter in the app, checks included
MAX_TRAIN_STEPS: int = _env("SAMDEMO_MAX_TRAIN_STEPS", 300, int)  # the shipped adapters' recipe
MAX_TRAIN_IMAGES: int = _env("SAMDEMO_MAX_TRAIN_IMAGES", 32, int)  # uploaded images per training run
TRAINED_MODELS: int = _env("SAMDEMO_TRAINED_MODELS", 4, int)  # each is a full copy of its model
HUB_TIMEOUT_S: float = _env("SAMDEMO_HUB_TIMEOUT", 10.0)
MAX_ADAPTER_MB: float = _env("SAMDEMO_MAX_ADAPTER_MB", 20.0)  # adapters hold thousands of numbers: kilobytes
QUEUE_SIZE: int = _env("SAMDEMO_QUEUE_SIZE", 64, int)
EMBEDDING_CACHE_MB: float = _env("SAMDEMO_EMBEDDING_CACHE_MB", 256.0)  # the app's main memory after the models
# What one browser session may hold, and how many sessions the server keeps: painted masks are
# full-resolution arrays (1 MiB at 1024 px) kept for undo.
UNDO_STEPS: int = _env("SAMDEMO_UNDO_STEPS", 30, int)
SESSION_MB: float = _env("SAMDEMO_SESSION_MB", 8.0)  # painted masks in a session's prompts and undo history
SESSION_IDLE_S: float = _env("SAMDEMO_SESSION_IDLE_S", 3600.0)  # a session unused this long is dropped
MAX_SESSIONS: int = _env("SAMDEMO_MAX_SESSIONS", 100, int)  # beyond it, the least recent sessions are dropped

# Pillow decodes many formats; these are the ones an image upload needs. The others stay closed:
# EPS, for one, is rendered by running Ghostscript. (Phones' multi-picture JPEGs open as JPEG.)
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (``mallopt(M_ARENA_MAX)``); True if applied.

    Why: glibc gives busy threads arenas of their own (up to 8 per core), and the app's many
    request threads each leave memory behind in theirs: in ``benchmarks/soak.py`` the server's
    resident memory kept growing by about 8 MB per round of 8 sessions while Python's own
    allocations (tracemalloc) stayed flat; with 2 arenas it levels off. A ``MALLOC_ARENA_MAX``
    set in the environment wins (glibc applied it at start). Not glibc (macOS, musl): nothing to do."""
    import ctypes

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):
        return False


def max_upload_bytes() -> int:
    return int(MAX_UPLOAD_MB * 2**20)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def read_image(path: str | Path, max_side: int | None = None,
               exif: bool = True) -> tuple[np.ndarray, str, tuple[int, int]]:
    """Decode an image file within the limits -> (H x W x 3 uint8, a note for the user or "", the file's
    own (width, height) as a viewer shows it: prompts given in that frame scale by W / width).

    The pixel count is checked on the header, before any pixel is decoded (a small PNG can expand
    to gigabytes). ``max_side`` (default ``MAX_SIDE``; 0 keeps the full resolution): larger images
    are downscaled, JPEGs directly decoded at 1/2, 1/4 or 1/8 scale. The EXIF orientation is
    applied (the image shown is the image segmented, as a viewer shows it; ``exif=False`` keeps the
    stored pixels), an animation gives its first frame, 16-bit and transparent images are converted
    properly."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    max_side = MAX_SIDE if max_side is None else max_side
    notes = []
    Image.init()  # registers every plugin, so that each name in IMAGE_FORMATS is known to Image.open
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            frames = getattr(image, "n_frames", 1)
            w, h = image.size
            if image.format in ("JPEG", "MPO") and max_side and max(w, h) > max_side:
                s = max_side / max(w, h)
                image.draft(None, (math.ceil(w * s), math.ceil(h * s)))
            dw, dh = image.size
            if dw * dh > MAX_PIXELS:
                raise UserError(f"The image is {w}x{h} px ({w * h / 1e6:.0f} megapixels); at most "
                                f"{MAX_PIXELS / 1e6:.0f} megapixels are decoded (SAMDEMO_MAX_PIXELS). "
                                f"Downscale it to at most {MAX_SIDE} px on its longest side first.")
            image.load()
            if frames > 1:
                notes.append(f"The file has {frames} frames; the first is used.")
            try:
                image = ImageOps.exif_transpose(image) if exif else image
            except Exception:  # a malformed EXIF block: keep the pixels as stored
                notes.append("Its EXIF orientation could not be read; the image is used as stored.")
            if image.size != (dw, dh):  # turned by 90 degrees: the original size as shown
                w, h = h, w
            array = _pil_to_array(image)
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"The image has far more than {MAX_PIXELS / 1e6:.0f} megapixels (Pillow refuses it as a "
                        "decompression bomb). Downscale it first.") from None
    except UnidentifiedImageError:
        raise UserError(f"{path.name} is not an image this app reads ({', '.join(IMAGE_FORMATS)}), or it is "
                        "corrupt.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or malformed data
        raise UserError(f"{path.name} cannot be decoded ({type(error).__name__}: {error}); the file is "
                        "truncated or corrupt.") from None
    image, _ = to_rgb8(array, max_side)
    if image.shape[:2] != (h, w):  # said in the file's own size, also when the JPEG was decoded smaller
        notes.append(_resized_note((w, h), image.shape[1::-1], max_side))
    return image, " ".join(notes), (w, h)


def _pil_to_array(image) -> np.ndarray:
    """A decoded Pillow image -> numpy, keeping 16-bit and alpha for :func:`to_rgb8`."""
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit greyscale: convert("RGB") would clip at 255
        return np.array(image)  # (a writable copy: torch refuses read-only arrays)
    if "A" in image.getbands() or "transparency" in image.info:
        return np.array(image.convert("RGBA"))
    return np.array(image.convert("RGB"))


def to_rgb8(image, max_side: int | None = None) -> tuple[np.ndarray, str]:
    """Any image array (H x W, H x W x 1/2/3/4; uint8, 16-bit, float or bool) -> H x W x 3 uint8 of at
    most ``max_side`` px (default ``MAX_SIDE``; 0: no limit), and a note ("" when only the format changed).

    Transparent pixels are shown over white (as Gradio's editor and image viewers do); 16-bit
    values are scaled to 8 bits; floats in [0, 1] are scaled by 255, other floats clipped."""
    import cv2

    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise UserError(f"Cannot use an image of shape {image.shape}: give an RGB or greyscale image.")
    if min(image.shape[:2]) < MIN_SIDE:
        raise UserError(f"The image is {image.shape[1]}x{image.shape[0]} px (shape {image.shape}): it must be at "
                        f"least {MIN_SIDE} px on each side.")
    if image.dtype != np.uint8:
        values = np.nan_to_num(image.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if np.issubdtype(image.dtype, np.floating):
            scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        else:  # integers: 16-bit data (PNG, TIFF) is scaled, 8-bit values in wider types are kept
            scale = 1 / 257 if image.dtype == np.uint16 or values.max(initial=0) > 255 else 1.0
        image = np.clip(values * scale, 0, 255).round().astype(np.uint8)
    colour = np.repeat(image[..., :1], 3, axis=2) if image.shape[2] <= 2 else image[..., :3]
    if image.shape[2] in (2, 4):  # alpha over white
        alpha = image[..., -1:].astype(np.float32) / 255.0
        colour = (colour.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    note = ""
    h, w = colour.shape[:2]
    max_side = MAX_SIDE if max_side is None else max_side
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s)))
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_AREA)
        note = _resized_note((w, h), size, max_side)
    return np.ascontiguousarray(colour), note


def _resized_note(before: tuple[int, int], after: tuple[int, int], max_side: int) -> str:
    return (f"Resized from {before[0]}x{before[1]} to {after[0]}x{after[1]} (the app works on at most "
            f"{max_side} px).")


# ---------------------------------------------------------------------------------------------
# Attack settings
# ---------------------------------------------------------------------------------------------

QUOTE_CHARS = 60  # user text quoted back in a message is cut to this many characters


def quoted(value, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message repeats what the user sent, not all of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _number(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number (got {quoted(value)}).") from None
    if not math.isfinite(number):
        raise UserError(f"{what} must be a finite number (got {quoted(value)}).")
    return number


def check_eps255(value) -> float:
    eps = _number(value, "ε")
    if not 0 < eps <= MAX_EPS255:
        raise UserError(f"ε must be more than 0 and at most {MAX_EPS255}/255 (got {eps:g}/255).")
    return eps


def whole_number(value, what: str, low: int, high: int, env: str = "") -> int:
    """``value`` as an int in [low, high]; a UserError naming ``what`` (and the variable ``env`` that sets
    ``high``) otherwise."""
    number = _number(value, what)
    if number != int(number) or not low <= number <= high:
        limit = f" ({env})" if env else ""
        raise UserError(f"{what} must be a whole number from {low} to {high}{limit} (got {quoted(value)}).")
    return int(number)


def check_steps(value) -> int:
    return whole_number(value, "Steps", 1, MAX_STEPS, "SAMDEMO_MAX_STEPS")


def check_train_steps(value) -> int:
    return whole_number(value, "Training steps", 1, MAX_TRAIN_STEPS, "SAMDEMO_MAX_TRAIN_STEPS")


def check_seed(value) -> int:
    return 0 if value is None else whole_number(value, "The seed", 0, MAX_SEED)


# ---------------------------------------------------------------------------------------------
# Time and memory
# ---------------------------------------------------------------------------------------------

def with_time_limit(progress: Callable | None, seconds: float, what: str = "attack") -> Callable:
    """Wrap an attack's progress callback (``progress(t, T)``, the transfer matrix's
    ``progress(label, t, T)`` or training's ``progress(t, T, stage=text)``, called after every step) so that it stops the attack with
    :class:`TimeLimitExceeded` once ``seconds`` have passed since this call. A step that started
    before the limit finishes first."""
    start = time.monotonic()

    def update(*args, **kwargs) -> None:
        if progress is not None:
            progress(*args, **kwargs)
        elapsed = time.monotonic() - start
        if elapsed > seconds:
            step, total = args[-2], args[-1]
            raise TimeLimitExceeded(
                f"The {what} was stopped after {elapsed:.1f} s, at step {step} of {total}: a request may run "
                f"for at most {seconds:g} s here. Try fewer steps, a smaller image or a smaller model.")
    return update


def is_out_of_memory(error: BaseException) -> bool:
    """GPU (torch.OutOfMemoryError) or CPU memory exhausted."""
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def out_of_memory_message(error: BaseException) -> str:
    """What to tell the user; also frees what can be freed, so that the next request has room."""
    import gc

    import torch

    gc.collect()
    where = "GPU memory" if isinstance(error, torch.OutOfMemoryError) else "memory"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return f"Out of {where}: try fewer steps, a smaller image, or a smaller model (sam-small or sam2-small)."
