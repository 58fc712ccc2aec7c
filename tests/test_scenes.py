"""Tests for samdemo.scenes (procedural training / evaluation scenes)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from samdemo import scenes as S
from samdemo.scenes import (
    HELDOUT_SEED_START,
    MIN_AREA_FRAC,
    TRAIN_SEED_START,
    Scene,
    test_scenes,
    validation_scenes,
    TEST_SEED_START,
    make_scene,
    train_scene,
)

N_SEEDS = 50


@pytest.fixture(scope="module")
def batch() -> list[Scene]:
    return [make_scene(s) for s in range(N_SEEDS)]


def _digest(sc: Scene) -> str:
    h = hashlib.sha256(sc.image.tobytes())
    h.update(np.packbits(sc.masks).tobytes())
    h.update(str(sc.masks.shape).encode())
    return h.hexdigest()


def test_deterministic_per_seed(batch):
    # regenerate out of order, after other scenes have consumed randomness
    for s in (7, 0, 31, 7):
        a, b = make_scene(s), batch[s]
        assert a.seed == b.seed == s
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.masks, b.masks)


def test_deterministic_across_processes(batch):
    root = Path(__file__).resolve().parents[1]
    code = (
        "import hashlib, numpy as np\n"
        "from samdemo.scenes import make_scene\n"
        "for s in (3, 11):\n"
        "    sc = make_scene(s)\n"
        "    h = hashlib.sha256(sc.image.tobytes())\n"
        "    h.update(np.packbits(sc.masks).tobytes()); h.update(str(sc.masks.shape).encode())\n"
        "    print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [_digest(batch[3]), _digest(batch[11])]


def test_different_seeds_differ(batch):
    digests = {_digest(sc) for sc in batch}
    assert len(digests) == len(batch)
    for a, b in zip(batch, batch[1:]):
        # not just a few pixels: most of the image changes
        assert np.mean(np.any(a.image != b.image, axis=-1)) > 0.5


@pytest.mark.parametrize("size", [256, 128, 512])
def test_shapes_and_dtypes(size):
    for s in range(4):
        sc = make_scene(s, size=size)
        assert isinstance(sc, Scene)
        assert sc.image.shape == (size, size, 3) and sc.image.dtype == np.uint8
        assert sc.masks.ndim == 3 and sc.masks.shape[1:] == (size, size)
        assert sc.masks.dtype == np.bool_
        assert 1 <= len(sc.masks) <= 8
        assert sc.masks.reshape(len(sc.masks), -1).sum(1).min() >= MIN_AREA_FRAC * size * size


def test_large_size_works():
    sc = make_scene(5, size=1024)
    assert sc.image.shape == (1024, 1024, 3) and sc.masks.shape[1:] == (1024, 1024)


def test_bad_size_rejected():
    with pytest.raises(ValueError):
        make_scene(0, size=8)


def test_masks_non_empty_above_threshold_and_disjoint(batch):
    for sc in batch:
        h, w = sc.image.shape[:2]
        areas = sc.masks.reshape(len(sc.masks), -1).sum(1)
        assert (areas > 0).all()
        assert (areas >= MIN_AREA_FRAC * h * w).all(), (sc.seed, areas)
        # visible regions of one scene are pairwise disjoint
        assert sc.masks.sum(0).max() <= 1, sc.seed


def test_masks_not_fragmented(batch):
    thr = MIN_AREA_FRAC * 256 * 256 / 4
    for sc in batch:
        for m in sc.masks:
            _, _, stats, _ = cv2.connectedComponentsWithStats(m.view(np.uint8), connectivity=8)
            comp = stats[1:, cv2.CC_STAT_AREA]
            assert comp.max() >= thr
            assert comp[comp >= thr].sum() >= 0.9 * m.sum()


def test_object_count_range(batch):
    counts = np.array([len(sc.masks) for sc in batch])
    assert counts.min() >= 1 and counts.max() <= 8
    # 2-8 objects are drawn; occlusion drops some, but scenes are not trivially sparse
    assert len(set(counts.tolist())) >= 5
    assert 3.0 <= counts.mean() <= 6.5
    assert (counts >= 2).mean() >= 0.9


def test_train_heldout_split():
    assert TRAIN_SEED_START == 0 and HELDOUT_SEED_START == 1_000_000_000
    a = train_scene(12)
    assert a.seed == TRAIN_SEED_START + 12
    assert np.array_equal(a.image, make_scene(12).image)
    last = HELDOUT_SEED_START - TRAIN_SEED_START - 1
    with pytest.raises(ValueError):
        train_scene(last + 1)
    with pytest.raises(ValueError):
        train_scene(last + 12345)
    with pytest.raises(ValueError):
        train_scene(-1)
    held = validation_scenes(3, size=128)
    assert [sc.seed for sc in held] == [HELDOUT_SEED_START + i for i in range(3)]
    assert all(sc.seed >= HELDOUT_SEED_START for sc in held)
    assert np.array_equal(held[1].image, make_scene(HELDOUT_SEED_START + 1, 128).image)
    assert validation_scenes(0) == []
    test = test_scenes(2, size=128)
    assert [sc.seed for sc in test] == [TEST_SEED_START, TEST_SEED_START + 1]
    # the validation split would need 500 million scenes to reach the test split
    assert TEST_SEED_START - HELDOUT_SEED_START >= 100_000_000


def test_mask_boundaries_are_image_edges(batch):
    """Ground truth lines up with the pixels: image gradient on mask boundaries is
    clearly above the typical gradient of the scene for almost every instance."""
    ratios = []
    k3 = np.ones((3, 3), np.uint8)
    for sc in batch[:30]:
        g = sc.image.astype(np.float32)
        gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
        mag = np.sqrt((gx * gx + gy * gy).sum(-1))
        med = float(np.median(mag)) + 1e-3
        for m in sc.masks:
            b = cv2.morphologyEx(m.view(np.uint8), cv2.MORPH_GRADIENT, k3) > 0
            b[:2] = b[-2:] = False
            b[:, :2] = b[:, -2:] = False
            if b.sum() >= 10:
                ratios.append(mag[b].mean() / med)
    ratios = np.array(ratios)
    assert len(ratios) > 60
    assert (ratios > 1.5).mean() >= 0.85, np.percentile(ratios, [5, 10, 50])


def test_colour_not_trivially_separable(batch):
    """Colour alone must not give the objects away.

    (a) Locally: compare each instance's mean colour with the mean colour of a
    band of pixels just outside it, in units of the pooled colour spread
    sqrt(var_in + var_out).  For a flat object on a flat, differently coloured
    background this ratio is >> 1; we require that a good fraction of instances
    (measured ~0.6 over 300 scenes) have ratio < 1, and that most scenes contain
    at least one such instance.
    (b) Globally: a per-pixel colour classifier (3-D colour-histogram likelihood
    ratio, object vs background) fitted on some scenes is near chance on others
    (measured ROC AUC ~0.50).
    """
    ratios, per_scene = [], []
    for sc in batch:
        img = sc.image.astype(np.float64)
        k = np.ones((9, 9), np.uint8)
        hidden = []
        for m in sc.masks:
            band = cv2.dilate(m.view(np.uint8), k).astype(bool) & ~m
            if band.sum() < 20:
                continue
            inside, outside = img[m], img[band]
            d = np.linalg.norm(inside.mean(0) - outside.mean(0))
            spread = np.sqrt(inside.var(0).sum() + outside.var(0).sum()) + 1e-6
            ratios.append(d / spread)
            hidden.append(d / spread < 1.0)
        per_scene.append(any(hidden))
    ratios = np.array(ratios)
    assert (ratios < 1.0).mean() >= 0.4, np.median(ratios)
    assert np.mean(per_scene) >= 0.6

    def codes(im):
        b = im.astype(np.int64) // 16
        return b[..., 0] * 256 + b[..., 1] * 16 + b[..., 2]

    h_obj, h_bg = np.ones(4096), np.ones(4096)
    for sc in batch[:35]:
        c, u = codes(sc.image), sc.masks.any(0)
        h_obj += np.bincount(c[u], minlength=4096)
        h_bg += np.bincount(c[~u], minlength=4096)
    llr = np.log(h_obj / h_obj.sum()) - np.log(h_bg / h_bg.sum())
    score = np.concatenate([llr[codes(sc.image)].ravel() for sc in batch[35:]])
    label = np.concatenate([sc.masks.any(0).ravel() for sc in batch[35:]])
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(len(score))
    npos, nneg = label.sum(), (~label).sum()
    auc = (ranks[label].sum() - npos * (npos - 1) / 2) / (npos * nneg)
    assert auc < 0.7, auc


def test_backgrounds_are_varied(batch):
    """Backgrounds are not flat: most scenes have substantial texture outside
    the objects, and the photos used load from the installed package."""
    photos, _ = S._load_photos()
    assert len(photos) >= 8
    textured = 0
    for sc in batch:
        bg = ~sc.masks.any(0)
        lap = np.abs(cv2.Laplacian(cv2.cvtColor(sc.image, cv2.COLOR_RGB2GRAY), cv2.CV_32F))
        textured += lap[bg].mean() > 2.0
    assert textured >= 0.5 * len(batch)
