"""End-to-end tests of the web app through its HTTP API with gradio_client.

The app (``app.build_demo``) is served on 127.0.0.1 from a thread, with the tiny seeded test
engines and a real "shipped" adapter (see test_app.py); one test also starts
``python app.py`` itself in a subprocess to check the command line and the real start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

try:
    from test_app import tiny_lab, write_tiny_adapters
except ImportError:  # tests/ imported as a package
    from tests.test_app import tiny_lab, write_tiny_adapters

import app
from benchmarks._common import free_port, stop
from samdemo.app.session import MODE_BOX, MODE_NEGATIVE, MODE_POSITIVE
from samdemo.app.text import TABLE_HEADERS

REPO = Path(__file__).resolve().parent.parent
SCENE = REPO / "assets" / "scene-0.png"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    lab = tiny_lab(write_tiny_adapters(tmp_path_factory.mktemp("checkpoints")))
    lab.curve_eps255 = (0, 4)  # the lab features at test size: 2 attacks per curve, 16 point prompts
    lab.everything_settings = {"points_per_side": 4}
    demo = app.build_demo(lab)
    _, local_url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                  quiet=True, **app.LAUNCH_LIMITS)
    yield local_url
    demo.close()


@pytest.fixture
def client(url) -> Client:
    return Client(url, verbose=False)


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_analytics_are_off_by_default():
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_prompt_gives_a_mask(client):
    canvas, editor, status = client.predict(handle_file(str(SCENE)), "sam-small", api_name="/set_image")
    assert read_rgb(canvas).shape == (512, 512, 3) and "no prompt" in status
    plain = read_rgb(canvas)
    canvas, status = client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    assert "Clean mask of **sam-small**" in status and "1 positive point" in status
    drawn = read_rgb(canvas)
    assert drawn.shape == plain.shape and (drawn != plain).any(axis=2).mean() > 0.001  # point + mask drawn
    # the positive point is drawn green at the click (displayed at 2x)
    y, x = 200 + 4, 256 + 3  # the disc's centre is pixel (256, 200); its radius is 8
    assert drawn[y, x, 1] > 150 and drawn[y, x, 0] < 100
    canvas, status = client.predict(MODE_BOX, "sam-small", 60, 40, api_name="/click")
    assert "opposite corner" in status
    canvas, status = client.predict(MODE_BOX, "sam-small", 200, 180, api_name="/click")
    assert "a box" in status and "Clean mask" in status
    canvas, status = client.predict("sam-small", api_name="/undo")
    assert "corner" in status
    canvas, status = client.predict("sam-small", api_name="/clear")
    assert "Cleared" in status and "no prompt" in status


def test_attack_returns_the_four_panels_and_ious(client):
    client.predict("sam-small", 0, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    outputs = client.predict("sam-small", "shipped", "", "", "mask", "pgd", 8, 3, 0, "original", api_name="/attack")
    *panels, table, perturbation, caption, adv_png, slider, true_scale, bundle, timings = outputs
    assert len(panels) == 4
    panel_ious = []
    for panel, title in zip(panels, ["Original model · clean", "Original model · adversarial",
                                     "Robust model · clean", "Robust model · adversarial"]):
        assert read_rgb(panel["value"]).shape == (512, 512, 3)
        assert panel["label"].startswith(title)
        panel_ious.append(float(panel["label"].split("IoU ")[1].split()[0]))
    assert table["headers"] == TABLE_HEADERS
    rows = table["data"]
    assert [r[:2] for r in rows] == [["original model", "clean"], ["original model", "adversarial"],
                                     ["robust model", "clean"], ["robust model", "adversarial"]]
    ious = [float(r[2]) for r in rows]  # the four IoUs vs the original model's clean mask
    assert ious[0] == 1.0 and all(0.0 <= v <= 1.0 for v in ious)
    assert panel_ious == pytest.approx(ious, abs=0.006)
    assert all(r[5] in ("yes", "no") for r in rows[1::2])
    adv = read_rgb(adv_png)
    clean = read_rgb(SCENE)
    assert adv.shape == clean.shape and np.abs(adv.astype(int) - clean.astype(int)).max() <= 8
    assert "ε = 8/255" in caption and "Timings" in timings and "against the original model's clean mask" in timings
    assert read_rgb(perturbation).shape[1] == 512


def test_adaptive_attack_with_ground_truth(client, tmp_path):
    client.predict("sam-small", 0, api_name="/load_example")
    layer = np.zeros((512, 512, 4), np.uint8)
    layer[160:280, 200:340] = (0, 229, 229, 255)
    path = tmp_path / "layer.png"
    cv2.imwrite(str(path), cv2.cvtColor(layer, cv2.COLOR_RGBA2BGRA))
    editor = {"background": None, "layers": [handle_file(str(path))], "composite": None, "id": None}
    canvas, status = client.predict(editor, "sam-small", api_name="/paint_ground_truth")
    assert "ground truth" in status
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    outputs = client.predict("sam-small", "shipped", "", "", "feature", "mifgsm", 4, 2, 1, "robust",
                             api_name="/attack")
    table = outputs[4]
    assert all(0.0 <= float(r[4]) <= 1.0 for r in table["data"])  # IoU vs the painted ground truth
    assert "Crafted on the **robust** model" in outputs[-1] and "your ground truth" in outputs[-1]


def test_a_painted_layer_claiming_too_many_pixels_is_refused_before_decoding(client, tmp_path):
    from PIL import Image

    client.predict("sam-small", 0, api_name="/load_example")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb)  # a few kB on disk, 100 M pixels (400 MB as RGBA)
    assert bomb.stat().st_size < 100_000
    editor = {"background": None, "layers": [handle_file(str(bomb))], "composite": None, "id": None}
    with pytest.raises(AppError, match="10000x10000 px; at most 40 megapixels"):
        client.predict(editor, "sam-small", api_name="/paint_prompt")
    layer = np.zeros((512, 512, 4), np.uint8)
    layer[160:280, 200:340] = (0, 229, 229, 255)
    path = tmp_path / "layer.png"
    cv2.imwrite(str(path), cv2.cvtColor(layer, cv2.COLOR_RGBA2BGRA))
    editor["layers"] = [handle_file(str(path))]
    _, status = client.predict(editor, "sam-small", api_name="/paint_prompt")  # the server goes on
    assert "Painted mask prompt set" in status


def test_transfer_matrix_endpoint(client):
    client.predict("sam-small", 1, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 60, 60, api_name="/click")
    plot, md = client.predict("sam-small", "none", "", "", "mask", "fgsm", 8, 1, 0, "original",
                              api_name="/transfer")
    assert plot["type"] == "matplotlib" and plot["plot"] and "prompt type" in md


def test_lab_endpoints_curve_segment_everything_and_bundle(client):
    import json
    import zipfile

    client.predict("sam-small", 0, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    plot, md = client.predict("sam-small", "shipped", "", "", "mask", "fgsm", 8, 1, 0, "original", api_name="/curve")
    assert plot["type"] == "matplotlib" and plot["plot"] and "| 4 |" in md
    *pictures, md = client.predict("sam-small", "shipped", "", "", "cross-prompt", "fgsm", 8, 1, 0, "original",
                                   api_name="/segment_everything")
    assert len(pictures) == 4 and all(read_rgb(p["value"] if isinstance(p, dict) else p).shape == (512, 512, 3)
                                      for p in pictures)
    assert "survive" in md and "**Robust model**" in md
    outputs = client.predict("sam-small", "shipped", "", "", "cross-prompt", "fgsm", 4, 1, 0, "original",
                             api_name="/attack")
    before_after, true_scale, bundle = outputs[-4:-1]
    clean, adversarial = (read_rgb(p["path"] if isinstance(p, dict) else p) for p in before_after)
    assert clean.shape == adversarial.shape == (512, 512, 3) and read_rgb(true_scale).shape == (512, 512, 3)
    with zipfile.ZipFile(bundle) as archive:
        assert json.loads(archive.read("settings.json"))["attack"] == "cross-prompt"
        assert "adversarial.png" in archive.namelist()
    with pytest.raises(AppError, match="crafted for your prompt"):
        client.predict("sam-small", 1, api_name="/load_example")
        client.predict("sam-small", "none", "", "", "mask", "pgd", 8, 1, 0, "original", api_name="/segment_everything")


def test_switching_to_sam2(client):
    info, adapter_md, plot = client.predict("sam2-small", "shipped", "", "", api_name="/load_model")
    assert info.startswith("**sam2-small**") and "trainable values" in adapter_md and plot["type"] == "matplotlib"
    client.predict("sam2-small", 1, api_name="/load_example")
    _, status = client.predict(MODE_POSITIVE, "sam2-small", 100, 120, api_name="/click")
    assert "Clean mask of **sam2-small**" in status


def test_quick_successive_clicks_are_all_kept(client):
    client.predict("sam-small", 2, api_name="/load_example")
    jobs = [client.submit(MODE_POSITIVE, "sam-small", 20 + 20 * i, 30, api_name="/click") for i in range(5)]
    statuses = [job.result()[1] for job in jobs]
    assert sorted(int(s.split("Prompts: ")[1].split()[0]) for s in statuses) == [1, 2, 3, 4, 5]


def test_sessions_do_not_see_each_other(url):
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    a.predict("sam-small", 2, api_name="/load_example")
    b.predict("sam-small", 3, api_name="/load_example")
    _, status_a = a.predict(MODE_NEGATIVE, "sam-small", 30, 30, api_name="/click")
    assert "1 negative point" in status_a
    _, status_b = b.predict("sam-small", api_name="/undo")
    assert status_b.startswith("Nothing to undo")


def test_errors_are_readable_and_the_server_keeps_serving(client):
    with pytest.raises(AppError, match="Upload or paste an image first"):
        client.predict(MODE_POSITIVE, "sam-small", 5, 5, api_name="/click")
    client.predict("sam-small", 0, api_name="/load_example")
    with pytest.raises(AppError, match="outside"):
        client.predict(MODE_POSITIVE, "sam-small", 5000, 5, api_name="/click")
    with pytest.raises(AppError, match="No prompt"):
        client.predict("sam-small", "none", "", "", "mask", "pgd", 8, 2, 0, "original", api_name="/attack")
    with pytest.raises(AppError, match="Pick one of the example"):
        client.predict("sam-small", 1000, api_name="/load_example")
    info, adapter_md, plot = client.predict("sam-small", "hub", "../../etc", "", api_name="/load_model")
    assert "not a Hugging Face Hub repo id" in adapter_md
    _, status = client.predict(MODE_POSITIVE, "sam-small", 50, 50, api_name="/click")
    assert "Clean mask" in status
    assert client.predict(api_name="/cancel") == "No attack is running."


def test_cli_flags():
    args = app.parse_args(["--host", "0.0.0.0", "--port", "9001", "--share", "--model", "sam2-small"])
    assert (args.host, args.port, args.share, args.model) == ("0.0.0.0", 9001, True, "sam2-small")
    assert app.parse_args([]).model == "sam-small" and app.parse_args([]).host is None
    with pytest.raises(SystemExit):
        app.parse_args(["--model", "not-a-model"])


def test_app_py_starts_and_serves(tmp_path):
    """`python app.py --host 127.0.0.1 --port P` serves the page (whatever weights this checkout has)."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=REPO,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, page = time.time() + 120, None
        while time.time() < deadline and process.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, (tmp_path / "app.log").read_text()[-3000:]
        assert "samdemo" in page
        config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10).read().decode()
        assert "Run attack" in config and "Robust model" in config
    finally:
        stop(process)
        log.close()


def test_train_an_adapter_and_attack_with_it(url, tmp_path):
    """Training through the API (2 steps, generated scenes, then 2 uploaded images); the adapter is this
    session's robust model at once, and no other session's."""
    client, other = Client(url, verbose=False), Client(url, verbose=False)
    table, md, kind, adapter_md, plot = client.predict("sam-small", "paper", 4, 2, "scenes", None,
                                                       api_name="/train_adapter")
    assert table["headers"] == ["held-out condition", "point mIoU", "box mIoU", "mask mIoU"]
    assert [row[0].split(" (")[0] for row in table["data"]] == ["clean, original", "clean, adapted",
                                                               "cross-prompt attack", "cross-prompt attack"]
    assert kind == "trained" and "**Trained** sam-small" in md and "trained in this session" in adapter_md
    assert plot["type"] == "matplotlib"
    client.predict("sam-small", 0, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    outputs = client.predict("sam-small", "trained", "", "", "feature", "pgd", 8, 1, 0, "robust", api_name="/attack")
    assert outputs[2]["label"].startswith("Robust model · clean") and "robust" in outputs[-1]
    other.predict("sam-small", 0, api_name="/load_example")
    other.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    with pytest.raises(AppError, match="No adapter has been trained in this session"):
        other.predict("sam-small", "trained", "", "", "feature", "pgd", 8, 1, 0, "robust", api_name="/attack")

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"photo{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.imread(str(REPO / "assets" / f"scene-{i}.png")))
    table, md, kind, *_ = client.predict("sam-small", "spread", 3, 1, "uploads", [handle_file(str(p)) for p in paths],
                                         api_name="/train_adapter")
    assert "2 images from your uploads (1 train, 1 held out)" in md and "3 singular values per layer" in md


def test_training_errors_are_readable(client, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the server runs in this process
    with pytest.raises(AppError, match="Upload at least 2 images"):
        client.predict("sam-small", "paper", 4, 2, "uploads", None, api_name="/train_adapter")
    with pytest.raises(AppError, match="Training steps must be a whole number from 1 to 300"):
        client.predict("sam-small", "paper", 4, 2.5, "scenes", None, api_name="/train_adapter")
    with pytest.raises(AppError, match="Train an adapter first"):
        client.predict("me/adapter", "hf_token", False, api_name="/push_adapter")
    client.predict("sam-small", "paper", 4, 1, "scenes", None, api_name="/train_adapter")
    with pytest.raises(AppError, match="is not a Hugging Face Hub repo id"):
        client.predict("not a repo", "hf_token", False, api_name="/push_adapter")
    with pytest.raises(AppError, match="HF_HUB_OFFLINE=1"):  # offline: the Hub is not asked
        client.predict("me/adapter", "hf_token", False, api_name="/push_adapter")
    assert client.predict(api_name="/cancel_training") == "No attack is running."
