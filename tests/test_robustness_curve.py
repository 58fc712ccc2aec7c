"""Robustness curve (samdemo.robustness_curve) and its figure, on the tiny random-init models."""

import threading

import numpy as np
import pytest
from matplotlib.figure import Figure

from samdemo.errors import AttackCancelled
from samdemo.engine import image_to_tensor, tensor_to_image
from samdemo.pipeline import AttackRequest, craft
from samdemo.metrics import mask_iou
from samdemo.plots import robustness_curve_plot
from samdemo.prompts import Prompt
from samdemo.robustness_curve import robustness_curve
from tests.conftest import tiny_engine


def _image(rng, size=64):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


PROMPTS = [Prompt(points=np.array([[20.0, 30.0]]), labels=np.array([1])),
           Prompt(box=np.array([8.0, 8.0, 40.0, 50.0]))]


def test_curve_series_and_clean_point(engine, rng):
    image = _image(rng)
    curve = robustness_curve(engine, image, PROMPTS, AttackRequest(attack="mask", steps=2), eps255=(4, 0, 2))
    assert curve.eps255 == [0.0, 2.0, 4.0]
    assert list(curve.miou) == [("original", "original")]  # no robust model: one series
    assert curve.series("original", "original")[0] == pytest.approx(1.0)  # clean vs itself
    assert curve.reference == "original clean mask"
    assert len(curve.rows()) == 3


def test_curve_point_matches_the_attack_run_directly(rng):
    original, robust = tiny_engine("sam", seed=0), tiny_engine("sam", seed=1)
    image = _image(rng)
    curve = robustness_curve(original, image, PROMPTS, AttackRequest(attack="mask", steps=3, seed=5), robust=robust,
                             eps255=(0, 8))
    assert set(curve.miou) == {(a, e) for a in ("original", "robust") for e in ("original", "robust")}
    # The adaptive point at eps 8: craft on the robust model, evaluate it against the original's clean masks.
    result = craft(AttackRequest(attack="mask", eps255=8, steps=3, seed=5), robust, image_to_tensor(image), [PROMPTS])
    adversarial = tensor_to_image(result.adv_images)
    reference = original.predict(image, PROMPTS).masks.numpy()
    masks = robust.predict(adversarial, PROMPTS).masks.numpy()
    expected = np.mean([mask_iou(m, r) for m, r in zip(masks, reference)])
    assert curve.series("robust", "robust")[1] == pytest.approx(expected)
    clean_robust = np.mean([mask_iou(m, r) for m, r in zip(robust.predict(image, PROMPTS).masks.numpy(), reference)])
    assert curve.series("robust", "robust")[0] == pytest.approx(clean_robust)
    assert curve.series("original", "robust")[0] == pytest.approx(clean_robust)


def test_curve_against_ground_truth(engine, rng):
    image = _image(rng)
    gt = np.zeros((64, 64), bool)
    gt[10:40, 10:40] = True
    curve = robustness_curve(engine, image, PROMPTS, ground_truth=gt, eps255=(0,))
    masks = engine.predict(image, PROMPTS).masks.numpy()
    assert curve.reference == "ground truth"
    assert curve.series("original", "original")[0] == pytest.approx(np.mean([mask_iou(m, gt) for m in masks]))
    with pytest.raises(ValueError, match="ground truth"):
        robustness_curve(engine, image, PROMPTS, ground_truth=gt[:32], eps255=(0,))


def test_curve_progress_counts_every_attack_step(rng):
    original, robust = tiny_engine("sam2", seed=0), tiny_engine("sam2", seed=1)
    calls = []
    robustness_curve(original, _image(rng), PROMPTS[:1], AttackRequest(attack="mask", steps=2), robust=robust,
                     eps255=(0, 1, 2), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 8) for i in range(1, 9)]  # 2 epsilons x 2 attacked models x 2 steps


def test_curve_cancel(engine, rng):
    cancel = threading.Event()

    def cancel_after_first(done, total):
        cancel.set()

    with pytest.raises(AttackCancelled):
        robustness_curve(engine, _image(rng), PROMPTS, AttackRequest(attack="mask", steps=3), eps255=(1, 2),
                         progress=cancel_after_first,
                         cancel=cancel)


def test_curve_rejects_bad_input(engine, rng):
    with pytest.raises(ValueError, match="prompt"):
        robustness_curve(engine, _image(rng), [])
    with pytest.raises(ValueError, match="epsilon"):
        robustness_curve(engine, _image(rng), PROMPTS, eps255=(64,))
    with pytest.raises(ValueError, match="epsilon"):
        robustness_curve(engine, _image(rng), PROMPTS, eps255=())


def test_curve_plot_has_one_line_per_series(rng):
    curve = robustness_curve(tiny_engine("sam"), _image(rng), PROMPTS[:1], AttackRequest(attack="mask", steps=1),
                             robust=tiny_engine("sam", seed=1), eps255=(0, 1))
    figure = robustness_curve_plot(curve)
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert len(ax.get_lines()) == 4
    labels = {text.get_text() for text in ax.get_legend().get_texts()}
    assert "robust model, adaptive" in labels and "robust model, transfer from original" in labels
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), curve.series("original", "original"))


def test_curve_cli_writes_figure_and_table(tmp_path, capsys, monkeypatch):
    """On the tiny engines of test_app (registered names) with a tiny "shipped" adapter."""
    from PIL import Image

    import samdemo.factory
    from samdemo.__main__ import main
    from tests.test_app import tiny_engine as named_tiny_engine, write_tiny_adapters

    monkeypatch.setattr(samdemo.factory, "load_engine", lambda name, weights=None, frozen=False, **k: named_tiny_engine(name))
    adapter = write_tiny_adapters(tmp_path / "checkpoints") / "sam-small-adapter"

    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 220
    Image.fromarray(image).save(tmp_path / "in.png")
    assert main(["curve", "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "curve.png"),
                 "--point", "32", "32", "--eps", "0", "2", "--steps", "1", "--adapter", str(adapter)]) == 0
    assert Image.open(tmp_path / "curve.png").size[0] > 100
    rows = (tmp_path / "curve.csv").read_text().splitlines()
    assert rows[0] == "attacked,evaluated,eps255,miou" and len(rows) == 1 + 4 * 2  # 4 series x 2 epsilons
    assert "robust model, adaptive" in capsys.readouterr().out
