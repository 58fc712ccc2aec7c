"""An independent scene generator, for evaluation only: easy scenes a real SAM segments almost
perfectly, drawn by code that shares nothing with the training generator (``samdemo.scenes``).

Each scene is a smooth background (a linear or radial blend of two colours) with 2 to 6
objects: flat or lightly textured shapes with holes (rings, frames), concavities (crescents,
L and U shapes, stars), thin parts (bars, crosses) and letters and digits (OpenCV's Hershey
fonts, thick strokes). Every object differs clearly in colour from what lies under it, and
later objects may occlude earlier ones: masks are the visible parts, objects left with less
than ``MIN_VISIBLE`` of their area or under 60 pixels are dropped.

Models are never trained on these scenes; they measure whether what a model learned carries
over to another source of images (``benchmarks/model_quality.py``, ``--data shapes:N``).
Seeds are independent of the training and held-out seeds of ``samdemo.scenes``.
"""

from __future__ import annotations

import string

import cv2
import numpy as np

from samdemo.scenes import Scene

SHAPES_SEED_START = 7_000_000_000  # far from every seed of samdemo.scenes
MIN_VISIBLE = 0.6  # fraction of an object's own area that must stay visible
MIN_COLOUR_DISTANCE = 80.0  # Euclidean RGB distance between an object and what it covers
KINDS = ("disk", "ring", "rectangle", "frame", "triangle", "star", "crescent", "l_shape", "u_shape",
         "cross", "bar", "glyph")
GLYPHS = string.ascii_uppercase + string.digits


def independent_scenes(n: int, size: int = 256) -> list[Scene]:
    """The first ``n`` evaluation scenes of this generator at ``size`` x ``size``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [shapes_scene(SHAPES_SEED_START + i, size) for i in range(int(n))]


def shapes_scene(seed: int, size: int = 256) -> Scene:
    """One scene: image (size, size, 3) uint8 RGB, masks (N, size, size) bool, N >= 1."""
    rng = np.random.default_rng(int(seed))
    while True:
        image, masks = _draw(rng, int(size))
        if len(masks):
            return Scene(image=image, masks=masks, seed=int(seed))


def _random_colour(rng) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _distinct_colour(rng, under: np.ndarray) -> np.ndarray:
    """A colour at least MIN_COLOUR_DISTANCE from the mean colour ``under`` the object."""
    for _ in range(100):
        colour = _random_colour(rng)
        if np.linalg.norm(colour - under) >= MIN_COLOUR_DISTANCE:
            return colour
    return 255.0 - under  # the complement is always far enough from a mid-range colour


def _background(rng, size: int) -> np.ndarray:
    a, b = _random_colour(rng), _random_colour(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.clip(np.hypot(xx - cx, yy - cy) / 1.2, 0, 1)
    return a * (1 - t[..., None]) + b * t[..., None]


def _shape_mask(rng, kind: str, size: int) -> np.ndarray:
    """A binary mask of one object, placed at random, at most about a third of the image wide."""
    m = np.zeros((size, size), np.uint8)
    r = rng.uniform(0.08, 0.2) * size
    cx, cy = rng.uniform(r, size - r, 2)
    centre = (int(cx), int(cy))
    angle = rng.uniform(0, 180)
    if kind in ("disk", "ring", "crescent"):
        axes = (int(r), int(r * rng.uniform(0.6, 1.0)))
        cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1)
        if kind == "ring":
            cv2.ellipse(m, centre, (int(axes[0] * 0.55), int(axes[1] * 0.55)), angle, 0, 360, 0, -1)
        elif kind == "crescent":
            shift = r * rng.uniform(0.35, 0.6)
            bite = (int(cx + shift * np.cos(np.radians(angle))), int(cy + shift * np.sin(np.radians(angle))))
            cv2.ellipse(m, bite, axes, angle, 0, 360, 0, -1)
    elif kind in ("rectangle", "frame", "bar", "cross"):
        long_side = 2 * r
        short_side = long_side * (rng.uniform(0.12, 0.2) if kind in ("bar", "cross") else rng.uniform(0.5, 1.0))
        rect = (centre, (long_side, short_side), angle)
        cv2.fillPoly(m, [cv2.boxPoints(rect).astype(np.int32)], 1)
        if kind == "cross":
            rect = (centre, (long_side, short_side), angle + 90)
            cv2.fillPoly(m, [cv2.boxPoints(rect).astype(np.int32)], 1)
        elif kind == "frame":
            inner = (centre, (long_side * 0.6, short_side * 0.5), angle)
            cv2.fillPoly(m, [cv2.boxPoints(inner).astype(np.int32)], 0)
    elif kind in ("triangle", "star"):
        points = 3 if kind == "triangle" else int(rng.integers(5, 8))
        angles = np.radians(angle) + np.arange(points * (1 if kind == "triangle" else 2)) * np.pi / (
            points / 2 if kind == "triangle" else points)
        radii = np.full(len(angles), r) if kind == "triangle" else np.where(np.arange(len(angles)) % 2, r * 0.45, r)
        poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(m, [poly.astype(np.int32)], 1)
    elif kind in ("l_shape", "u_shape"):
        s, t = 2 * r, 2 * r * rng.uniform(0.25, 0.35)
        parts = [(0, 0, t, s), (0, s - t, s, t)] if kind == "l_shape" else [(0, 0, t, s), (0, s - t, s, t), (s - t, 0, t, s)]
        rotation = cv2.getRotationMatrix2D((s / 2, s / 2), angle, 1.0)
        rotation[:, 2] += [cx - s / 2, cy - s / 2]
        for x, y, w, h in parts:
            corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
            placed = corners @ rotation[:, :2].T + rotation[:, 2]
            cv2.fillPoly(m, [placed.astype(np.int32)], 1)
    else:  # glyph: a thick letter or digit
        glyph = GLYPHS[int(rng.integers(len(GLYPHS)))]
        font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
        scale = 2 * r / 22.0
        thickness = max(2, int(round(scale * 3)))
        (w, h), _ = cv2.getTextSize(glyph, font, scale, thickness)
        cv2.putText(m, glyph, (int(cx - w / 2), int(cy + h / 2)), font, scale, 1, thickness, cv2.LINE_8)
    return m.astype(bool)


def _draw(rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = _background(rng, size)
    owners = np.full((size, size), -1, np.int32)
    areas = []
    for index in range(int(rng.integers(2, 7))):
        mask = _shape_mask(rng, str(rng.choice(KINDS)), size)
        if mask.sum() < 60:
            continue
        colour = _distinct_colour(rng, image[mask].mean(0))
        if rng.random() < 0.3:  # lightly textured: gentle stripes of the same hue
            yy, xx = np.nonzero(mask)
            period, phase = rng.uniform(6, 14), rng.uniform(0, 2 * np.pi)
            stripes = 18 * np.sin(2 * np.pi * (xx + yy) / period + phase)
            image[yy, xx] = np.clip(colour + stripes[:, None], 0, 255)
        else:
            image[mask] = colour
        owners[mask] = len(areas)
        areas.append(int(mask.sum()))
    masks = [owners == k for k in range(len(areas))]
    kept = [m for m, area in zip(masks, areas) if m.sum() >= max(60, MIN_VISIBLE * area)]
    image = np.clip(image + rng.normal(0, 2.0, image.shape), 0, 255).astype(np.uint8)
    return image, np.array(kept, bool).reshape(-1, size, size)
