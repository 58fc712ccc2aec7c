import numpy as np
import pytest
import torch

from samdemo.metrics import batch_iou, mask_iou, mean_iou


def test_mask_iou_hand_cases():
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b = np.zeros((4, 4), bool)
    b[:2, :] = True  # 8 pixels, contains a
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, b) == pytest.approx(4 / 8)
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # both empty: agreement
    assert mask_iou(np.zeros((3, 3)), np.ones((3, 3))) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, np.zeros((3, 3)))


def test_batch_iou_matches_per_mask_iou(rng):
    pred = rng.random((5, 8, 8)) > 0.5
    gt = rng.random((5, 8, 8)) > 0.5
    gt[4] = False
    pred[4] = False
    expected = [mask_iou(p, g) for p, g in zip(pred, gt)]
    assert batch_iou(torch.from_numpy(pred), torch.from_numpy(gt)).tolist() == pytest.approx(expected)


def test_mean_iou():
    assert mean_iou([0.5, 1.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_iou([])
