"""The lab features of the app without a browser (issue 18): the robustness curve, "segment everything"
under attack, the before / after view with the perturbation at true scale, the download bundle and its
replay by the CLI, and the examples' notes. Tiny seeded engines, as in test_app.py; 1-2 attack steps."""

from __future__ import annotations

import json
import zipfile
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

try:
    from test_app import read_png, scene_session, tiny_engine, tiny_lab, write_tiny_adapters
except ImportError:  # tests/ imported as a package
    from tests.test_app import read_png, scene_session, tiny_engine, tiny_lab, write_tiny_adapters

from samdemo.app.examples import Example, example_note
from samdemo.app.render import perturbation_true_scale
from samdemo.app.session import MODE_POSITIVE, display_scale, set_painted

NOOP = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory):
    return write_tiny_adapters(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def lab(adapter_root):
    lab = tiny_lab(adapter_root)
    lab.curve_eps255 = (0, 2, 8)  # the app's six epsilons cost 10 attacks; three keep the tests fast
    lab.everything_settings = {"points_per_side": 4}  # 16 point prompts instead of 256
    return lab


def clicked(lab, index=0, model="sam-small", x=128, y=100):
    session = scene_session(lab, index, model)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, model, x, y)
    return session


# ------------------------------------------------------------------------ before / after and the bundle
def test_attack_gives_before_after_true_scale_and_a_replayable_bundle(lab, adapter_root, tmp_path, monkeypatch):
    session = clicked(lab)
    outputs = lab.on_attack(session, "sam-small", "shipped", "", "", "cross-prompt", "pgd", 8, 2, 3, "original",
                            SimpleNamespace(session_hash="bundle"), NOOP)
    *_, caption, png, (before, after), true_scale, bundle, timings = outputs
    s = display_scale(session.image.shape[:2])
    adversarial = read_png(png)
    np.testing.assert_array_equal(before[::s, ::s], session.image)
    np.testing.assert_array_equal(after[::s, ::s], adversarial)
    delta = true_scale[::s, ::s].astype(int) - 128
    np.testing.assert_array_equal(delta, adversarial.astype(int) - session.image.astype(int))
    assert "L∞ = " in caption and "L2 = " in caption and "PSNR = " in caption and "dB" in caption
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        assert {"clean.png", "adversarial.png", "table.csv", "settings.json", "README.txt",
                "masks/original-clean.png", "masks/robust-adversarial.png"} <= names
        settings = json.loads(archive.read("settings.json"))
        table = archive.read("table.csv").decode().splitlines()
    assert settings | {"image": None} == {"image": None, "model": "sam-small", "attack": "cross-prompt", "eps": 8.0,
                                          "steps": 2, "seed": 3, "generator": "pgd", "target": "original",
                                          "adapter": "shipped", "point": [[128.0, 100.0]], "negative_point": None,
                                          "box": None}
    assert table[0].startswith("model,input,IoU vs original clean") and len(table) == 5

    # python -m samdemo attack --replay reproduces the adversarial image bit for bit (with the same weights)
    import samdemo.build
    import samdemo.factory
    from samdemo.attacks.cli import main

    monkeypatch.setattr(samdemo.factory, "load_engine", lambda name, weights=None, frozen=False, **k: tiny_engine(name))
    monkeypatch.setattr(samdemo.build, "CHECKPOINT_DIR", adapter_root)
    assert main(["--replay", bundle, "--out", str(tmp_path / "replayed.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "replayed.png")), adversarial)


def test_bundle_says_what_the_cli_cannot_replay(lab):
    session = clicked(lab, 0)
    gt = np.zeros((256, 256), bool)
    gt[80:140, 100:170] = True
    set_painted(session, gt, as_ground_truth=True)
    bundle = lab.on_attack(session, "sam-small", "none", "", "", "mask", "fgsm", 4, 1, 0, "original", None, NOOP)[-2]
    with zipfile.ZipFile(bundle) as archive:
        assert "masks/ground-truth.png" in archive.namelist()
        assert "ground truth" in archive.read("README.txt").decode()
        assert json.loads(archive.read("settings.json"))["adapter"] is None


def test_true_scale_is_grey_plus_the_perturbation():
    clean = np.full((16, 16, 3), 100, np.uint8)
    adv = clean.copy()
    adv[0, 0] = 103
    picture = perturbation_true_scale(clean, adv)
    s = display_scale((16, 16))
    assert picture.shape == (16 * s, 16 * s, 3) and picture[0, 0, 0] == 131 and picture[-1, -1, 0] == 128


# ------------------------------------------------------------------------ robustness curve
def test_curve_handler_draws_four_series_with_progress(lab):
    session = clicked(lab, 0)
    seen = []
    figure, md = lab.on_curve(session, "sam-small", "shipped", "", "", "mask", "fgsm", 8, 1, 0, "original",
                              SimpleNamespace(session_hash="curve"), lambda value, desc=None, **k: seen.append(value))
    ax = figure.axes[0]
    assert len(ax.get_lines()) == 4 and "mask attack" in ax.get_title()
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert "robust model, adaptive" in labels and "robust model, transfer from original" in labels
    assert md.count("\n|") == 2 + 3 and "| 8 |" in md and "original model's clean mask" in md
    assert (4, 4) in seen  # 2 epsilons > 0 x 2 attacked models x 1 step


def test_curve_without_adapter_and_against_ground_truth(lab):
    session = clicked(lab, 1, x=60, y=60)
    gt = np.zeros((256, 256), bool)
    gt[30:90, 30:90] = True
    set_painted(session, gt, as_ground_truth=True)
    figure, md = lab.on_curve(session, "sam-small", "none", "", "", "random", "pgd", 8, 1, 0, "original", None, NOOP)
    assert len(figure.axes[0].get_lines()) == 1 and "your ground truth" in md


def test_curve_cancel(lab):
    session = clicked(lab, 0)
    request = SimpleNamespace(session_hash="cancel-curve")

    def progress(value, desc=None, **kwargs):
        if isinstance(value, tuple) and value[0] == 1:
            lab.on_cancel(request)

    figure, md = lab.on_curve(session, "sam-small", "shipped", "", "", "mask", "pgd", 8, 2, 0, "original", request,
                              progress)
    assert md.startswith("Robustness curve cancelled") and lab.on_cancel(request) == "No attack is running."


@pytest.mark.parametrize("attack,steps,message", [("mask", 1, "No prompt"), ("nope", 1, "Unknown attack"),
                                                  ("mask", 0, "Steps must be")])
def test_curve_errors_are_readable(lab, attack, steps, message):
    session = scene_session(lab, 2) if message == "No prompt" else clicked(lab, 2, x=50, y=50)
    with pytest.raises(gr.Error, match=message):
        lab.on_curve(session, "sam-small", "none", "", "", attack, "pgd", 8, steps, 0, "original", None, NOOP)


def test_curve_time_limit(lab, monkeypatch):
    from samdemo import limits

    monkeypatch.setattr(limits, "CURVE_TIME_LIMIT_S", 0.0)
    with pytest.raises(gr.Error, match="robustness curve was stopped"):
        lab.on_curve(clicked(lab, 0), "sam-small", "none", "", "", "mask", "fgsm", 8, 2, 0, "original", None, NOOP)


# ------------------------------------------------------------------------ segment everything
@pytest.mark.parametrize("model", ["sam-small", "sam2-small"])
def test_everything_handler_counts_masks_and_survivors(lab, model):
    session = scene_session(lab, 0, model)  # no prompt: the cross-prompt attack needs none
    stages = []
    *pictures, md = lab.on_everything(session, model, "shipped", "", "", "cross-prompt", "fgsm", 8, 1, 0, "robust",
                                      None, lambda value, desc=None, **k: stages.append(desc))
    assert len(pictures) == 4 and all(p is not None and p.shape == (512, 512, 3) for p in pictures)
    assert "**Original model**" in md and "**Robust model**" in md and "survive" in md
    assert "crafted on the **robust** model without any prompt" in md
    assert sum("Segment everything" in (d or "") for d in stages) == 4


def test_everything_without_adapter_and_with_a_prompt(lab):
    session = clicked(lab, 0)
    *pictures, md = lab.on_everything(session, "sam-small", "none", "", "", "mask", "fgsm", 8, 1, 0, "original",
                                      None, NOOP)
    assert pictures[2] is None and pictures[3] is None and "with your prompt" in md


def test_everything_cancel(lab):
    session = scene_session(lab, 0)
    request = SimpleNamespace(session_hash="cancel-everything")

    def progress(value, desc=None, **kwargs):
        if desc and desc.startswith("Segment everything"):
            lab.on_cancel(request)

    *pictures, md = lab.on_everything(session, "sam-small", "none", "", "", "cross-prompt", "fgsm", 8, 1, 0,
                                      "original", request, progress)
    assert md.startswith("Segment everything cancelled")


@pytest.mark.parametrize("attack,target,message", [("mask", "original", "crafted for your prompt"),
                                                   ("cross-prompt", "robust", "adaptive attack needs a robust model")])
def test_everything_errors_are_readable(lab, attack, target, message):
    with pytest.raises(gr.Error, match=message):
        lab.on_everything(scene_session(lab, 0), "sam-small", "none", "", "", attack, "pgd", 8, 1, 0, target, None,
                          NOOP)


# ------------------------------------------------------------------------ examples
def test_photo_examples_carry_an_honest_note_for_the_embedded_models(lab):
    photos = [i for i, e in enumerate(lab.examples) if e.suits == "photos"]
    scenes = [i for i, e in enumerate(lab.examples) if e.suits == "all"]
    assert photos and scenes
    _, _, _, status = lab.on_example_index(None, "sam-small", photos[0])
    assert "suits Meta's models" in status
    _, _, _, status = lab.on_example_index(None, "sam-small", scenes[0])
    assert "suits Meta's models" not in status
    photo = Example(lab.examples[photos[0]].path, "c", "photos")
    assert example_note(photo, embedded_model=False) == "" and "Meta's models" in photo.label
