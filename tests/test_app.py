"""Tests of the samdemo.app package: everything behind the web app, without a browser.

The engines are the tiny random-init test architectures (``samdemo/configs/*_tiny_test.yaml``),
seeded, registered under the embedded models' names so that the registry checks pass; the
"shipped" adapter is a real SVD adapter saved for those exact weights into a temporary folder.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import gradio as gr
import numpy as np
import pytest
import torch

from samdemo.app.actions import AttackJob, PANEL_KEYS, TARGET_ROBUST, run_attack
from samdemo.app.examples import ASSETS_DIR, read_example
from samdemo.app.handlers import Lab, TRANSFER_ROWS
from samdemo.app.models import AdapterChoice, ModelManager, model_choices
from samdemo.app.render import perturbation_image, render_overlay, transfer_figure
from samdemo.app.session import (MODE_BOX, MODE_MASK, MODE_NEGATIVE, MODE_POSITIVE, PromptState, Session,
                                 add_click, clear_prompts, display_scale, normalize_image, painted_mask,
                                 set_image, set_painted, to_image_frame, undo)
from samdemo.errors import ModelUnavailableError, UserError
from samdemo.metrics import mask_iou
from samdemo.defense import apply_adapter, remove_adapter, save_adapter
from samdemo.build import CONFIG_DIR, MODEL_REGISTRY, build_architecture
from samdemo.engine import EmbeddingCache, SegmentEngine
from samdemo.errors import PromptError

TINY = {"sam-small": ("sam_tiny_test.yaml", "sam"), "sam2-small": ("sam2_tiny_test.yaml", "sam2")}


def tiny_engine(name: str, cache: EmbeddingCache | None = None) -> SegmentEngine:
    config, family = TINY[name]
    torch.manual_seed(0)
    model, _ = build_architecture(CONFIG_DIR / config)
    return SegmentEngine(model.eval(), family, name=name, cache=cache)


def write_tiny_adapters(root: Path) -> Path:
    """A checkpoints-like folder with a "shipped" adapter for each tiny model: singular values rescaled
    unevenly (a uniform scale would be undone by the LayerNorms after the neck's convolutions)."""
    for name in TINY:
        engine = tiny_engine(name)
        adapter = apply_adapter(engine)
        adapter.set_singular_values({k: s * torch.linspace(0.1, 2.0, len(s)).flip(0)
                                     for k, (_, s) in adapter.singular_values().items()})
        save_adapter(adapter, root / f"{name}-adapter")
        remove_adapter(engine)
    return root


def tiny_lab(adapter_root: Path) -> Lab:
    cache = EmbeddingCache()
    manager = ModelManager(lambda name: tiny_engine(name, cache), cache=cache, adapter_root=adapter_root)
    return Lab(manager)


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory) -> Path:
    return write_tiny_adapters(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def lab(adapter_root) -> Lab:
    return tiny_lab(adapter_root)


def scene_session(lab: Lab, index: int = 0, model: str = "sam-small") -> Session:
    session, canvas, editor, status = lab.on_example(Session(), model, SimpleNamespace(index=index))
    assert canvas is not None and editor["background"].shape == canvas.shape
    return session


# ------------------------------------------------------------------------------------ images
def test_normalize_image_converts_and_resizes():
    gray = np.full((20, 30), 7, np.uint8)
    image, note = normalize_image(gray)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8 and note == ""
    rgba = np.zeros((16, 16, 4), np.uint8)
    assert normalize_image(rgba)[0].shape == (16, 16, 3)
    floats = np.full((10, 10, 3), 0.5, np.float32)
    assert normalize_image(floats)[0][0, 0, 0] == 128
    big, note = normalize_image(np.zeros((3000, 1500, 3), np.uint8))
    assert big.shape == (1024, 512, 3) and "Resized from 1500x3000" in note
    with pytest.raises(UserError, match="Upload"):
        normalize_image(None)
    with pytest.raises(UserError, match="shape"):
        normalize_image(np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("hw,scale", [((256, 256), 2), ((100, 60), 4), ((341, 512), 1), ((1024, 800), 1)])
def test_display_scale_and_click_mapping(hw, scale):
    assert display_scale(hw) == scale
    h, w = hw
    for j, i in [(0, 0), (w - 1, h - 1), (w // 3, h // 2)]:
        # any displayed pixel covering image pixel (j, i) maps back to (j, i) within half a pixel
        for dx in range(scale):
            x, y = to_image_frame(j * scale + dx, i * scale + dx, hw)
            assert abs(x - j) <= 0.5 and abs(y - i) <= 0.5


# ------------------------------------------------------------------------------------ prompts
def test_prompt_editing_undo_and_clear():
    session = Session()
    set_image(session, np.zeros((64, 80, 3), np.uint8))
    add_click(session, MODE_POSITIVE, 10, 12)
    add_click(session, MODE_NEGATIVE, 30, 40)
    assert "corner" in add_click(session, MODE_BOX, 50, 50)
    assert session.prompts.corner == (50.0, 50.0) and session.prompts.box is None
    add_click(session, MODE_BOX, 20, 5)  # corners in any order
    state = session.prompts
    assert state.points == ((10.0, 12.0, 1), (30.0, 40.0, 0)) and state.box == (20.0, 5.0, 50.0, 50.0)
    assert state.corner is None
    prompt = state.to_prompt().validate((64, 80))
    assert prompt.kind == "point+box" and prompt.labels.tolist() == [1, 0]
    assert "1 positive point, 1 negative point, a box" == state.describe()

    assert clear_prompts(session).startswith("Cleared") and session.prompts.is_empty
    undo(session)
    assert session.prompts == state
    undo(session)  # the box's second corner
    assert session.prompts.box is None and session.prompts.corner == (50.0, 50.0)
    for _ in range(3):
        undo(session)
    assert session.prompts.is_empty and undo(session) == "Nothing to undo."


def test_prompt_errors_are_readable():
    session = Session()
    with pytest.raises(UserError, match="Upload"):
        add_click(session, MODE_POSITIVE, 1, 1)
    set_image(session, np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(UserError, match="outside"):
        add_click(session, MODE_POSITIVE, 40, 3)
    add_click(session, MODE_BOX, 5, 5)
    with pytest.raises(UserError, match="too thin"):
        add_click(session, MODE_BOX, 6, 20)
    with pytest.raises(UserError, match="Paint"):
        add_click(session, MODE_MASK, 3, 3)
    with pytest.raises(PromptError, match="No prompt"):
        PromptState().to_prompt()


def test_painted_mask_from_editor_layers():
    layer = np.zeros((128, 128, 4), np.uint8)  # displayed at 2x the 64 x 64 image
    layer[20:60, 40:100, 3] = 255
    mask = painted_mask({"background": None, "layers": [layer], "composite": None}, (64, 64))
    assert mask.shape == (64, 64) and mask[15, 30] and not mask[5, 5]
    assert mask.sum() == pytest.approx(20 * 30, abs=40)
    for empty in (None, {"layers": []}, {"layers": [np.zeros((8, 8, 4), np.uint8)]}):
        with pytest.raises(UserError, match="Nothing painted"):
            painted_mask(empty, (64, 64))
    with pytest.raises(UserError, match="no transparency channel"):  # an RGB layer sent through the API
        painted_mask({"layers": [np.full((64, 64, 3), 255, np.uint8)]}, (64, 64))
    session = Session()
    set_image(session, np.zeros((64, 64, 3), np.uint8))
    set_painted(session, mask, as_ground_truth=True)
    assert session.prompts.ground_truth is not None and not session.prompts.has_prompt
    set_painted(session, mask, as_ground_truth=False)
    assert session.prompts.to_prompt().kind == "mask"


# ------------------------------------------------------------------------------------ rendering
def test_render_overlay_draws_mask_and_prompts():
    image = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[40:60, 40:60] = True
    prompts = PromptState(points=((10.0, 10.0, 1), (30.0, 10.0, 0)), box=(35.0, 35.0, 62.0, 62.0))
    out = render_overlay(image, mask, prompts)
    s = display_scale((64, 64))
    assert out.shape == (64 * s, 64 * s, 3)
    # positive point: green disc, negative: red disc (off the white cross in their middle)
    green = out[int(10.5 * s) + 4, int(10.5 * s) + 4]
    red = out[int(10.5 * s) + 4, int(30.5 * s) + 4]
    assert green[1] > 150 and green[0] < 80 and red[0] > 180 and red[1] < 80
    inside = out[50 * s, 50 * s]
    assert inside[2] > inside[0] + 50  # tinted blue
    assert (out[2 * s, 50 * s] == 100).all()  # untouched elsewhere


def test_perturbation_image_scale_and_caption():
    clean = np.full((32, 32, 3), 100, np.uint8)
    adv = clean.copy()
    adv[:16] += 8
    adv[16:] -= 8
    picture, caption = perturbation_image(clean, adv, 8)
    s = display_scale((32, 32))
    assert picture.shape[1] == 32 * s and picture.shape[0] > 32 * s  # scale bar below
    assert picture[0, 0, 0] == 255 and picture[32 * s - 1, 0, 0] == 0
    assert "ε = 8/255" in caption and "L∞ = 8/255" in caption and "×16" in caption
    same, _ = perturbation_image(clean, clean, 8)
    assert abs(int(same[0, 0, 0]) - 128) <= 1


def test_transfer_figure_annotates_cells():
    figure = transfer_figure(np.array([[0.1, 0.9], [np.nan, 0.5]]), ["a", "b"], ["point", "box"], "t")
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == ["0.10", "0.90", "—", "0.50"]


# ------------------------------------------------------------------------------------ models
def test_model_choices_list_all_app_models_with_sizes():
    choices = dict((value, label) for label, value in model_choices())
    for name in ("sam-small", "sam2-small", "sam-vit-b", "sam-vit-l", "sam-vit-h", "sam2.1-hiera-tiny",
                 "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large"):
        assert name in choices
    assert "embedded" in choices["sam-small"]
    assert f"{MODEL_REGISTRY['sam-vit-h'].download_mb} MB" in choices["sam-vit-h"] or "downloaded" in choices["sam-vit-h"]


@pytest.mark.parametrize("repo,rev,ok", [
    ("owner/name", "", True), ("owner/name", "a1b2c3", True), ("owner/name", "refs/pr/1", True),
    ("../etc", "", False), ("/etc/passwd", "", False), ("a/b/c", "", False), ("owner/..", "", False),
    ("owner/name", "../../x", False), ("", "", False)])
def test_adapter_choice_accepts_only_hub_ids(repo, rev, ok):
    if ok:
        choice = AdapterChoice.parse("hub", repo, rev)
        assert choice.repo_id == repo and choice.label.startswith(repo)
    else:
        with pytest.raises(UserError):
            AdapterChoice.parse("hub", repo, rev)
    assert AdapterChoice.parse("none").kind == "none"


def test_hub_adapter_refuses_local_paths(lab, adapter_root, monkeypatch):
    monkeypatch.chdir(adapter_root.parent)
    choice = AdapterChoice.parse("hub", f"{adapter_root.name}/sam-small-adapter")
    with pytest.raises(UserError, match="local path"):
        lab.manager.robust("sam-small", choice)


def test_hub_adapter_offline_gives_a_readable_message(lab, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    info, adapter_md, figure = lab.on_model("sam-small", "hub", "someone/not-cached-adapter", "main")
    assert "sam-small" in info and figure is None
    assert adapter_md.startswith("⚠️") and "someone/not-cached-adapter" in adapter_md


def test_unknown_model_gives_a_readable_message(lab):
    info, adapter_md, figure = lab.on_model("sam-vit-z", "none", "", "")
    assert info.startswith("⚠️") and "Unknown model" in info


def test_shipped_adapter_loads_on_a_copy(lab):
    info, adapter_md, figure = lab.on_model("sam-small", "shipped", "", "")
    assert "M parameters" in info
    assert "never seen a photograph" in info  # the app says plainly what the embedded models are good at
    robust = lab.manager.robust("sam-small", AdapterChoice())
    original = lab.manager.engine("sam-small")
    assert robust.engine.model is not original.model and robust.engine.adapter_tag and not original.adapter_tag
    assert f"{robust.trainable:,} trainable values" in adapter_md and robust.trainable > 0
    assert figure is not None and len(figure.axes) >= 2
    assert lab.manager.robust("sam-small", AdapterChoice()) is robust  # loaded once
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    clean = original.embed_image(image).image_embed
    defended = robust.engine.embed_image(image).image_embed
    assert not torch.allclose(clean, defended, atol=1e-3)  # the robust model is another model
    assert torch.equal(original.embed_image(image).image_embed, clean)  # and the original is untouched


# ------------------------------------------------------------------------------------ handlers
def test_click_updates_canvas_and_leaves_the_old_session_alone(lab):
    session = scene_session(lab)
    new, canvas, status = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    assert session.prompts.is_empty and len(new.prompts.points) == 1  # handlers work on a copy
    assert canvas.shape == (512, 512, 3) and "Clean mask of **sam-small**" in status
    assert new.clean_mask is not None and new.clean_mask.shape == (256, 256)
    # the select event gives displayed pixels: (256, 200) at scale 2 is image pixel (128, 100)
    selected, _, _ = lab.on_select(session, MODE_POSITIVE, "sam-small", SimpleNamespace(index=[257, 201]))
    assert selected.prompts.points[0][:2] == pytest.approx((128.25, 100.25))


def test_bad_click_raises_gr_error_and_keeps_state(lab):
    session = scene_session(lab)
    with pytest.raises(gr.Error, match="outside"):
        lab.on_click(session, MODE_POSITIVE, "sam-small", 999, 5)
    assert session.prompts.is_empty
    with pytest.raises(gr.Error, match="Upload"):
        lab.on_click(Session(), MODE_POSITIVE, "sam-small", 1, 1)


def test_sessions_are_independent(lab):
    a, b = scene_session(lab, 0), scene_session(lab, 1)
    a, _, _ = lab.on_click(a, MODE_POSITIVE, "sam-small", 10, 10)
    b, _, _ = lab.on_click(b, MODE_NEGATIVE, "sam-small", 20, 20)
    assert a.prompts.points == ((10.0, 10.0, 1),) and b.prompts.points == ((20.0, 20.0, 0),)
    assert not np.array_equal(a.image, b.image)


def test_click_with_an_unavailable_model_keeps_the_prompt(lab, monkeypatch):
    session = scene_session(lab)

    def offline(name):
        raise ModelUnavailableError(f"Model {name!r} needs a download and could not get it.")

    monkeypatch.setattr(lab.manager, "factory", offline)
    session, canvas, status = lab.on_click(session, MODE_POSITIVE, "sam-vit-b", 10, 10)
    assert "⚠️ Model 'sam-vit-b' needs a download" in status and len(session.prompts.points) == 1
    info, _, _ = lab.on_model("sam-vit-b", "none", "", "")
    assert info.startswith("⚠️ Model 'sam-vit-b'")


def test_preload_embeds_the_examples(adapter_root):
    fresh = tiny_lab(adapter_root)
    fresh.preload("sam-small")
    assert len(fresh.manager.cache) == 2 * len(fresh.examples)  # original and robust model
    fresh.preload("sam-vit-h", examples=False)  # unavailable: logged, no exception


def test_mode_switch_selects_the_paint_tab(lab):
    assert lab.on_mode(MODE_MASK).selected == "paint"
    assert lab.on_mode(MODE_BOX).selected == "click"


def test_examples_are_listed_readable_and_the_only_files(lab):
    assert len(lab.examples) >= 6
    listed = {e.path.name for e in lab.examples}
    readme = (ASSETS_DIR / "README.md").read_text()
    for example in lab.examples:
        assert example.path.parent == ASSETS_DIR.resolve() and example.caption
        assert example.path.name.split("-")[0].split(".")[0] in readme
        image, _ = read_example(lab.examples, lab.examples.index(example))
        assert image.ndim == 3 and max(image.shape[:2]) <= 512
    assert {e["file"] for e in json.loads((ASSETS_DIR / "examples.json").read_text())} == listed
    for bad in (-100, 99, "../../etc/passwd", None):
        with pytest.raises(UserError):
            read_example(lab.examples, bad)


def read_png(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("model", ["sam-small", "sam2-small"])
def test_attack_fills_the_grid_table_and_png(lab, model):
    session = scene_session(lab, 0, model)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, model, 128, 100)
    progress_calls = []
    outputs = lab.on_attack(session, model, "shipped", "", "", "mask", "pgd", 8, 3, 0, "original",
                            SimpleNamespace(session_hash="s1"), lambda *a, **k: progress_calls.append(a))
    *panels, table, perturbation, caption, png, slider, true_scale, bundle, timings = outputs
    assert len(panels) == 4
    for panel in panels:
        assert panel.value is not None and "IoU" in panel.label
    assert [row[:2] for row in table] == [["original model", "clean"], ["original model", "adversarial"],
                                          ["robust model", "clean"], ["robust model", "adversarial"]]
    assert table[0][2] == table[0][3] == "1.000" and table[1][2] == table[1][3]
    assert table[1][5] in ("yes", "no") and table[3][5] in ("yes", "no") and table[0][5] == "—"
    assert table[0][4] == "—"  # no ground truth painted
    for row, panel in zip(table, panels):  # without ground truth the panels show IoU vs the original clean mask
        shown = float(panel.label.split("IoU ")[1].split()[0])
        assert shown == pytest.approx(float(row[2]), abs=0.006)
    adv = read_png(png)
    delta = adv.astype(int) - session.image.astype(int)
    assert adv.shape == session.image.shape and np.abs(delta).max() <= 8 and np.abs(delta).max() > 0
    assert perturbation.ndim == 3 and perturbation.shape[1] >= session.image.shape[1]
    assert "ε = 8/255" in caption and "3 steps" in timings and "original" in timings
    assert any(call and call[0] == (3, 3) for call in progress_calls)


def test_attack_outcome_ious_and_ground_truth(lab):
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    gt = np.zeros((256, 256), bool)
    gt[80:140, 100:170] = True
    set_painted(session, gt, as_ground_truth=True)
    job = AttackJob.from_widgets(model="sam-small", adapter_kind="shipped", repo_id="", revision="", attack="mask",
                                 generator="fgsm", eps255=4, steps=1, seed=0, target=TARGET_ROBUST)
    outcome = run_attack(lab.manager, job, session.image, session.prompts)
    assert set(outcome.ious) == set(PANEL_KEYS)
    for key, value in outcome.ious.items():
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(mask_iou(outcome.panels[key].mask, gt))
    assert outcome.reference == "your ground truth" and outcome.target_name == "robust"
    assert all(row[4] is not None for row in outcome.table)
    for row, key in zip(outcome.table, PANEL_KEYS):
        assert row[4] == pytest.approx(outcome.ious[key], abs=1e-3)
    assert np.abs(outcome.adversarial.astype(int) - session.image.astype(int)).max() <= 4


def test_attack_without_adapter_leaves_robust_panels_empty(lab):
    session = scene_session(lab, 1)
    session, _, _ = lab.on_click(session, MODE_BOX, "sam-small", 60, 60)
    session, _, _ = lab.on_click(session, MODE_BOX, "sam-small", 200, 180)
    *panels, table, _, _, _, _, _, _, _ = lab.on_attack(session, "sam-small", "none", "", "", "random", "pgd", 8, 2, 0,
                                               "original", None, lambda *a, **k: None)
    assert panels[2].value is None and "no adapter" in panels[2].label
    assert table[2][2:] == ["—", "—", "—", "—", "—"]
    with pytest.raises(gr.Error, match="adaptive attack needs a robust model"):
        lab.on_attack(session, "sam-small", "none", "", "", "mask", "pgd", 8, 2, 0, "robust", None,
                      lambda *a, **k: None)


@pytest.mark.parametrize("args,message", [
    (("mask", "pgd", 8, 2, 0, "original"), "No prompt"),
    (("nope", "pgd", 8, 2, 0, "original"), "Unknown attack"),
    (("mask", "pgd", 99, 2, 0, "original"), "ε must be"),
    (("mask", "adam", 8, 2, 0, "original"), "Unknown generator"),
])
def test_attack_errors_are_readable(lab, args, message):
    session = scene_session(lab, 2)
    with pytest.raises(gr.Error, match=message):
        if message != "No prompt":
            session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 50, 50)
        lab.on_attack(session, "sam-small", "none", "", "", *args, None, lambda *a, **k: None)


def test_cancel_stops_a_running_attack(lab):
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    request = SimpleNamespace(session_hash="cancel-me")
    steps_seen = []

    def progress(value, desc=None, **kwargs):
        if isinstance(value, tuple):
            steps_seen.append(value[0])
            if value[0] == 2:
                assert lab.on_cancel(request).startswith("Cancelling")

    outputs = lab.on_attack(session, "sam-small", "none", "", "", "mask", "pgd", 8, 50, 0, "original", request,
                            progress)
    assert outputs[-1].startswith("Attack cancelled") and max(steps_seen) == 2
    assert lab.on_cancel(request) == "No attack is running."


def test_concurrent_attacks_of_two_sessions(lab):
    sessions = []
    for index in (0, 1):
        session = scene_session(lab, index)
        session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 100, 100)
        sessions.append(session)
    results, errors = {}, []

    def run(i):
        try:
            results[i] = lab.on_attack(sessions[i], "sam-small", "shipped", "", "", "mask", "pgd", 8, 2, i,
                                       "original", SimpleNamespace(session_hash=f"t{i}"), lambda *a, **k: None)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and set(results) == {0, 1}
    assert not np.array_equal(read_png(results[0][7]), read_png(results[1][7]))


def test_transfer_matrix_heatmap(lab):
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    progress_values = []
    figure, md = lab.on_transfer(session, "sam-small", "shipped", "", "", "mask", "pgd", 8, 1, 0, "robust",
                                 None, lambda value, desc=None, **k: progress_values.append(value))
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["point", "box", "mask"]
    assert "mask@box" in [t.get_text() for t in ax.get_yticklabels()]
    assert len(ax.texts) == 3 * TRANSFER_ROWS and "robust" in ax.get_title()
    assert progress_values and max(v for v in progress_values if isinstance(v, float)) == pytest.approx(1.0)
    assert "prompt type" in md


def test_paint_handlers(lab):
    session = scene_session(lab, 3)
    layer = np.zeros((512, 512, 4), np.uint8)
    layer[300:360, 300:380, 3] = 255
    editor = {"background": None, "layers": [layer], "composite": None}
    session, canvas, status = lab.on_paint_ground_truth(session, editor, "sam-small")
    assert "ground truth" in status and session.prompts.ground_truth.sum() > 0
    session, canvas, status = lab.on_paint_prompt(session, editor, "sam-small")
    assert "Clean mask" in status and session.prompts.mask is not None
    with pytest.raises(gr.Error, match="Nothing painted"):
        lab.on_paint_prompt(session, {"layers": []}, "sam-small")
