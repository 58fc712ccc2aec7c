"""Segment everything through the engine (samdemo.segment_everything), on the tiny random-init models."""

import numpy as np
import pytest
import torch

from samdemo.build import DEFAULT_MODEL
from samdemo.prompts import Prompt
from samdemo.app.render import render_masks
from samdemo.pipeline import AttackRequest
from samdemo.segment_everything import (EMBEDDED_MODEL_THRESHOLDS, EnginePredictor, compare_everything,
                                        default_settings, everything_under_attack, segment_everything,
                                        surviving_masks)

KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4}


def test_predictor_returns_the_engines_multimask_outputs(engine, rng):
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    predictor = EnginePredictor(engine)
    predictor.set_image(image)
    points = torch.tensor([[[10.0, 20.0]], [[50.0, 5.0]]])
    logits, iou, low_res = predictor.predict_torch(points, torch.ones(2, 1, dtype=torch.int), return_logits=True)
    assert logits.shape == (2, 3, 48, 64) and iou.shape == (2, 3)
    with torch.no_grad():
        prediction = engine.decode(engine.embed_image(image), [Prompt(points=np.array([[10.0, 20.0]]), labels=np.array([1]))])
    torch.testing.assert_close(iou[0], prediction.iou_all[0, 1:])
    chosen = int(prediction.choice[0]) - 1  # a lone point picks one of tokens 1-3
    torch.testing.assert_close(logits[0, chosen], prediction.logits[0])
    masks, _, _ = predictor.predict_torch(points, torch.ones(2, 1, dtype=torch.int))
    assert masks.dtype == torch.bool and torch.equal(masks, logits > 0)
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict_torch(points, torch.ones(2, 1, dtype=torch.int))


def test_segment_everything_masks_largest_first(engine, rng):
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    masks = segment_everything(engine, image, **KEEP_ALL)
    assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == (64, 64) and len(masks) > 0
    areas = masks.reshape(len(masks), -1).sum(1)
    assert np.all(np.diff(areas) <= 0)
    assert segment_everything(engine, image, pred_iou_thresh=1.5, points_per_side=2).shape == (0, 64, 64)


def test_default_settings_per_model(engine):
    assert default_settings(engine) == {"points_per_side": 16}  # not an embedded model: SAM's thresholds
    engine.name = DEFAULT_MODEL
    assert default_settings(engine) == {"points_per_side": 16} | EMBEDDED_MODEL_THRESHOLDS


def test_surviving_masks_hand_cases():
    a = np.zeros((3, 10, 10), bool)
    a[0, :5] = True  # 50 pixels
    a[1, 5:, :5] = True  # 25 pixels
    a[2, 5:, 5:] = True  # 25 pixels
    b = np.zeros((2, 10, 10), bool)
    b[0, :4] = True  # IoU with a[0] = 40/50 = 0.8
    b[1, 5:, :2] = True  # IoU with a[1] = 10/25 = 0.4
    np.testing.assert_array_equal(surviving_masks(a, b), [True, False, False])
    np.testing.assert_array_equal(surviving_masks(a, b, threshold=0.4), [True, True, False])
    np.testing.assert_array_equal(surviving_masks(a, b[:0]), [False] * 3)
    assert surviving_masks(a[:0], b).shape == (0,)


def test_compare_identical_images_keeps_every_mask(rng):
    from tests.conftest import tiny_engine

    engine = tiny_engine("sam")
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    comparison = compare_everything(engine, image, image.copy(), **KEEP_ALL)
    assert len(comparison.clean) == len(comparison.adversarial) > 0 and comparison.survived.all()
    assert comparison.summary.endswith(f"{len(comparison.clean)} survive")


def test_render_masks_colours_only_inside_masks(rng):
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, :10] = True
    masks[1, 15:, 20:] = True
    out = render_masks(image, masks)
    outside = ~masks.any(0)
    np.testing.assert_array_equal(out[outside], image[outside])
    assert not np.array_equal(out[masks[0]], image[masks[0]])
    from matplotlib import colormaps
    first = np.asarray(colormaps["tab20"](0)[:3]) * 255
    np.testing.assert_allclose(out[0, 0], 0.45 * image[0, 0] + 0.55 * first, atol=1)


def test_everything_under_attack_crafts_through_the_pipeline(rng):
    from tests.conftest import tiny_engine

    engines = {"original": tiny_engine("sam"), "robust": tiny_engine("sam", seed=1)}
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    stages, steps = [], []
    outcome = everything_under_attack(AttackRequest(attack="cross-prompt", eps255=8, steps=2), engines, image,
                                      target="robust", progress=lambda t, total: steps.append((t, total)),
                                      stage=lambda what, k, total: stages.append((what, k, total)), **KEEP_ALL)
    assert outcome.target == "robust" and set(outcome.comparisons) == {"original", "robust"}
    assert np.abs(outcome.adversarial.astype(int) - image.astype(int)).max() <= 8
    assert steps[-1] == (2, 2) and [k for _, k, _ in stages] == [0, 1, 2, 3]
    for comparison in outcome.comparisons.values():
        assert comparison.survived.shape == (len(comparison.clean),)
    with pytest.raises(ValueError, match="prompt"):
        everything_under_attack(AttackRequest(attack="mask", steps=1), engines, image)
