"""Seeded procedural scenes for training and evaluating small SAM / SAM 2 models.

Every scene is a pure function of its integer seed: all randomness comes from
``np.random.default_rng(seed)``, so the same seed yields bit-identical arrays on
the same platform and numpy / OpenCV versions.  The distribution is built so
that a model has to learn object *boundaries*:

* background: a jittered crop of a bundled scikit-image photo, a procedural
  texture (multi-octave value noise, stripes, checker, marble, spots,
  gradients) or a flat colour with low-frequency variation;
* 2-8 objects drawn back to front with occlusion: ellipses, convex and concave
  polygons, stars, blobs, crescents, rings with holes (the hole shows what is
  behind), bars, arcs and curvy strokes; sometimes an object is nested inside
  an earlier one.  Fills are flat colours, procedural textures, photo patches
  or *camouflage* fills taken from the background (or the parent object), so
  that colour alone often does not separate an object from its surroundings;
* anti-aliased edges, optional shading, rim darkening and soft drop shadows;
* global lighting gradient, occasional mild blur and mild Gaussian pixel noise
  (sigma <= 4/255) only.

Ground truth: ``Scene.masks[i]`` is the visible part of instance ``i`` after
occlusion (pixels where that object's anti-aliased coverage is >= 0.5 and no
later object covers it), in drawing order (back to front).  Instances with a
visible area below 0.4 % of the image, or broken into tiny fragments, are
dropped (their pixels stay in the image, unlabelled).

Photos (loaded lazily from the files shipped inside the scikit-image wheel, no
download; licences as stated in the ``skimage.data`` docstrings -- the
``skimage/data/README.txt`` in the wheel carries no per-image licence):
astronaut, rocket, hubble_deep_field: public domain (NASA / SpaceX);
coffee, chelsea, camera, retina, brick, grass, gravel: CC0;
clock: released into the public domain by the photographer;
immunohistochemistry, coins: "no known copyright restrictions".
"""

# Speed: mean 3.1-3.4 ms per 256x256 scene (128px: 1.7 ms, 512px: 11.6 ms,
# 1024px: 52 ms), photos already cached, one core of the 2-core dev box while
# another job kept it busy (load average ~6), measured with
#   taskset -c 0 python -m samdemo.scenes --bench 2000 [--size N]
# (the --bench path calls cv2.setNumThreads(1)).

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "Scene",
    "make_scene",
    "train_scene",
    "validation_scenes",
    "test_scenes",
    "SPLITS",
    "TRAIN_SEED_START",
    "HELDOUT_SEED_START",
    "VALIDATION_SEED_START",
    "TEST_SEED_START",
    "MIN_AREA_FRAC",
]

TRAIN_SEED_START = 0
HELDOUT_SEED_START = 1_000_000_000
# Held-out seeds split in two. Validation: every choice (checkpoints, adapter variants, attack
# settings, training logs). Test: reported once, never used to choose anything.
VALIDATION_SEED_START = HELDOUT_SEED_START
TEST_SEED_START = HELDOUT_SEED_START + 500_000_000
MIN_AREA_FRAC = 0.004  # minimum visible area of a kept instance, fraction of H*W
MIN_SIZE = 32
MIN_EDGE_JUMP = 10.0  # min mean |colour jump| (0..255 scale, per channel) across an object's rim

_F32 = np.float32
_SHIFT = 4  # fixed-point bits for sub-pixel cv2 drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True, eq=False)
class Scene:
    """One generated scene.

    image: (H, W, 3) uint8, RGB, row-major (row = y, column = x), H == W == size.
    masks: (N, H, W) bool, N >= 1; masks[i] is the visible region of instance i
        (after occlusion) in the same pixel frame as ``image``; instances are in
        drawing order (back to front), masks are pairwise disjoint and each covers
        at least ``MIN_AREA_FRAC`` of the image.
    seed: the seed passed to ``make_scene``.
    """

    image: np.ndarray
    masks: np.ndarray
    seed: int

    def __post_init__(self) -> None:
        im, m = self.image, self.masks
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"image must be HxWx3 uint8, got {im.shape} {im.dtype}")
        if m.ndim != 3 or m.shape[1:] != im.shape[:2] or m.dtype != np.bool_ or len(m) < 1:
            raise ValueError(f"masks must be NxHxW bool with N >= 1, got {m.shape} {m.dtype}")


# ----------------------------------------------------------------------------
# Photos (lazy, cached)
# ----------------------------------------------------------------------------

# name -> sampling weight
_PHOTO_NAMES = {
    "astronaut": 1.0,
    "coffee": 1.0,
    "chelsea": 1.0,
    "rocket": 1.0,
    "immunohistochemistry": 1.0,
    "hubble_deep_field": 0.5,
    "retina": 0.6,
    "camera": 1.0,
    "brick": 1.0,
    "grass": 1.0,
    "gravel": 1.0,
    "coins": 0.8,
    "clock": 0.5,
}
_PHOTOS: list[list[np.ndarray]] | None = None  # per photo: pyramid levels (uint8)
_PHOTO_P: np.ndarray | None = None


def _load_photos() -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Load the bundled photos once; returns per-photo pyramids and probabilities.

    Each pyramid level is uint8, (h, w, 3) RGB or (h, w) grey; level k is the
    photo downsampled by 2**k (levels are kept while min side >= 96 px).
    """
    global _PHOTOS, _PHOTO_P
    if _PHOTOS is None:
        import skimage.data as skd

        photos, weights = [], []
        for name, wgt in _PHOTO_NAMES.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    a = np.asarray(getattr(skd, name)())
            except Exception:  # not bundled / needs download -> skip quietly
                continue
            if a.dtype != np.uint8 or a.ndim not in (2, 3):
                continue
            if a.ndim == 3:
                a = np.ascontiguousarray(a[..., :3])
            levels = [a]
            while min(levels[-1].shape[:2]) >= 192:
                levels.append(cv2.pyrDown(levels[-1]))
            photos.append(levels)
            weights.append(wgt)
        p = np.asarray(weights, np.float64)
        _PHOTO_P = p / p.sum() if len(p) else p
        _PHOTOS = photos
    return _PHOTOS, _PHOTO_P


# ----------------------------------------------------------------------------
# Colours and textures. All images are float32 in [0, 255] (nominal).
# ----------------------------------------------------------------------------


def _hsv(h, s, v) -> np.ndarray:
    """HSV in [0,1] (arrays of equal length k) -> (k, 3) float32 RGB in [0,255]."""
    hsv = np.stack([np.asarray(h) * 360.0, s, v], -1).astype(_F32)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0] * 255.0


def _palette(rng, k: int, src: np.ndarray | None = None) -> np.ndarray:
    """k colours, (k, 3) float32.  With ``src`` ((M,3) pixels) colours are
    sampled from it (plus small perturbation) so the palette matches it."""
    if src is not None and len(src):
        cols = src[rng.integers(0, len(src), k)].astype(_F32)
        return np.clip(cols + rng.normal(0, 12, (k, 3)).astype(_F32), 0, 255)
    mode = rng.random()
    h0 = rng.random()
    if mode < 0.4:  # analogous hues, varied brightness
        h = (h0 + rng.normal(0, 0.06, k)) % 1.0
        s = np.clip(rng.random() * 0.9 + rng.normal(0, 0.1, k), 0, 1)
        v = rng.uniform(0.1, 1.0, k)
    elif mode < 0.6:  # monochrome ramp
        h = np.full(k, h0)
        s = np.full(k, rng.random() ** 1.5)
        v = np.sort(rng.uniform(0.05, 1.0, k))
    else:  # unrelated colours, mostly muted
        h = rng.random(k)
        s = rng.random(k) ** 1.3
        v = rng.uniform(0.1, 1.0, k) ** 0.7
    return _hsv(h, s, v)


def _lut(cols: np.ndarray) -> np.ndarray:
    """(k,3) colours -> (1,256,3) float32 LUT interpolating them."""
    k = len(cols)
    x = np.linspace(0.0, 1.0, 256)
    xp = np.linspace(0.0, 1.0, k)
    lut = np.stack([np.interp(x, xp, cols[:, c]) for c in range(3)], -1)
    return lut.astype(_F32)[None]


def _colorize(t: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Scalar field t (h,w) in [0,1] -> (h,w,3) float32 through a colour ramp."""
    idx = np.clip(t * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(cv2.merge([idx, idx, idx]), _lut(cols))


def _normalize(t: np.ndarray) -> np.ndarray:
    lo, hi = cv2.minMaxLoc(t)[:2]
    return (t - lo) * (1.0 / max(hi - lo, 1e-6))


def _fbm(rng, h: int, w: int, cell: float, octaves: int, persist: float) -> np.ndarray:
    """Multi-octave value noise, (h,w) float32 normalised to [0,1].
    ``cell`` is the feature size of the first octave in pixels."""
    out = np.zeros((h, w), _F32)
    amp = 1.0
    for _ in range(octaves):
        if cell < 1.5:
            break
        gh = int(min(h, max(2, round(h / cell) + 2)))
        gw = int(min(w, max(2, round(w / cell) + 2)))
        g = rng.random((gh, gw), dtype=_F32)
        out += amp * cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= persist
        cell *= 0.5
    return _normalize(out)


def _coords(rng, h: int, w: int):
    """Rotated coordinates (u, v) for a random angle, as broadcastable float32."""
    th = rng.uniform(0, np.pi)
    c, s = np.float32(np.cos(th)), np.float32(np.sin(th))
    x = np.arange(w, dtype=_F32)[None, :]
    y = np.arange(h, dtype=_F32)[:, None]
    return x * c + y * s, y * c - x * s


def _texture(rng, h: int, w: int, size: int, cols: np.ndarray | None = None) -> np.ndarray:
    """A random procedural texture, (h,w,3) float32.  Feature sizes scale with
    the scene ``size`` so textures look alike at every resolution."""
    if cols is None:
        cols = _palette(rng, int(rng.integers(2, 5)))
    kind = rng.choice(6, p=[0.3, 0.17, 0.12, 0.13, 0.13, 0.15])
    if kind == 0:  # fbm value noise
        t = _fbm(rng, h, w, size * rng.uniform(0.02, 0.3), int(rng.integers(2, 6)),
                 rng.uniform(0.35, 0.7))
        t = np.clip((t - 0.5) * rng.uniform(1.0, 2.2) + 0.5, 0, 1)
    elif kind in (1, 2):  # stripes / checker, optionally warped
        u, v = _coords(rng, h, w)
        period = size * rng.uniform(0.015, 0.12)
        if rng.random() < 0.4:
            u = u + (_fbm(rng, h, w, size * 0.2, 2, 0.5) - 0.5) * period * rng.uniform(0.5, 3)
        k = rng.uniform(1.0, 10.0)
        if kind == 1:
            s = np.sin(u * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 6.3)))
        else:
            p2 = period * rng.uniform(0.7, 1.5)
            s = np.sin(u * np.float32(np.pi / period)) * np.sin(v * np.float32(np.pi / p2))
        t = 0.5 + 0.5 * np.clip(k * s, -1, 1)
    elif kind == 3:  # marble: sine of noise-warped coordinate
        u, _ = _coords(rng, h, w)
        period = size * rng.uniform(0.04, 0.25)
        n = _fbm(rng, h, w, size * rng.uniform(0.1, 0.4), 4, 0.5)
        t = 0.5 + 0.5 * np.sin(u * np.float32(2 * np.pi / period) + n * np.float32(rng.uniform(3, 12)))
    elif kind == 4:  # spots / blobs: thresholded noise
        n = _fbm(rng, h, w, size * rng.uniform(0.03, 0.15), 3, 0.5)
        t = np.clip((n - rng.uniform(0.35, 0.65)) * rng.uniform(4, 20) + 0.5, 0, 1)
    else:  # linear or radial gradient (+ a little noise)
        if rng.random() < 0.5:
            u, _ = _coords(rng, h, w)
            t = _normalize(u)
        else:
            x = np.arange(w, dtype=_F32)[None, :] - np.float32(rng.uniform(0, w))
            y = np.arange(h, dtype=_F32)[:, None] - np.float32(rng.uniform(0, h))
            t = _normalize(np.sqrt(x * x + y * y))
        t = 0.85 * t + 0.15 * _fbm(rng, h, w, size * 0.1, 3, 0.5)
    img = _colorize(t.astype(_F32, copy=False), cols)
    if rng.random() < 0.5:  # fine grain modulation
        g = _fbm(rng, h, w, size * rng.uniform(0.01, 0.04), 2, 0.5)
        img *= (1.0 + np.float32(rng.uniform(0.05, 0.25)) * (g - 0.5))[..., None]
    return img


def _jitter(rng, img: np.ndarray) -> np.ndarray:
    """Colour jitter (saturation, contrast, brightness, channel gains and rarely
    a channel permutation) as one affine colour transform, (h,w,3) float32."""
    sat = rng.uniform(0.5, 1.3)
    gain = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.75, 1.3)
    con = rng.uniform(0.7, 1.3)
    bright = rng.uniform(-20, 20)
    perm = rng.permutation(3) if rng.random() < 0.1 else np.arange(3)
    S = sat * np.eye(3) + (1.0 - sat) / 3.0  # saturation about the channel mean
    mean = np.asarray(cv2.mean(img)[:3])
    M = np.empty((3, 4))
    M[:, :3] = con * S
    M[:, 3] = (gain - con) * (S @ mean) + bright
    return cv2.transform(img, M[perm].astype(_F32))


def _photo_patch(rng, h: int, w: int, size: int) -> np.ndarray | None:
    """A random crop of a bundled photo resized to (h,w,3) float32, colour
    jittered; grey photos are usually colourised.  None if no photo loads."""
    photos, p = _load_photos()
    if not photos:
        return None
    levels = photos[int(rng.choice(len(photos), p=p))]
    rot = rng.random() < 0.25
    oh, ow = (w, h) if rot else (h, w)
    base = levels[0]
    # photo pixels per output pixel, relative to fitting the photo to `size`
    z = min(base.shape[:2]) / size * np.exp(rng.uniform(np.log(0.3), 0.0))
    z = min(z, base.shape[0] / oh, base.shape[1] / ow)
    lvl = 0
    while lvl + 1 < len(levels) and z >= 2.0:
        z *= 0.5
        lvl += 1
    src = levels[lvl]
    ch = max(2, min(src.shape[0], int(round(oh * z))))
    cw = max(2, min(src.shape[1], int(round(ow * z))))
    y = int(rng.integers(0, src.shape[0] - ch + 1))
    x = int(rng.integers(0, src.shape[1] - cw + 1))
    crop = cv2.resize(src[y:y + ch, x:x + cw], (ow, oh), interpolation=cv2.INTER_LINEAR)
    if rot:
        crop = cv2.rotate(crop, cv2.ROTATE_90_CLOCKWISE)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.3:
        crop = crop[::-1]
    if crop.ndim == 2:
        if rng.random() < 0.75:
            cols = _palette(rng, 2)
            cols = cols[np.argsort(cols.sum(1))]
            img = _colorize(crop.astype(_F32) * np.float32(1 / 255), cols)
            # keep some of the original luminance detail
            img = 0.6 * img + 0.4 * crop.astype(_F32)[..., None] * (np.float32(img.mean() / max(crop.mean(), 1.0)))
        else:
            img = np.repeat(crop[..., None], 3, axis=2).astype(_F32)
    else:
        img = crop.astype(_F32)
    return _jitter(rng, img)


def _flat(rng, h: int, w: int, size: int, col: np.ndarray) -> np.ndarray:
    """Flat colour with subtle low-frequency variation, (h,w,3) float32."""
    img = np.empty((h, w, 3), _F32)
    img[:] = col
    if rng.random() < 0.7:
        n = _fbm(rng, h, w, size * rng.uniform(0.1, 0.5), 3, 0.5) - 0.5
        img += (n * np.float32(rng.uniform(4, 24)))[..., None]
    return img


def _background(rng, size: int, easy: bool = False) -> np.ndarray:
    r = rng.random()
    if easy:
        return _flat(rng, size, size, size, _palette(rng, 1)[0])
    if r < 0.45:
        img = _photo_patch(rng, size, size, size)
        if img is not None:
            return img
    if r < 0.9:
        return _texture(rng, size, size, size)
    return _flat(rng, size, size, size, _palette(rng, 1)[0])


# ----------------------------------------------------------------------------
# Shapes. Each draws into a uint8 canvas `m` whose pixel (0,0) is image pixel
# (ox, oy); the shape fits in the disc of radius r around (cx, cy).
# ----------------------------------------------------------------------------


def _fx(pts: np.ndarray, ox: int, oy: int) -> np.ndarray:
    """Float image coords (k,2) xy -> fixed-point int32 canvas coords."""
    q = (pts - np.array([ox, oy], np.float64)) * _ONE
    return np.round(q).astype(np.int32)


def _fill_poly(m, pts, ox, oy, val=255):
    cv2.fillPoly(m, [_fx(pts, ox, oy)], val, cv2.LINE_AA, _SHIFT)


def _ellipse(m, c, axes, ang, ox, oy, val=255, thick=-1, a0=0.0, a1=360.0):
    cc = tuple(int(v) for v in _fx(np.array([c]), ox, oy)[0])
    ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(m, cc, ax, float(ang), float(a0), float(a1), val, thick, cv2.LINE_AA, _SHIFT)


def _radial_pts(cx, cy, radii, angles, rot):
    a = angles + rot
    return np.stack([cx + radii * np.cos(a), cy + radii * np.sin(a)], -1)


def _shape(rng, kind: str, m, cx, cy, r, ox, oy, size) -> None:
    rot = rng.uniform(0, 2 * np.pi)
    if kind == "ellipse":
        asp = rng.uniform(1.0, 2.0) if rng.random() < 0.7 else rng.uniform(2.0, 6.0)
        _ellipse(m, (cx, cy), (r, r / asp), np.degrees(rot), ox, oy)
    elif kind == "convex":
        n = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = _radial_pts(cx, cy, r * rng.uniform(0.75, 1.0, n), ang, rot)
        if rng.random() < 0.3:  # rectangle-ish
            ang = np.array([0.0, 1.0, 2.0, 3.0]) * np.pi / 2 + rng.uniform(-0.5, 0.5, 4) * 0.4
            asp = rng.uniform(1.0, 3.0)
            pts = _radial_pts(0, 0, np.full(4, r), ang + np.pi / 4, 0.0)
            pts[:, 1] /= asp
            c, s = np.cos(rot), np.sin(rot)
            pts = pts @ np.array([[c, s], [-s, c]]) + [cx, cy]
        hull = cv2.convexHull(pts.astype(np.float32))[:, 0].astype(np.float64)
        _fill_poly(m, hull, ox, oy)
    elif kind == "concave":
        n = int(rng.integers(5, 13))
        ang = np.sort((np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n))
        _fill_poly(m, _radial_pts(cx, cy, r * rng.uniform(0.3, 1.0, n), ang, rot), ox, oy)
    elif kind == "star":
        n = int(rng.integers(4, 10))
        inner = rng.uniform(0.3, 0.65)
        rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner) * rng.uniform(0.9, 1.0, 2 * n) * r
        _fill_poly(m, _radial_pts(cx, cy, rad, np.arange(2 * n) * (np.pi / n), rot), ox, oy)
    elif kind == "blob":
        k = np.arange(1, 6)[:, None]
        ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        amp = rng.uniform(0, 1, (5, 1)) * (0.35 / k)
        rad = 1.0 + (amp * np.cos(k * ang + rng.uniform(0, 2 * np.pi, (5, 1)))).sum(0)
        _fill_poly(m, _radial_pts(cx, cy, r * rad / rad.max(), ang, rot), ox, oy)
    elif kind == "crescent":
        r2 = r * rng.uniform(0.6, 0.95)
        d = r * rng.uniform(0.35, 0.8)
        _ellipse(m, (cx, cy), (r, r), 0, ox, oy)
        _ellipse(m, (cx + d * np.cos(rot), cy + d * np.sin(rot)), (r2, r2), 0, ox, oy, val=0)
    elif kind == "ring":
        hole = rng.uniform(0.35, 0.75)
        if rng.random() < 0.6:
            asp = rng.uniform(1.0, 1.8)
            _ellipse(m, (cx, cy), (r, r / asp), np.degrees(rot), ox, oy)
            off = r * (1 - hole) * 0.4 * rng.uniform(-1, 1, 2)
            _ellipse(m, (cx + off[0], cy + off[1]), (r * hole, r * hole / asp),
                     np.degrees(rot), ox, oy, val=0)
        else:  # polygonal frame
            n = int(rng.integers(3, 9))
            ang = np.arange(n) * (2 * np.pi / n)
            _fill_poly(m, _radial_pts(cx, cy, np.full(n, r), ang, rot), ox, oy)
            _fill_poly(m, _radial_pts(cx, cy, np.full(n, r * hole), ang, rot), ox, oy, 0)
    elif kind == "bar":
        L = r * rng.uniform(0.7, 1.0)
        t = max(1.5, size * rng.uniform(0.008, 0.035))
        pts = np.array([[-L, -t], [L, -t], [L, t], [-L, t]], np.float64)
        c, s = np.cos(rot), np.sin(rot)
        _fill_poly(m, pts @ np.array([[c, s], [-s, c]]) + [cx, cy], ox, oy)
    elif kind == "arc":
        asp = rng.uniform(1.0, 2.0)
        thick = max(3, int(round(size * rng.uniform(0.012, 0.05))))
        rr = r - thick / 2
        span = rng.uniform(90, 300)
        a0 = rng.uniform(0, 360)
        _ellipse(m, (cx, cy), (rr, rr / asp), np.degrees(rot), ox, oy, thick=thick, a0=a0, a1=a0 + span)
    else:  # "stroke": smooth random curve
        n = 48
        t = np.linspace(0, 1, n)
        head = rot + rng.normal(0, 2.5) * t + rng.uniform(0.5, 2.5) * np.sin(
            2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi))
        pts = np.cumsum(np.stack([np.cos(head), np.sin(head)], -1), 0)
        pts -= pts.mean(0)
        thick = max(3, int(round(size * rng.uniform(0.012, 0.04))))
        pts *= (r - thick / 2) / max(np.sqrt((pts ** 2).sum(1)).max(), 1e-6)
        cv2.polylines(m, [_fx(pts + [cx, cy], ox, oy)], False, 255, thick, cv2.LINE_AA, _SHIFT)


_KINDS = ("ellipse", "convex", "concave", "star", "blob", "crescent", "ring", "bar", "arc", "stroke")
_KIND_P = np.array([0.15, 0.13, 0.12, 0.09, 0.13, 0.05, 0.11, 0.08, 0.06, 0.08])
_KIND_P /= _KIND_P.sum()
_THIN = {"bar", "arc", "stroke"}
_NEST_KINDS = ("ellipse", "convex", "concave", "star", "blob", "ring")


# ----------------------------------------------------------------------------
# Scene assembly
# ----------------------------------------------------------------------------


def _fill(rng, h, w, size, bg_win, ctx_pix, parent_fill, easy: bool = False):
    """Fill image (h,w,3) float32 for an object, and whether it is a camouflage fill.

    bg_win: callable -> (h,w,3) window of the background taken elsewhere
    ctx_pix: (M,3) pixels around the object (for colour-matched palettes)
    parent_fill: fill of the enclosing object for nested objects, else None
    """
    r = rng.random()
    if easy:  # a flat colour of its own
        return _flat(rng, h, w, size, _palette(rng, 1)[0]), False
    if r < 0.16:  # flat colour (sometimes picked from the surroundings)
        src = ctx_pix if rng.random() < 0.4 else None
        return _flat(rng, h, w, size, _palette(rng, 1, src)[0]), False
    if r < 0.46:  # procedural texture
        return _texture(rng, h, w, size), False
    if r < 0.7:  # photo patch
        img = _photo_patch(rng, h, w, size)
        return (img if img is not None else _texture(rng, h, w, size)), False
    if r < 0.85:  # camouflage: same texture as the surroundings, from elsewhere
        if parent_fill is not None:
            src = parent_fill[::-1, ::-1] if rng.random() < 0.5 else parent_fill
            img = cv2.resize(np.ascontiguousarray(src), (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            img = bg_win()
        f = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.15)
        return img * np.float32(f) + rng.uniform(-8, 8, 3).astype(_F32), True
    # colour-matched: a different texture in the local colours
    return _texture(rng, h, w, size, _palette(rng, int(rng.integers(2, 4)), ctx_pix)), False


def _shade(rng, fill, alpha, size):
    """Optional shading gradient and rim darkening/brightening, in place."""
    h, w = alpha.shape
    if rng.random() < 0.35:
        u, _ = _coords(rng, h, w)
        u = _normalize(u) - 0.5
        fill *= (1.0 + np.float32(rng.uniform(0.1, 0.45)) * u)[..., None]
    if rng.random() < 0.2:
        k = max(3, int(size * rng.uniform(0.008, 0.02)) * 2 + 1)
        er = cv2.erode(alpha, np.ones((k, k), np.uint8))
        rim = (alpha.astype(_F32) - er.astype(_F32)) * np.float32(1 / 255)
        f = np.float32(rng.uniform(0.55, 0.85) if rng.random() < 0.75 else rng.uniform(1.15, 1.35))
        fill *= (1.0 + (f - 1.0) * rim)[..., None]
    return fill


def _ensure_edge(rng, fill: np.ndarray, under: np.ndarray, m: np.ndarray) -> None:
    """Guarantee a visible boundary: if the mean colour jump between ``fill`` and
    what lies ``under`` it, over the anti-aliased rim pixels of ``m``, is below
    MIN_EDGE_JUMP, shift the fill's brightness (in place) until it is not."""
    edge = (m > 0) & (m < 255)
    if not edge.any():
        return
    under_e = under[edge]
    lum = float(under_e.mean())
    for attempt in range(3):
        diff = fill[edge] - under_e
        if float(np.abs(diff).mean()) >= MIN_EDGE_JUMP:
            return
        signed = float(diff.mean())
        up = signed > 0 if abs(signed) > 2 else lum < 128
        if attempt == 1:  # first push was eaten by clipping: go the other way
            up = not up
        if attempt == 2:
            up = lum < 128
        step = np.float32(rng.uniform(MIN_EDGE_JUMP, 3 * MIN_EDGE_JUMP) * (1 + attempt))
        fill += step if up else -step
        np.clip(fill, 0, 255, out=fill)


def _generate(rng, size: int, easy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    area = size * size
    min_area = MIN_AREA_FRAC * area
    bg = _background(rng, size, easy)
    img = bg.copy()
    owner = np.full((size, size), -1, np.int16)
    n_obj = int(rng.integers(2, 9))
    objs = []  # (x0, y0, x1, y1, coverage canvas uint8, fill, own pixel count)

    def bg_window(h, w):
        y = int(rng.integers(0, size - h + 1))
        x = int(rng.integers(0, size - w + 1))
        win = bg[y:y + h, x:x + w]
        if rng.random() < 0.5:
            win = win[::-1]
        if rng.random() < 0.5:
            win = win[:, ::-1]
        return win

    for _ in range(n_obj):
        parent = None
        if objs and rng.random() < 0.2:  # nest inside a random earlier object, if roomy
            cand = objs[int(rng.integers(len(objs)))]
            dist = cv2.distanceTransform((cand[4] >= 128).astype(np.uint8), cv2.DIST_L2, 3)
            dmax = float(dist.max())
            if dmax >= size * 0.06:
                ys, xs = np.nonzero(dist >= 0.7 * dmax)
                j = int(rng.integers(len(ys)))
                kind = _NEST_KINDS[int(rng.integers(len(_NEST_KINDS)))]
                r = float(dist[ys[j], xs[j]]) * rng.uniform(0.5, 0.85)
                cx, cy = cand[0] + xs[j] + 0.5, cand[1] + ys[j] + 0.5
                parent = cand
        if parent is None:
            kind = _KINDS[int(rng.choice(len(_KINDS), p=_KIND_P))]
            lo, hi = (0.18, 0.45) if kind in _THIN else (0.07, 0.3)
            r = size * np.exp(rng.uniform(np.log(lo), np.log(hi)))
            lo_c = 0.08 if rng.random() < 0.8 else -0.05  # some objects cut by the border
            cx, cy = rng.uniform(lo_c, 1.0 - lo_c, 2) * size
        shadow = rng.random() < 0.15
        pad = 3 + (int(size * 0.06) if shadow else 0)
        x0, y0 = max(0, int(cx - r) - pad), max(0, int(cy - r) - pad)
        x1, y1 = min(size, int(cx + r) + pad + 2), min(size, int(cy + r) + pad + 2)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        h, w = y1 - y0, x1 - x0
        m = np.zeros((h, w), np.uint8)
        _shape(rng, kind, m, cx, cy, r, x0, y0, size)
        ctx = bg[y0:y1:4, x0:x1:4].reshape(-1, 3) if parent is None else parent[5][::4, ::4].reshape(-1, 3)
        fill, camo = _fill(rng, h, w, size, lambda: bg_window(h, w), ctx, easy=easy, parent_fill=
                           None if parent is None else parent[5])
        fill = fill.astype(_F32, copy=False)
        region = img[y0:y1, x0:x1]
        if not camo and not easy and rng.random() < 0.3:  # match the mean colour of the surroundings
            delta = np.subtract(cv2.mean(region)[:3], cv2.mean(fill)[:3])
            fill += (delta * rng.uniform(0.7, 1.0)).astype(_F32)
        fill = _shade(rng, fill, m, size)
        if shadow:
            d = size * rng.uniform(0.005, 0.02)
            th = rng.uniform(0, 2 * np.pi)
            M = np.float32([[1, 0, d * np.cos(th)], [0, 1, d * np.sin(th)]])
            sh = cv2.warpAffine(m, M, (w, h))
            sh = cv2.GaussianBlur(sh.astype(_F32), (0, 0), size * rng.uniform(0.004, 0.015))
            region *= (1.0 - np.float32(rng.uniform(0.15, 0.4) / 255) * sh)[..., None]
        np.clip(fill, 0, 255, out=fill)
        _ensure_edge(rng, fill, region, m)
        wa = m.astype(_F32) * np.float32(1 / 255)
        region[:] = cv2.blendLinear(fill, region, wa, 1.0 - wa)
        inside = m >= 128
        owner[y0:y1, x0:x1][inside] = len(objs)
        objs.append((x0, y0, x1, y1, m, fill, cv2.countNonZero(inside.view(np.uint8))))

    # visible masks, filtering tiny / fragmented instances
    kept = []
    for i, (x0, y0, x1, y1, m, _, own) in enumerate(objs):
        vis = (owner[y0:y1, x0:x1] == i).view(np.uint8)
        a = cv2.countNonZero(vis)
        if a < min_area:
            continue
        if a == own:  # not occluded: no fragments from occlusion
            kept.append((i, x0, y0, x1, y1, vis))
            continue
        _, _, stats, _ = cv2.connectedComponentsWithStats(vis, connectivity=8)
        comp = stats[1:, cv2.CC_STAT_AREA]
        big = comp[comp >= min_area / 4]
        if big.sum() < 0.9 * a or len(big) > 6:
            continue
        kept.append((i, x0, y0, x1, y1, vis))
    masks = np.zeros((len(kept), size, size), bool)
    for k, (i, x0, y0, x1, y1, vis) in enumerate(kept):
        masks[k, y0:y1, x0:x1] = vis.view(bool)
    return img, masks


def _photometric(rng, img: np.ndarray, size: int) -> np.ndarray:
    """Global lighting gradient, occasional mild blur, mild noise -> uint8."""
    if rng.random() < 0.6:
        if rng.random() < 0.6:
            u, _ = _coords(rng, size, size)
            f = _normalize(u) - 0.5
        else:  # vignette-like radial falloff
            x = np.arange(size, dtype=_F32)[None, :] - np.float32(rng.uniform(0, size))
            y = np.arange(size, dtype=_F32)[:, None] - np.float32(rng.uniform(0, size))
            f = 0.5 - (x * x + y * y) * np.float32(1.0 / (2 * size * size))
        img *= (1.0 + np.float32(rng.uniform(0.1, 0.5)) * f)[..., None]
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), size / 256 * rng.uniform(0.4, 1.0))
    sigma = rng.uniform(0.0, 4.0) if rng.random() < 0.8 else 0.0
    if sigma > 0:
        noise = np.frombuffer(rng.bytes(img.size), np.uint8)
        img += np.take(_GAUSS_LUT * np.float32(sigma), noise).reshape(img.shape)
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _gauss_lut() -> np.ndarray:
    nd = statistics.NormalDist()
    q = np.array([nd.inv_cdf((k + 0.5) / 256) for k in range(256)])
    return (q / q.std()).astype(_F32)  # unit variance after quantisation


_GAUSS_LUT = _gauss_lut()


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def make_scene(seed: int, size: int = 256, easy: bool = False) -> Scene:
    """Generate the scene for ``seed`` (deterministic: same seed and size ->
    identical arrays).  Returns ``Scene`` with image (size, size, 3) uint8 RGB
    and masks (N, size, size) bool, 1 <= N <= 8.  ``size`` >= 32.

    ``easy``: flat-coloured objects on a flat background (the same shapes, no textures, photos
    or camouflage), where every boundary is a colour edge: a curriculum for training."""
    seed, size = int(seed), int(size)
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    for _ in range(100):  # regenerate (same stream, so deterministic) if nothing survives
        img, masks = _generate(rng, size, easy)
        if len(masks):
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError(f"could not generate a scene for seed {seed}")
    return Scene(image=_photometric(rng, img, size), masks=masks, seed=seed)


def train_scene(index: int, size: int = 256, easy: bool = False) -> Scene:
    """Training scene number ``index`` (seed ``TRAIN_SEED_START + index``).

    Raises ValueError if index < 0 or the seed would reach the held-out range
    ``[HELDOUT_SEED_START, ...)``."""
    index = int(index)
    seed = TRAIN_SEED_START + index
    if index < 0 or seed >= HELDOUT_SEED_START:
        raise ValueError(
            f"training index {index} out of range [0, {HELDOUT_SEED_START - TRAIN_SEED_START})")
    return make_scene(seed, size, easy)


def _split(start: int, n: int, size: int) -> list[Scene]:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [make_scene(start + i, size) for i in range(int(n))]


def validation_scenes(n: int, size: int = 256) -> list[Scene]:
    """The first ``n`` validation scenes (seeds ``VALIDATION_SEED_START + 0 .. n-1``): for
    choosing checkpoints, adapters and attack settings, never for reported numbers."""
    return _split(VALIDATION_SEED_START, n, size)


def test_scenes(n: int, size: int = 256) -> list[Scene]:
    """The first ``n`` test scenes (seeds ``TEST_SEED_START + 0 .. n-1``): reported once."""
    return _split(TEST_SEED_START, n, size)


test_scenes.__test__ = False  # not a pytest test despite its name
SPLITS = {"validation": validation_scenes, "test": test_scenes}


# ----------------------------------------------------------------------------
# CLI: benchmark and example grid
# ----------------------------------------------------------------------------


def render_grid(scenes: list[Scene], cols: int = 4, gap: int = 4) -> np.ndarray:
    """Tile scenes with coloured mask outlines; returns (H, W, 3) uint8 RGB."""
    tiles = []
    for sc in scenes:
        t = sc.image.copy()
        for k, mk in enumerate(sc.masks):
            col = _hsv([(k * 0.13) % 1.0], [1.0], [1.0])[0]
            cnts, _ = cv2.findContours(mk.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(t, cnts, -1, tuple(int(c) for c in col), 1)
        tiles.append(t)
    s = tiles[0].shape[0]
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * (s + gap) - gap, cols * (s + gap) - gap, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * (s + gap):r * (s + gap) + s, c * (s + gap):c * (s + gap) + s] = t
    return out


def _main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=int, default=0, help="time N scenes")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--grid", type=str, default="", help="write a 4x4 example PNG here")
    args = ap.parse_args(argv)
    if args.bench:
        cv2.setNumThreads(1)
        make_scene(0, args.size)  # load photos
        t0 = time.perf_counter()
        for s in range(args.bench):
            make_scene(s, args.size)
        dt = (time.perf_counter() - t0) / args.bench
        print(f"size {args.size}: mean {dt * 1e3:.2f} ms/scene over {args.bench} scenes")
    if args.grid:
        grid = render_grid([make_scene(s, args.size) for s in range(16)])
        cv2.imwrite(args.grid, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        print("wrote", args.grid)


if __name__ == "__main__":
    _main()
