"""Training a robust adapter in the app, without a browser (issue 18, item 4), and the guided tour.

Tiny seeded engines as in test_app.py; runs of 2 steps. What is checked: the trained adapter becomes the
session's robust model (its masks differ from the original's, the next attack uses it) and never reaches
the shared model nor another session; cancel, the time limit and bad inputs give readable messages and
leave nothing behind; pushing needs a valid repo id and the visitor's own token, which no message repeats.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

try:
    from test_app import scene_session, tiny_lab, write_tiny_adapters
except ImportError:  # tests/ imported as a package
    from tests.test_app import scene_session, tiny_lab, write_tiny_adapters

from samdemo import limits
from samdemo.app.actions import AttackJob, TrainJob, bundle_settings, run_attack
from samdemo.app.models import ADAPTER_TRAINED, AdapterChoice
from samdemo.app.session import MODE_POSITIVE, Session
from samdemo.app.text import TOUR_STEPS
from samdemo.defense import get_adapter
from samdemo.errors import UserError
from samdemo.prompts import Prompt
from samdemo.scenes import train_scene

NOOP = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return tiny_lab(write_tiny_adapters(tmp_path_factory.mktemp("checkpoints")))


def train(lab, session=None, source="scenes", files=None, steps=2, budget="paper", k=4, key="trainer",
          progress=NOOP):
    return lab.on_train(session or Session(), "sam-small", budget, k, steps, source, files,
                        SimpleNamespace(session_hash=key), progress)


def logits(engine, image):
    prompt = Prompt(points=np.array([[30.0, 30.0]], np.float32), labels=np.array([1]))
    return engine.predict(image, [prompt]).low_res_all


def test_training_makes_the_session_robust_model_and_nothing_else(lab):
    original = lab.manager.engine("sam-small")
    image = train_scene(7, size=64).image
    before = logits(original, image)
    calls = []
    session, rows, md, kind, adapter_md, figure = train(
        lab, progress=lambda value, desc="", unit="": calls.append((value, desc)))
    assert kind == ADAPTER_TRAINED and session.trained is not None and session.trained.model == "sam-small"
    assert [row[0] for row in rows] == [
        "clean, original", "clean, adapted",
        "cross-prompt attack (8/255, 10 steps, against the original model), original",
        "cross-prompt attack (8/255, 10 steps, against the adapted model), adapted"]
    assert all(0.0 <= float(v) <= 1.0 for row in rows for v in row[1:])
    assert "**Trained** sam-small, 64 values (every singular value of 2 layers), 2 steps" in md
    assert "procedural scenes" in md and "robust model" in md and "4 images" in md
    assert "trained in this session" in adapter_md and figure is not None
    assert [value for value, _ in calls[1:]] == [(0, 2), (1, 2), (2, 2), (2, 2)]  # checks, steps, check
    assert calls[2][1].startswith("Training: step 1/2, loss ")

    # the shared model is untouched; the session's robust model is a merged, frozen copy whose masks moved
    assert get_adapter(original) is None and torch.equal(logits(original, image), before)
    robust = lab.manager.robust("sam-small", AdapterChoice.parse(ADAPTER_TRAINED, trained=session.trained))
    assert robust.engine.model is not original.model and robust.source == "trained in this session"
    assert not any(p.requires_grad for p in robust.engine.model.parameters())
    assert not torch.allclose(logits(robust.engine, image), before, atol=1e-4)
    assert robust.trainable == 64 and not robust.adapter.is_identity()

    # the next attack uses it; a session that trained nothing cannot choose it
    session.image, session.image_name = image, "scene"
    session, *_ = lab.on_click(session, MODE_POSITIVE, "sam-small", 30, 30)
    outputs = lab.on_attack(session, "sam-small", ADAPTER_TRAINED, "", "", "feature", "pgd", 8, 1, 0, "robust",
                            SimpleNamespace(session_hash="trainer"), NOOP)
    assert outputs[2].value is not None and "Robust model" in outputs[2].label
    job = AttackJob.from_widgets(model="sam-small", adapter_kind=ADAPTER_TRAINED, repo_id="", revision="",
                                 attack="feature", generator="pgd", eps255=8, steps=1, seed=0, target="robust",
                                 trained=session.trained)
    outcome = run_attack(lab.manager, job, image, session.prompts)
    expected = robust.engine.predict(image, [session.prompts.to_prompt()]).masks[0].numpy()
    np.testing.assert_array_equal(outcome.panels["robust/clean"].mask, expected)
    settings, caveats = bundle_settings(job, session.prompts)
    assert settings["adapter"] is None and "trained in the app and is not in the bundle" in caveats[0]
    with pytest.raises(gr.Error, match="No adapter has been trained in this session"):
        lab.on_attack(scene_session(lab), "sam-small", ADAPTER_TRAINED, "", "", "feature", "pgd", 8, 1, 0,
                      "original", SimpleNamespace(session_hash="other"), NOOP)
    assert "No adapter has been trained" in lab.on_adapter("sam-small", ADAPTER_TRAINED, "", "", Session())[0]
    assert "is for sam-small, not sam2-small" in lab.on_adapter("sam2-small", ADAPTER_TRAINED, "", "", session)[0]

    # training again replaces it: the old folder goes, the new adapter is the robust model
    old = session.trained
    session, *_ = train(lab, session, budget="spread", k=3)
    assert not old.folder.exists() and session.trained.folder.exists()
    assert "3 singular values per layer" in session.trained.description
    lab.on_session_end(session)  # gr.State's delete callback
    assert not session.trained.folder.exists()
    assert "no longer kept" in lab.on_adapter("sam-small", ADAPTER_TRAINED, "", "", session)[0]


def test_training_on_examples_and_uploads(lab, tmp_path):
    session, rows, md, *_ = train(lab, source="examples")
    assert "4 images from the bundled examples (3 train, 1 held out)" in md and len(rows) == 4
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"upload{i}.png")
        Image.fromarray(train_scene(i, size=90).image).save(paths[-1])
    session, rows, md, *_ = train(lab, source="uploads", files=[str(p) for p in paths], steps=1)
    assert "2 images from your uploads (1 train, 1 held out)" in md and "1 images" in md
    assert session.trained.folder.exists()


@pytest.mark.parametrize("kwargs,message", [
    (dict(source="uploads", files=None), "Upload at least 2 images"),
    (dict(source="uploads", files=["one.png"]), r"got 1\)"),
    (dict(steps=0), "Training steps must be a whole number from 1 to"),
    (dict(steps=limits.MAX_TRAIN_STEPS + 1), "SAMDEMO_MAX_TRAIN_STEPS"),
    (dict(budget="spread", k=0), "Singular values per layer must be a whole number"),
    (dict(budget="everything"), "Unknown budget"),
    (dict(source="my disk"), "Unknown image source"),
])
def test_bad_training_inputs_are_readable(lab, kwargs, message):
    folders = list(lab._trained_folders)
    with pytest.raises(gr.Error, match=message):
        train(lab, **kwargs)
    assert lab._trained_folders == folders


def test_an_unreadable_upload_is_named(lab, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    good = tmp_path / "good.png"
    Image.fromarray(train_scene(0, size=64).image).save(good)
    with pytest.raises(gr.Error, match="notes.png is not an image"):
        train(lab, source="uploads", files=[str(good), str(bad)])


def test_too_many_uploads(lab, monkeypatch):
    monkeypatch.setattr(limits, "MAX_TRAIN_IMAGES", 3)
    with pytest.raises(gr.Error, match="at most 3 are used"):
        train(lab, source="uploads", files=["a.png"] * 4)


def test_cancel_and_time_limit_leave_nothing_behind(lab, monkeypatch):
    session = Session()
    folders = list(lab._trained_folders)

    def cancel_at_step_one(value, desc="", unit=""):
        if value == (1, 3):
            lab.on_cancel(SimpleNamespace(session_hash="cancelled"))

    outputs = train(lab, session, steps=3, key="cancelled", progress=cancel_at_step_one)
    assert len(outputs) == 6 and "cancelled before it finished" in outputs[-1]
    assert lab._trained_folders == folders and session.trained is None
    assert get_adapter(lab.manager.engine("sam-small")) is None

    monkeypatch.setattr(limits, "TRAIN_TIME_LIMIT_S", 0.0)
    with pytest.raises(gr.Error, match="The training was stopped after .* a request may run for at most 0 s"):
        train(lab)
    assert lab._trained_folders == folders


def test_trained_robust_models_are_bounded(lab, monkeypatch):
    monkeypatch.setattr(limits, "TRAINED_MODELS", 1)
    first, *_ = train(lab, key="a", steps=1)
    second, *_ = train(lab, key="b", steps=1)
    trained = [k for k in lab.manager._robust if k[1].kind == ADAPTER_TRAINED]
    assert [k[1].trained for k in trained] == [second.trained]
    # the evicted one is rebuilt from its folder when its session uses it again
    robust = lab.manager.robust("sam-small", AdapterChoice.parse(ADAPTER_TRAINED, trained=first.trained))
    assert robust.source == "trained in this session"
    job = AttackJob.from_widgets(model="sam-small", adapter_kind=ADAPTER_TRAINED, repo_id="", revision="",
                                 attack="feature", generator="pgd", eps255=8, steps=1, seed=0, target="robust",
                                 trained=first.trained)
    assert job.adapter.trained == first.trained


def test_train_job_budgets():
    paper = TrainJob.from_widgets(model="sam-small", budget="paper", values_per_layer=5, steps=20, source="scenes")
    assert paper.config.targets == "" and paper.config.svd_rank == 0 and paper.config.eval_every == 20
    spread = TrainJob.from_widgets(model="sam-small", budget="spread", values_per_layer=14, steps=3, source="uploads")
    assert spread.config.targets == "image_encoder.*" and spread.config.svd_rank == 14 and spread.config.warmup == 1


# ------------------------------------------------------------------------ push to the Hub
def test_push_checks_its_inputs_and_never_repeats_the_token(lab, monkeypatch, caplog):
    with pytest.raises(gr.Error, match="Train an adapter first"):
        lab.on_push(Session(), "me/adapter", "hf_secret")
    session, *_ = train(lab, key="pusher", steps=1)
    with pytest.raises(gr.Error, match="is not a Hugging Face Hub repo id"):
        lab.on_push(session, "../etc/passwd", "hf_secret")
    with pytest.raises(gr.Error, match="Paste a Hugging Face access token"):
        lab.on_push(session, "me/adapter", "  ")

    import samdemo.hub

    class Refused(Exception):
        response = SimpleNamespace(status_code=401)

    def refuse(folder, repo_id, revision=None, token=None, **kwargs):
        assert Path(folder) == session.trained.folder and token == "hf_secret"
        raise Refused(f"401 Unauthorized for token hf_secret on {repo_id}")

    monkeypatch.setattr(samdemo.hub, "push_adapter", refuse)
    with caplog.at_level(logging.INFO), pytest.raises(gr.Error) as raised:
        lab.on_push(session, "me/adapter", "hf_secret")
    assert "refused the token (HTTP 401)" in str(raised.value)
    assert "hf_secret" not in str(raised.value) and "hf_secret" not in caplog.text

    def fail(folder, repo_id, revision=None, token=None, **kwargs):
        raise ConnectionError(f"connection reset while sending {token}")

    monkeypatch.setattr(samdemo.hub, "push_adapter", fail)
    with caplog.at_level(logging.INFO), pytest.raises(gr.Error) as raised:
        lab.on_push(session, "me/adapter", "hf_secret")
    assert "ConnectionError" in str(raised.value) and "***" in str(raised.value)
    assert "hf_secret" not in str(raised.value) and "hf_secret" not in caplog.text

    monkeypatch.setattr(samdemo.hub, "push_adapter",
                        lambda folder, repo_id, token=None, **kwargs: SimpleNamespace(oid="abc123"))
    md = lab.on_push(session, "me/adapter", "hf_secret")
    assert "Pushed to **me/adapter** at commit `abc123`" in md and "hf_secret" not in md


def test_push_through_a_loopback_hub(lab, monkeypatch):
    """A real upload (huggingface_hub against tests/hub_server.py); the files arrive as the app wrote them."""
    from huggingface_hub import constants

    try:
        from hub_server import DEFAULT_TOKEN, FakeHub
    except ImportError:
        from tests.hub_server import DEFAULT_TOKEN, FakeHub

    session, *_ = train(lab, key="loopback", steps=1)
    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        md = lab.on_push(session, "tester/app-adapter", DEFAULT_TOKEN, False)
        commit = hub.repos["tester/app-adapter"].branches["main"]
        assert f"commit `{commit}`" in md
        pushed = hub.files("tester/app-adapter", "main")
        for name in ("adapter.safetensors", "adapter_config.json", "README.md"):
            assert pushed[name] == (session.trained.folder / name).read_bytes()
        with pytest.raises(gr.Error, match="refused the token"):
            lab.on_push(session, "tester/app-adapter", "hf_wrong_token", False)


# ------------------------------------------------------------------------ the tour
def test_the_tour_steps_through_click_attack_compare_curve(lab):
    assert len(TOUR_STEPS) == 4
    index, md = lab.on_tour(0)
    assert index == 0 and md.startswith("**Step 1 of 4.** **Click.**")
    titles = []
    for _ in range(5):
        index, md = lab.on_tour_next(index)
        titles.append(md.split("**")[3])
    assert titles == ["Attack.", "Compare.", "The curve.", "The curve.", "The curve."]
    assert lab.on_tour_back(0)[0] == 0 and lab.on_tour("x")[0] == 0
