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


def test_perturbation_norms():
    import math

    from samdemo.metrics import perturbation_norms

    clean = np.full((4, 5, 3), 100, np.uint8)
    adversarial = clean.copy()
    adversarial[0, 0, 0] = 108  # one value +8
    adversarial[1, 2, 1] = 94  # one value -6
    norms = perturbation_norms(clean, adversarial)
    assert norms.linf255 == 8
    assert norms.l2_255 == pytest.approx(10.0)  # sqrt(64 + 36)
    assert norms.rms255 == pytest.approx(10.0 / math.sqrt(60))
    assert norms.psnr_db == pytest.approx(20 * math.log10(255 / (10.0 / math.sqrt(60))))
    assert perturbation_norms(clean, clean).psnr_db == math.inf
    with pytest.raises(ValueError, match="shapes"):
        perturbation_norms(clean, clean[:2])
    with pytest.raises(ValueError, match="uint8"):
        perturbation_norms(clean.astype(np.float32), clean.astype(np.float32))
