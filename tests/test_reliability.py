"""Reliability and security (issue #8): bad inputs, limits, concurrency and faults, through the real entry points.

* the functions behind the UI (the ``samdemo.app`` package, the tiny seeded engines of test_app.py);
* the running app through gradio_client (the server of test_app_client.py, launched with the app's
  limits; the soak test serves the real embedded sam-small);
* the CLI (``python -m samdemo attack``: its ``main(argv)`` in-process, and once as a subprocess).

Every refused input must give a clear message, write nothing where it should not, and leave the
app serving: each case is followed by a normal request that must work.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

import app
from samdemo.app.handlers import Lab, error_message
from samdemo.app.models import ADAPTER_HUB, AdapterChoice, ModelManager, default_engine_factory
from samdemo.app.session import MODE_BOX, MODE_POSITIVE, PromptState, Session, display_scale
from samdemo import build, limits, pipeline
from samdemo.app import handlers
from samdemo.defense import apply_adapter, save_adapter
from samdemo.build import CONFIG_DIR, build_architecture
from samdemo.engine import EmbeddingCache, SegmentEngine
from samdemo.errors import UserError
from tests.test_app_client import client, free_port, url  # noqa: F401  (the app served with the tiny engines)
from tests.test_app import adapter_root, lab, scene_session, tiny_engine  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
NOOP = lambda *a, **k: None  # noqa: E731  (a gr.Progress stand-in)


# ============================================================================ helpers
def assert_lab_serves(lab, model: str = "sam-small") -> None:
    """A normal request after a refused one: an example, a click, its clean mask."""
    session = scene_session(lab, 0, model)
    session, canvas, status = lab.on_click(session, MODE_POSITIVE, model, 128, 100)
    assert "Clean mask" in status and canvas is not None, status


def assert_lab_attacks(lab, model: str = "sam-small") -> None:
    session = scene_session(lab, 1, model)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, model, 60, 60)
    outputs = lab.on_attack(session, model, "none", "", "", "mask", "fgsm", 4, 1, 0, "original", None, NOOP)
    assert outputs[4][0][:2] == ["original model", "clean"] and "Timings" in outputs[-1]


def assert_client_serves(client) -> None:  # noqa: F811
    client.predict("sam-small", 0, api_name="/load_example")
    _, status = client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    assert "Clean mask" in status, status


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, with (almost) no pixel data: what a
    decompression bomb looks like to a decoder that trusts the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1))) + chunk(b"IEND", b""))


def scene_rgb(h: int = 120, w: int = 200) -> np.ndarray:
    """Grey with a red square whose top-left corner is at (140, 30): asymmetric, so a rotation shows."""
    image = np.full((h, w, 3), 60, np.uint8)
    image[:, :, 2] = np.linspace(40, 200, w, dtype=np.uint8)[None, :]
    image[30:50, 140:160] = (230, 40, 40)
    return image


class WritesAFile:
    """Unpickling this runs ``open(path, 'w').write(...)``: a pickle payload, as a hostile .pth carries."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('payload ran')",))


def write_payload_pth(path: Path, marker: Path) -> Path:
    torch.save({"model": {"weight": torch.zeros(2)}, "extra": WritesAFile(marker)}, path)
    return path


# ============================================================================ image files
def image_case(kind: str, folder: Path) -> tuple[Path, np.ndarray | None, str]:
    """(file, the RGB image a viewer shows or None when it must be refused, expected note or error text)."""
    suffix = {"eps": "eps", "animated-gif": "gif", "cmyk-jpeg": "jpg", "exif-rotated": "jpg"}.get(kind, "png")
    path = folder / f"{kind}.{suffix}"
    rgb = scene_rgb()
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)  # a PNG signature, then garbage
        return path, None, "not an image this app reads"
    if kind == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(buffer, "PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        return path, None, "truncated or corrupt"
    if kind == "empty":
        path.write_bytes(b"")
        return path, None, "not an image this app reads"
    if kind == "eps":  # Pillow would render it with Ghostscript: not an allowed format
        path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
        return path, None, "not an image this app reads"
    if kind == "1x1":
        Image.fromarray(rgb[:1, :1]).save(path, "PNG")
        return path, None, "at least 8 px"
    if kind == "bomb-10000x10000":
        path.write_bytes(png_header_only(10000, 10000))
        return path, None, "10000x10000 px .100 megapixels.; at most 40 megapixels"
    if kind == "grey":
        Image.fromarray(rgb[..., 2]).save(path, "PNG")
        return path, np.repeat(rgb[..., 2:3], 3, axis=2), ""
    if kind == "rgba":
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        rgba[:, :20, 3] = 0  # a transparent band: shown over white
        Image.fromarray(rgba).save(path, "PNG")
        expected = rgb.copy()
        expected[:, :20] = 255
        return path, expected, ""
    if kind == "grey16":
        grey = (rgb[..., 2].astype(np.uint16) * 257)
        Image.fromarray(grey).save(path, "PNG")  # mode I;16: convert("RGB") would clip it to white
        return path, np.repeat(rgb[..., 2:3], 3, axis=2), ""
    if kind == "rgb16":
        cv2.imwrite(str(path), (rgb.astype(np.uint16) * 257)[..., ::-1])
        return path, rgb, ""
    if kind == "cmyk-jpeg":
        Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=95)
        return path, rgb, ""
    if kind == "animated-gif":
        second = rgb.copy()
        second[30:50, 140:160] = (40, 230, 40)
        frames = [Image.fromarray(rgb).quantize(64), Image.fromarray(second).quantize(64)]
        frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        first = np.asarray(Image.open(path).convert("RGB"))
        return path, first, "2 frames; the first is used"
    if kind == "exif-rotated":
        stored = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways writes it
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
        return path, rgb, ""
    raise ValueError(kind)


REFUSED = ["corrupt", "truncated", "empty", "eps", "1x1", "bomb-10000x10000"]
ACCEPTED = ["grey", "rgba", "grey16", "rgb16", "cmyk-jpeg", "animated-gif", "exif-rotated"]


def close_to(image: np.ndarray, expected: np.ndarray, kind: str, eps: int = 0) -> bool:
    """Equal up to ``eps`` per pixel (an attack's budget); JPEGs (lossy) up to a mean difference of eps + 4."""
    if image.shape != expected.shape:
        return False
    difference = np.abs(image.astype(int) - expected.astype(int))
    if kind in ("cmyk-jpeg", "exif-rotated"):
        return float(difference.mean()) <= eps + 4
    return int(difference.max()) <= eps


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    """A real 10000 x 10000 JPEG (100 megapixels; 1.6 MB): decoded at 1/8 scale, then downscaled."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    picture = Image.new("RGB", (10000, 10000), (90, 90, 90))
    ImageDraw.Draw(picture).ellipse((6000, 2000, 8000, 4000), fill=(230, 40, 40))
    picture.save(path, quality=80)
    return path


@pytest.mark.parametrize("kind", REFUSED)
def test_refused_uploads_give_a_clear_message(lab, tmp_path, kind):
    path, _, message = image_case(kind, tmp_path)
    session = scene_session(lab, 0)
    with pytest.raises(gr.Error, match=message):
        lab.on_upload(session, str(path), "sam-small")
    assert session.image is not None and session.image_name  # the stored session keeps its image
    assert_lab_serves(lab)


@pytest.mark.parametrize("kind", ACCEPTED)
def test_odd_uploads_are_segmented_as_shown(lab, tmp_path, kind):
    """The image the user sees is the image segmented: converted right, EXIF-rotated, first frame."""
    path, expected, note = image_case(kind, tmp_path)
    session, canvas, editor, status = lab.on_upload(Session(), str(path), "sam-small")
    assert close_to(session.image, expected, kind), (kind, session.image.shape)
    s = display_scale(expected.shape[:2])
    assert canvas.shape == (expected.shape[0] * s, expected.shape[1] * s, 3) and note in status
    # a click where the viewer shows the red square lands on it (image frame = what is shown)
    session, _, status = lab.on_click(session, MODE_POSITIVE, "sam-small", 150, 40)
    assert "Clean mask" in status and np.abs(session.image[40, 150].astype(int) - expected[40, 150]).max() <= 25


def test_huge_jpeg_is_decoded_small_and_downscaled_with_a_notice(lab, huge_jpeg):
    session, canvas, _, status = lab.on_upload(Session(), str(huge_jpeg), "sam-small")
    assert session.image.shape == (1024, 1024, 3) and "Resized from 10000x10000 to 1024x1024" in status
    assert tuple(session.image[300, 700]) == pytest.approx((230, 40, 40), abs=10)  # the disc, at 7000/10000
    assert_lab_serves(lab)


def test_pixel_cap_applies_before_decoding(monkeypatch, tmp_path):
    """Above the cap nothing is decoded (no allocation); a JPEG counts at the scale it is decoded at."""
    monkeypatch.setattr(limits, "MAX_PIXELS", 2_000_000)
    big = np.zeros((2048, 3000, 3), np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(big).save(tmp_path / "big.jpg")
    with pytest.raises(limits.UserError, match="at most 2 megapixels"):
        limits.read_image(tmp_path / "big.png")
    image, note, size = limits.read_image(tmp_path / "big.jpg")  # decoded at 1/2: 1500 x 1024
    assert image.shape == (699, 1024, 3) and size == (3000, 2048) and "Resized from 3000x2048" in note


# ============================================================================ prompts
@pytest.mark.parametrize("x,y,message", [(-5, 10, "outside"), (10, 1e9, "outside"), (float("nan"), 3, "finite"),
                                         (None, 3, "finite"), ("ten", 3, "finite"), (float("inf"), 0, "finite")])
def test_clicks_outside_the_image_are_refused(lab, x, y, message):
    session = scene_session(lab, 0)
    with pytest.raises(gr.Error, match=message):
        lab.on_click(session, MODE_POSITIVE, "sam-small", x, y)
    assert session.prompts.is_empty
    assert_lab_serves(lab)


@pytest.mark.parametrize("index", [None, float("nan"), -100, -1, 1.5, 10**9, "../../etc/passwd", "x" * 10**6])
def test_bad_example_numbers_are_refused(lab, index):
    with pytest.raises(gr.Error, match="Pick one of the example images") as refused:
        lab.on_example_index(Session(), "sam-small", index)
    assert len(str(refused.value)) < 300  # what the user sent is quoted, cut to a readable length
    assert_lab_serves(lab)


@pytest.mark.parametrize("index", [(float("inf"), 3), (5, float("nan")), ("x", 1)])
def test_canvas_clicks_need_finite_coordinates_like_the_api(lab, index):
    session = scene_session(lab, 0)
    event = type("Select", (), {"index": list(index)})()
    with pytest.raises(gr.Error, match="finite"):
        lab.on_select(session, MODE_POSITIVE, "sam-small", event)
    assert session.prompts.is_empty


@pytest.mark.parametrize("repo", ["owner/name.", "owner/na--me", "owner/name..x", "a" * 10**6 + "/b"])
def test_hub_repo_ids_follow_the_hubs_rules_and_are_not_echoed_whole(repo):
    with pytest.raises(UserError, match="not a Hugging Face Hub repo id") as refused:
        AdapterChoice.parse("hub", repo, "")
    assert len(str(refused.value)) < 300


def test_zero_area_and_inverted_boxes(lab):
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_BOX, "sam-small", 50, 50)
    for x, y in [(50, 50), (50.5, 120), (120, 51)]:  # zero area, then too thin either way
        with pytest.raises(gr.Error, match="too thin"):
            lab.on_click(session, MODE_BOX, "sam-small", x, y)
    inverted, _, status = lab.on_click(session, MODE_BOX, "sam-small", 10, 20)  # corners in reverse order
    assert inverted.prompts.box == (10.0, 20.0, 50.0, 50.0) and "Clean mask" in status
    assert_lab_serves(lab)


def test_empty_and_full_painted_masks(lab):
    session = scene_session(lab, 0)
    empty = {"background": None, "layers": [np.zeros((512, 512, 4), np.uint8)], "composite": None}
    for handler in (lab.on_paint_prompt, lab.on_paint_ground_truth):
        with pytest.raises(gr.Error, match="Nothing painted"):
            handler(session, empty, "sam-small")
    full = {"background": None, "layers": [np.full((512, 512, 4), 255, np.uint8)], "composite": None}
    session, _, status = lab.on_paint_ground_truth(session, full, "sam-small")
    assert session.prompts.ground_truth.all()
    session, _, status = lab.on_paint_prompt(session, full, "sam-small")
    assert "Clean mask" in status and session.prompts.mask.all()
    outputs = lab.on_attack(session, "sam-small", "shipped", "", "", "mask", "fgsm", 4, 1, 0, "original", None, NOOP)
    assert all(0 <= float(row[4]) <= 1 for row in outputs[4])  # scored against the full ground truth


# ============================================================================ attack settings and limits
@pytest.mark.parametrize("eps,steps,seed,message", [
    (-1, 2, 0, "ε must be more than 0"), (0, 2, 0, "ε must be more than 0"),
    (float("nan"), 2, 0, "ε must be a finite"),
    (1e9, 2, 0, "at most 32/255"), ("8; rm -rf", 2, 0, "ε must be a number"),
    (8, -5, 0, "Steps must be a whole number from 1 to 100"), (8, 0, 0, "Steps"), (8, float("nan"), 0, "finite"),
    (8, 2.5, 0, "whole number"), (8, 1e12, 0, "SAMDEMO_MAX_STEPS"), (8, limits.MAX_STEPS + 1, 0, "Steps"),
    (8, 2, -1, "seed"), (8, 2, 2**64, "seed"), (8, 2, float("inf"), "seed")])
def test_bad_attack_settings_are_refused(lab, eps, steps, seed, message):
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    folder = Path(tempfile.gettempdir()) / "samdemo-app"
    before = set(folder.glob("*.png")) if folder.exists() else set()
    with pytest.raises(gr.Error, match=message):
        lab.on_attack(session, "sam-small", "none", "", "", "mask", "pgd", eps, steps, seed, "original", None, NOOP)
    assert (set(folder.glob("*.png")) if folder.exists() else set()) == before  # no output written
    assert_lab_attacks(lab)


def test_unknown_model_names(lab):
    info, _, _ = lab.on_model("sam-vit-zzz", "shipped", "", "")
    assert info.startswith("⚠️ Unknown model 'sam-vit-zzz'")
    session = scene_session(lab, 0)
    session, _, status = lab.on_click(session, MODE_POSITIVE, "../../etc/passwd", 10, 10)
    assert "⚠️ Unknown model" in status  # the click is kept, the status says why there is no mask
    with pytest.raises(gr.Error, match="Unknown model"):
        lab.on_attack(session, "nope", "none", "", "", "mask", "pgd", 8, 1, 0, "original", None, NOOP)
    assert_lab_attacks(lab)


def test_time_limit_stops_a_long_attack(lab, monkeypatch):
    monkeypatch.setattr(limits, "ATTACK_TIME_LIMIT_S", 0.0)
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    start = time.perf_counter()
    with pytest.raises(gr.Error, match=r"stopped after .* at step 1 of 50.*fewer steps"):
        lab.on_attack(session, "sam-small", "none", "", "", "mask", "pgd", 8, 50, 0, "original", None, NOOP)
    monkeypatch.setattr(limits, "TRANSFER_TIME_LIMIT_S", 0.0)
    with pytest.raises(gr.Error, match="transfer matrix was stopped"):
        lab.on_transfer(session, "sam-small", "none", "", "", "mask", "pgd", 8, 50, 0, "original", None, NOOP)
    assert time.perf_counter() - start < 30
    monkeypatch.undo()
    assert_lab_attacks(lab)


def test_a_session_holds_bounded_memory(monkeypatch):
    """Painted masks kept for undo: at most UNDO_STEPS states and SESSION_MB of masks, oldest dropped."""
    monkeypatch.setattr(limits, "SESSION_MB", 3.0)
    monkeypatch.setattr(limits, "UNDO_STEPS", 5)
    session = Session(image=np.zeros((1024, 1024, 3), np.uint8))
    for i in range(40):  # 40 paints of a fresh 1 MiB mask each
        mask = np.zeros((1024, 1024), bool)
        mask[i:i + 100, :100] = True
        session.push(PromptState(mask=mask))
        assert session.painted_bytes() <= 3 * 2**20 and len(session.history) <= 5
    assert session.prompts.mask[39, 0] and len(session.history) >= 1  # the latest paint is kept, undo still works
    shared = session.prompts.mask
    for _ in range(4):  # clicks after a paint keep the same mask object: it counts once
        session.push(replace(session.prompts, points=session.prompts.points + ((5.0, 5.0, 1),)))
    assert session.painted_bytes() <= 3 * 2**20 and session.prompts.mask is shared


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("SAMDEMO_TEST_LIMIT", "2.5e6")
    assert limits._env("SAMDEMO_TEST_LIMIT", 1, int) == 2_500_000
    monkeypatch.setenv("SAMDEMO_TEST_LIMIT", "")
    assert limits._env("SAMDEMO_TEST_LIMIT", 7.0) == 7.0
    for bad in ("lots", "-3", "nan", "0"):
        monkeypatch.setenv("SAMDEMO_TEST_LIMIT", bad)
        with pytest.raises(ValueError, match="SAMDEMO_TEST_LIMIT"):
            limits._env("SAMDEMO_TEST_LIMIT", 1.0)
    assert app.LAUNCH_LIMITS["max_file_size"] == limits.max_upload_bytes()
    assert app.LAUNCH_LIMITS["state_session_capacity"] == limits.MAX_SESSIONS  # Gradio drops the oldest beyond
    if platform.libc_ver()[0] == "glibc":  # the app caps malloc arenas (benchmarks/soak.py says why)
        monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
        assert limits.limit_malloc_arenas() is True
        monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
        assert limits.limit_malloc_arenas() is False  # the environment's choice stands
    monkeypatch.setattr(limits, "EMBEDDING_CACHE_MB", 3.5)  # what SAMDEMO_EMBEDDING_CACHE_MB sets at import
    assert ModelManager(factory=lambda name: None).cache.max_bytes == int(3.5 * 2**20)


# ============================================================================ adapters and checkpoints
def _broken_adapter(root: Path, good: Path, kind: str) -> str:
    """Make ``root/sam-small-adapter`` a broken or foreign adapter; returns the expected message."""
    folder = root / "sam-small-adapter"
    if kind == "missing":
        return "No adapter is shipped for sam-small"
    shutil.copytree(good / "sam-small-adapter", folder)
    weights, config = folder / "adapter.safetensors", folder / "adapter_config.json"
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
        return "truncated or corrupt"
    if kind == "corrupt-config":
        config.write_text(config.read_text()[:40])
        return "not valid JSON"
    if kind == "pickle-as-safetensors":
        marker = root / "adapter-payload-ran"
        buffer = io.BytesIO()
        torch.save(WritesAFile(marker), buffer)
        weights.write_bytes(buffer.getvalue())
        return "cannot be read as safetensors"
    if kind == "other-family":
        shutil.rmtree(folder)
        shutil.copytree(good / "sam2-small-adapter", folder)
        return "'sam2' model"
    if kind == "other-weights":  # same architecture, other weights: the fingerprint refuses it
        shutil.rmtree(folder)
        torch.manual_seed(1)
        model, family = build_architecture(CONFIG_DIR / "sam_tiny_test.yaml")
        other = SegmentEngine(model.eval(), family, name="sam-small")
        save_adapter(apply_adapter(other), folder)
        return "cannot be used with sam-small"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing", "truncated", "corrupt-config", "pickle-as-safetensors", "other-family",
                                  "other-weights"])
def test_bad_adapters_are_refused_and_the_model_still_works(adapter_root, tmp_path, kind):  # noqa: F811
    message = _broken_adapter(tmp_path, adapter_root, kind)
    cache = EmbeddingCache()
    lab = Lab(ModelManager(lambda name: tiny_engine(name, cache), cache=cache, adapter_root=tmp_path))  # noqa: F811
    info, adapter_md, figure = lab.on_model("sam-small", "shipped", "", "")
    assert "M parameters" in info and adapter_md.startswith("⚠️") and message in adapter_md and figure is None
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    with pytest.raises(gr.Error, match="[Aa]dapter"):
        lab.on_attack(session, "sam-small", "shipped", "", "", "mask", "fgsm", 4, 1, 0, "original", None, NOOP)
    assert not (tmp_path / "adapter-payload-ran").exists()
    assert_lab_attacks(lab)  # the original model, without the adapter


def test_payload_checkpoint_is_refused_by_the_app(lab, tmp_path, monkeypatch):
    """A .pth whose unpickling would write a file, where the app looks for SAM ViT-B: refused, not run."""
    control = write_payload_pth(tmp_path / "control.pth", tmp_path / "control-ran")
    torch.load(control, weights_only=False)  # the payload is live: plain unpickling runs it
    assert (tmp_path / "control-ran").read_text() == "payload ran"

    marker = tmp_path / "payload-ran"
    monkeypatch.setattr(build, "CHECKPOINT_DIR", tmp_path)
    # SAM 2 files have no published digest: torch.load(weights_only=True) is the guard
    # SAM v1 files must match Meta's MD5 first: the payload is refused before it is even unpickled
    for model, refusal in [("sam2.1-hiera-tiny", "not a plain tensor checkpoint (refused by torch.load(weights_only=True)"),
                           ("sam-vit-b", "is not the published checkpoint")]:
        write_payload_pth(tmp_path / build.MODEL_REGISTRY[model].local_file, marker)
        manager = ModelManager(default_engine_factory(EmbeddingCache()))
        info, _, _ = Lab(manager).on_model(model, "none", "", "")
        assert refusal in info, info
        assert not marker.exists()
    assert_lab_serves(lab)


# ============================================================================ faults: Hub, memory
@pytest.fixture
def silent_hub():
    """A 'Hub' that accepts connections and never answers (the kernel completes the handshake)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def online_hub(monkeypatch, tmp_path):
    """huggingface_hub online (the suite runs with HF_HUB_OFFLINE=1), with an empty cache of its own."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(limits, "HUB_TIMEOUT_S", 1.0)

    def point_at(endpoint: str) -> None:  # what HF_ENDPOINT sets at import
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    return point_at


def hub_lab(adapter_root: Path) -> Lab:  # noqa: F811
    """Embedded names -> the tiny engines; full-size names -> the real loader (download from the Hub)."""
    cache = EmbeddingCache()
    real = default_engine_factory(cache)
    factory = lambda name: tiny_engine(name, cache) if name in ("sam-small", "sam2-small") else real(name)  # noqa: E731
    return Lab(ModelManager(factory, cache=cache, adapter_root=adapter_root))


@pytest.mark.parametrize("hub", ["closed port", "silent"])
def test_unreachable_hub_gives_a_clear_message_fast(online_hub, silent_hub, adapter_root, hub):  # noqa: F811
    online_hub(silent_hub if hub == "silent" else f"http://127.0.0.1:{free_port()}")
    lab = hub_lab(adapter_root)  # noqa: F811
    start = time.perf_counter()
    info, _, _ = lab.on_model("sam-vit-b", "none", "", "")
    assert info.startswith("⚠️ Model 'sam-vit-b' needs") and "unreachable (no answer within 1 s" in info
    adapter_md, _ = lab.on_adapter("sam-small", "hub", "tester/robust-sam", "main")
    assert "cannot be downloaded now" in adapter_md and "unreachable (no answer within 1 s" in adapter_md
    assert "shipped adapter and the embedded models still work" in adapter_md
    assert time.perf_counter() - start < 10  # huggingface_hub alone: 25 s (refused) to minutes (silent)
    info, adapter_md, _ = lab.on_model("sam-small", "shipped", "", "")
    assert "M parameters" in info and "trainable values" in adapter_md
    assert_lab_attacks(lab)


def test_hub_adapter_loads_then_comes_from_the_cache_when_the_hub_is_down(online_hub, adapter_root,  # noqa: F811
                                                                         monkeypatch):
    from tests.hub_server import FakeHub, Repo

    folder = adapter_root / "sam-small-adapter"
    with FakeHub() as hub:
        repo = Repo("tester/robust-sam")
        files = {name: (folder / name).read_bytes() for name in ("adapter_config.json", "adapter.safetensors")}
        repo.branches["main"] = hub.new_commit(repo, None, files, "adapter")
        hub.repos[repo.repo_id] = repo
        online_hub(hub.endpoint)
        adapter_md, figure = hub_lab(adapter_root).on_adapter("sam-small", "hub", "tester/robust-sam", "")
        assert adapter_md.startswith("**Adapter** (Hub: tester/robust-sam@main)") and figure is not None
        # a repo whose "adapter" is larger than an adapter can be is refused before anything is downloaded
        hub.repos["tester/huge"] = Repo("tester/huge", branches=dict(repo.branches), commits=dict(repo.commits))
        monkeypatch.setattr(limits, "MAX_ADAPTER_MB", 0.001)
        adapter_md, _ = hub_lab(adapter_root).on_adapter("sam-small", "hub", "tester/huge", "")
        assert "more than the 0.001 MB allowed here (SAMDEMO_MAX_ADAPTER_MB)" in adapter_md
        assert not [path for method, path in hub.requests if method == "GET" and path.startswith("/tester/huge/")]
    online_hub(f"http://127.0.0.1:{free_port()}")  # the Hub is gone; the cached copy still loads
    lab = hub_lab(adapter_root)  # noqa: F811
    adapter_md, _ = lab.on_adapter("sam-small", "hub", "tester/robust-sam", "")
    assert adapter_md.startswith("**Adapter** (Hub: tester/robust-sam@main)"), adapter_md


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_gpu_out_of_memory_says_what_to_change_and_the_next_request_works(lab, monkeypatch):
    session = scene_session(lab, 0)
    session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
    monkeypatch.setattr(pipeline, "craft", out_of_memory)
    with pytest.raises(gr.Error, match="Out of GPU memory: try fewer steps.*smaller model"):
        lab.on_attack(session, "sam-small", "shipped", "", "", "mask", "pgd", 8, 10, 0, "original", None, NOOP)
    monkeypatch.undo()
    engine = lab.manager.engine("sam-small")
    monkeypatch.setattr(engine, "predict", out_of_memory)
    with pytest.raises(gr.Error, match="Out of GPU memory"):
        lab.on_click(session, MODE_POSITIVE, "sam-small", 20, 20)
    monkeypatch.undo()
    assert_lab_attacks(lab)


# ============================================================================ the CLI
def cli(*argv) -> int:
    from samdemo.attacks.cli import main  # what `python -m samdemo attack` runs, with the same error handling

    return main(list(map(str, argv)))


@pytest.mark.parametrize("kind", REFUSED)
def test_cli_refuses_bad_images(tmp_path, capsys, kind):
    path, _, message = image_case(kind, tmp_path)
    out = tmp_path / "out" / "adv.png"
    assert cli("--image", path, "--out", out, "--steps", 1) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not out.parent.exists()  # nothing written


@pytest.mark.parametrize("kind", ["grey16", "animated-gif", "exif-rotated", "cmyk-jpeg"])
def test_cli_attacks_odd_images_as_shown(tmp_path, capsys, kind):
    path, expected, note = image_case(kind, tmp_path)
    out = tmp_path / "adv.png"
    # (150, 40) is the red square as shown; in the stored (sideways) EXIF file x = 150 would be outside
    assert cli("--image", path, "--out", out, "--steps", 1, "--eps", 4, "--attack", "mask", "--point", 150, 40) == 0
    assert close_to(np.asarray(Image.open(out)), expected, kind, eps=4)
    assert note in capsys.readouterr().err


def test_cli_downscales_a_huge_jpeg_and_scales_the_prompt(tmp_path, capsys, huge_jpeg):
    out = tmp_path / "adv.png"
    assert cli("--image", huge_jpeg, "--out", out, "--steps", 1, "--attack", "random", "--point", 7000, 3000) == 0
    assert np.asarray(Image.open(out)).shape == (1024, 1024, 3)
    assert "Resized from 10000x10000 to 1024x1024" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--point", 250, 10], "outside"), (["--point", -1, 10], "outside"), (["--box", 10, 10, 10, 60], "zero area"),
    (["--box", 80, 60, 10, 10], "Inverted box"), (["--eps", -1], "between 0 and 32"), (["--eps", "nan"], "between 0"),
    (["--eps", 1e9], "between 0 and 32"), (["--steps", -5], "steps must be an integer"),
    (["--steps", 10**9], "between 1 and 1000"), (["--model", "sam-vit-zzz"], "Unknown model"),
    (["--step-size", "nan"], "step_size")])
def test_cli_refuses_bad_arguments(tmp_path, capsys, args, message):
    Image.fromarray(scene_rgb()).save(tmp_path / "in.png")
    out = tmp_path / "adv.png"
    assert cli("--image", tmp_path / "in.png", "--out", out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_cli_refuses_non_numbers(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse: "invalid int value"
        cli("--image", tmp_path / "in.png", "--out", tmp_path / "adv.png", "--steps", "nan")
    assert exit_info.value.code == 2 and "invalid int value" in capsys.readouterr().err


def test_cli_payload_weights_do_not_run(tmp_path):
    """The real entry point (`python -m samdemo attack`), in its own process."""
    marker = tmp_path / "payload-ran"
    weights = write_payload_pth(tmp_path / "evil.pth", marker)
    Image.fromarray(scene_rgb()).save(tmp_path / "in.png")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "samdemo", "attack", "--image", str(tmp_path / "in.png"),
                             "--out", str(tmp_path / "adv.png"), "--weights", str(weights)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "not a plain tensor checkpoint" in result.stderr and "weights_only=True" in result.stderr
    assert not marker.exists() and not (tmp_path / "adv.png").exists()


def test_cli_out_of_memory_says_what_to_change(tmp_path, capsys, monkeypatch):
    from samdemo.attacks.base import Attack

    monkeypatch.setattr(Attack, "forward", out_of_memory)
    Image.fromarray(scene_rgb()).save(tmp_path / "in.png")
    assert cli("--image", tmp_path / "in.png", "--out", tmp_path / "adv.png", "--steps", 1) == 2
    assert "error: Out of GPU memory: try fewer steps" in capsys.readouterr().err


# ============================================================================ through the served app (gradio_client)
@pytest.mark.parametrize("kind", ["corrupt", "bomb-10000x10000", "1x1"])
def test_client_refused_uploads(client, tmp_path, kind):  # noqa: F811
    path, _, message = image_case(kind, tmp_path)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), "sam-small", api_name="/set_image")
    assert_client_serves(client)


@pytest.mark.parametrize("kind", ["grey16", "animated-gif", "exif-rotated"])
def test_client_odd_uploads_are_shown_as_segmented(client, tmp_path, kind):  # noqa: F811
    path, expected, note = image_case(kind, tmp_path)
    canvas, _, status = client.predict(handle_file(str(path)), "sam-small", api_name="/set_image")
    shown = cv2.cvtColor(cv2.imread(canvas, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    s = display_scale(expected.shape[:2])
    assert close_to(shown[::s, ::s], expected, kind) and note in status
    _, status = client.predict(MODE_POSITIVE, "sam-small", 150, 40, api_name="/click")
    assert "Clean mask" in status


def test_client_limits_and_bad_values(client, tmp_path):  # noqa: F811
    too_big = tmp_path / "big.png"
    too_big.write_bytes(os.urandom(limits.max_upload_bytes() + 1024))
    with pytest.raises(Exception, match="(?i)exceeds the maximum|too large|413"):
        client.predict(handle_file(str(too_big)), "sam-small", api_name="/set_image")
    client.predict("sam-small", 0, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    for eps, steps in [(8, 10**9), (-1, 2), (8, 0)]:  # the sliders' own bounds
        with pytest.raises(AppError, match="(?i)value .* (greater|less) than"):
            client.predict("sam-small", "none", "", "", "mask", "pgd", eps, steps, 0, "original", api_name="/attack")
    with pytest.raises(AppError, match="finite"):
        client.predict(MODE_POSITIVE, "sam-small", None, 5, api_name="/click")
    assert_client_serves(client)


def test_client_out_of_memory_and_time_limit(client, monkeypatch):  # noqa: F811
    client.predict("sam-small", 0, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    monkeypatch.setattr(pipeline, "craft", out_of_memory)  # the server runs in this process
    with pytest.raises(AppError, match="Out of GPU memory: try fewer steps"):
        client.predict("sam-small", "shipped", "", "", "mask", "pgd", 8, 2, 0, "original", api_name="/attack")
    monkeypatch.undo()
    monkeypatch.setattr(limits, "ATTACK_TIME_LIMIT_S", 0.0)
    with pytest.raises(AppError, match="stopped after"):
        client.predict("sam-small", "shipped", "", "", "mask", "pgd", 8, 20, 0, "original", api_name="/attack")
    monkeypatch.undo()
    outputs = client.predict("sam-small", "shipped", "", "", "mask", "pgd", 8, 2, 0, "original", api_name="/attack")
    assert "Timings" in outputs[-1]


class SlowAttack:
    """Stands in for the app's ``run_attack`` (the server runs in this process): waits up to ``seconds``
    for its cancel event and records, per attack (its seed), when it started and how it ended:
    ``events`` holds ``(what, seed, time.monotonic())`` with what = start, stopped (it saw the cancel
    event) or ran on (nothing stopped it)."""

    def __init__(self, seconds: float = 30):
        self.seconds = seconds
        self.events: list[tuple[str, int, float]] = []

    def __call__(self, manager, job, image, prompts, progress=None, cancel=None):
        from samdemo.errors import AttackCancelled

        seed = job.request.seed
        self.events.append(("start", seed, time.monotonic()))
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if cancel.is_set():
                self.events.append(("stopped", seed, time.monotonic()))
                raise AttackCancelled()
            time.sleep(0.01)
        self.events.append(("ran on", seed, time.monotonic()))
        raise AttackCancelled()

    def wait_for(self, count: int, seconds: float = 20) -> list[tuple[str, int]]:
        deadline = time.monotonic() + seconds
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [(what, seed) for what, seed, _ in self.events]

    def when(self, what: str, seed: int) -> float:
        return next(t for w, s, t in self.events if (w, s) == (what, seed))


ATTACK_SETTINGS = ("sam-small", "none", "", "", "mask", "pgd", 8, 2)  # then the seed (names the attack), target


def test_gradio_cancel_stops_the_attack_before_the_lane_frees(client, monkeypatch):  # noqa: F811
    """gradio_client's job.cancel() (Gradio's own cancel, not the app's button): the attack thread sees
    its cancel event and stops, and the next attack starts only after it stopped (one at a time)."""
    attack = SlowAttack()
    monkeypatch.setattr(handlers, "run_attack", attack)  # the server runs in this process
    client.predict("sam-small", 0, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    first = client.submit(*ATTACK_SETTINGS, 0, "original", api_name="/attack")
    attack.wait_for(1)
    first.cancel()
    second = client.submit(*ATTACK_SETTINGS, 1, "original", api_name="/attack")
    assert attack.wait_for(3) == [("start", 0), ("stopped", 0), ("start", 1)]
    assert attack.when("start", 1) >= attack.when("stopped", 0)  # the second attack waited for the first to stop
    second.cancel()
    assert attack.wait_for(4)[3] == ("stopped", 1)
    monkeypatch.undo()
    assert_client_serves(client)


def client_that_goes_away(url: str, how: str, session_hash: str, attack: SlowAttack):  # noqa: F811
    """Start an attack (seed 0) in ``session_hash``'s session the way ``how`` says, wait until it runs on
    the server, then go away without a word: close the event stream (``queue``: the browser's and
    gradio_client's protocol; ``call``: the REST API's ``/call/attack``), or kill the client's process
    (``killed``: a gradio_client in a subprocess, SIGKILL). Returns when the client is gone."""
    import httpx

    data = [*ATTACK_SETTINGS, 0, "original"]
    if how == "killed":
        script = (f"from gradio_client import Client; c = Client({url!r}, verbose=False); "
                  f"c.predict('sam-small', 0, api_name='/load_example'); "
                  f"c.predict({MODE_POSITIVE!r}, 'sam-small', 128, 100, api_name='/click'); "
                  f"c.submit(*{data!r}, api_name='/attack'); import time; time.sleep(120)")
        process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
        try:
            assert attack.wait_for(1, 60) == [("start", 0)], "the killed client's attack never started"
        finally:
            process.kill()
            process.wait(10)
        return
    with httpx.Client(base_url=url, timeout=30) as http:
        if how == "queue":
            config = http.get("config").json()
            fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "attack")
            body = {"data": [None, *data], "fn_index": fn_index, "session_hash": session_hash, "event_data": None,
                    "trigger_id": None}
            http.post("gradio_api/queue/join", json=body).raise_for_status()
            stream = http.stream("GET", "gradio_api/queue/data", params={"session_hash": session_hash})
        else:
            posted = http.post("gradio_api/call/attack", json={"data": data, "session_hash": session_hash})
            stream = http.stream("GET", f"gradio_api/call/attack/{posted.raise_for_status().json()['event_id']}")
        with stream as events:
            assert events.status_code == 200
            assert attack.wait_for(1) == [("start", 0)], "the attack never started"
        # leaving the block closes the connection: the server sees its client disconnect


@pytest.mark.parametrize("how", ["queue", "call", "killed"])
def test_a_client_that_goes_away_stops_its_attack_before_the_lane_frees(url, how, monkeypatch):  # noqa: F811
    """A client that disconnects mid-attack (closed tab or stream, dropped connection, killed client):
    its attack thread stops within a moment, and another user's attack, already waiting for the
    one-at-a-time lane, starts only after it stopped. Gradio itself only marks the request dead and
    lets the function run on; without the app's check the attack would hold the lane to its end."""
    from gradio_client import Client

    attack = SlowAttack(seconds=15)
    monkeypatch.setattr(handlers, "run_attack", attack)  # the server runs in this process
    leaving, waiting = Client(url, verbose=False), Client(url, verbose=False)
    for who in (leaving, waiting):
        who.predict("sam-small", 0, api_name="/load_example")
        who.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    submitted = {}

    def submit_when_running() -> None:  # the waiting user queues while the first attack runs
        attack.wait_for(1, 60)
        submitted["job"] = waiting.submit(*ATTACK_SETTINGS, 1, "original", api_name="/attack")

    submitter = threading.Thread(target=submit_when_running)
    submitter.start()
    client_that_goes_away(url, how, leaving.session_hash, attack)
    gone = time.monotonic()
    submitter.join(60)
    assert attack.wait_for(3) == [("start", 0), ("stopped", 0), ("start", 1)], attack.events
    assert attack.when("stopped", 0) - gone < 5  # stopped soon after its client went away, not at its end
    assert attack.when("start", 1) >= attack.when("stopped", 0)  # the lane freed only once it had stopped
    submitted["job"].cancel()
    assert attack.wait_for(4)[3] == ("stopped", 1)
    monkeypatch.undo()
    assert_client_serves(waiting)


def test_the_time_limit_stops_the_attack_before_the_lane_frees(url, monkeypatch):  # noqa: F811
    """An attack that reaches the time limit (``SAMDEMO_ATTACK_TIME_LIMIT``, read at start: set here in
    the server's process) stops its thread at that step, its client is told why, and an attack already
    waiting for the one-at-a-time lane starts only after the stopped thread has returned."""
    from gradio_client import Client

    real_attack, events = handlers.run_attack, []

    def recorded_attack(manager, job, image, prompts, progress=None, cancel=None):
        """The app's real attack with 0.1 s more per step, recording its steps and how it ended."""
        seed = job.request.seed

        def slow_step(step, total):
            time.sleep(0.1)
            events.append(("step", seed, time.monotonic()))

        events.append(("start", seed, time.monotonic()))
        try:
            return real_attack(manager, job, image, prompts, slow_step, cancel)
        finally:
            events.append(("returned", seed, time.monotonic()))

    monkeypatch.setattr(handlers, "run_attack", recorded_attack)
    monkeypatch.setattr(limits, "ATTACK_TIME_LIMIT_S", 1.0)
    long_one, waiting = Client(url, verbose=False), Client(url, verbose=False)
    for who in (long_one, waiting):
        who.predict("sam-small", 0, api_name="/load_example")
        who.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    first = long_one.submit("sam-small", "none", "", "", "mask", "pgd", 8, 100, 0, "original", api_name="/attack")
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    second = waiting.submit("sam-small", "none", "", "", "mask", "pgd", 8, 2, 1, "original", api_name="/attack")
    with pytest.raises(AppError, match=r"stopped after 1\.\d s, at step \d+ of 100"):
        first.result(timeout=60)
    assert "Timings" in second.result(timeout=60)[-1]
    first_steps = [t for what, seed, t in events if (what, seed) == ("step", 0)]
    stopped = next(t for what, seed, t in events if (what, seed) == ("returned", 0))
    second_start = next(t for what, seed, t in events if (what, seed) == ("start", 1))
    assert 5 <= len(first_steps) < 100 and max(first_steps) <= stopped  # stopped at the limit, not at its end
    assert second_start >= stopped  # the lane freed only once the first attack's thread had returned
    monkeypatch.undo()
    assert_client_serves(waiting)


def test_values_of_the_wrong_type_get_the_apps_message(client, url):  # noqa: F811
    client.predict("sam-small", 0, api_name="/load_example")
    client.predict(MODE_POSITIVE, "sam-small", 128, 100, api_name="/click")
    attack = ("sam-small", "none", "", "", "mask", "pgd")
    for eps, steps, seed, message in [("abc", 1, 0, "ε .* must be a number"), (8, "many", 0, "Steps must be a number"),
                                      (8, 1, "x" * 10**5, "Seed must be a number")]:
        with pytest.raises(AppError, match=message) as refused:
            client.predict(*attack, eps, steps, seed, "original", api_name="/attack")
        assert len(str(refused.value)) < 400
    outputs = client.predict(*attack, 8, 1, "7", "original", api_name="/attack")  # a number as text: read as one
    assert "Timings" in outputs[-1]
    with pytest.raises(AppError, match="example index must be a number"):
        client.predict("sam-small", "two", api_name="/load_example")
    # NaN cannot be sent by gradio_client (JSON); the raw HTTP API can
    body = b'{"data": ["sam-small", NaN]}'
    request = urllib.request.Request(f"{url}gradio_api/call/load_example", data=body,
                                     headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/load_example/{event_id}", timeout=60).read().decode()
    assert "event: error" in stream and "finite number" in stream, stream[:500]
    assert_client_serves(client)


def test_messages_never_show_server_paths(url):  # noqa: F811
    """A file or folder inside Gradio's upload directory passes Gradio's own check: the app's message says
    what is wrong without the server's path (nor whether something exists there); nor do model messages."""
    import tempfile

    upload_dir = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    upload_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=upload_dir))
    for path in (folder / "missing.png", folder):
        body = json.dumps({"data": [{"path": str(path), "meta": {"_type": "gradio.FileData"}}, "sam-small"]}).encode()
        request = urllib.request.Request(f"{url}gradio_api/call/set_image", data=body,
                                         headers={"Content-Type": "application/json"})
        event_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["event_id"]
        stream = urllib.request.urlopen(f"{url}gradio_api/call/set_image/{event_id}", timeout=60).read().decode()
        assert "event: error" in stream and str(upload_dir) not in stream and str(folder) not in stream, stream[:500]
    error = build.ModelUnavailableError(f"Model 'x': put the file at {build.CHECKPOINT_DIR / 'x.pt'} or "
                                        f"{Path.home() / '.cache/huggingface/hub'}; see https://huggingface.co/a/b")
    message = error_message(error)
    assert str(build.CHECKPOINT_DIR) not in message and str(Path.home()) not in message
    assert "x.pt" in message and "https://huggingface.co/a/b" in message


def test_raw_api_cannot_read_server_files(url, tmp_path):  # noqa: F811
    """The HTTP API with a file path the client did not upload: Gradio refuses it before the handler."""
    secret = tmp_path / "secret.png"
    Image.fromarray(scene_rgb()).save(secret)
    for path in (str(secret), "/etc/passwd"):
        body = json.dumps({"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "sam-small"]}).encode()
        request = urllib.request.Request(f"{url}gradio_api/call/set_image", data=body,
                                         headers={"Content-Type": "application/json"})
        event_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["event_id"]
        stream = urllib.request.urlopen(f"{url}gradio_api/call/set_image/{event_id}", timeout=60).read().decode()
        assert "event: error" in stream and "root:" not in stream, stream[:500]


# ============================================================================ soak (short): 8 sessions x 2 rounds
@pytest.fixture(scope="module")
def real_url():
    if not (build.CHECKPOINT_DIR / "sam-small" / "model.safetensors").exists():
        pytest.skip("the embedded sam-small weights are not in checkpoints/")
    demo = app.build_demo(Lab())
    _, local_url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                  quiet=True, **app.LAUNCH_LIMITS)
    yield local_url
    demo.close()


def test_soak_sessions_never_see_each_others_results(real_url, tmp_path, record_property):
    """8 concurrent sessions, 2 rounds, real sam-small: every canvas, mask, painted mask (a prompt and a
    ground truth in the second round) and adversarial PNG belongs to its own session (see
    benchmarks/soak.py, which runs the long version against `python app.py`)."""
    from benchmarks.soak import rss_mb, run_round

    clients, rss, seconds = {}, [rss_mb()], []
    for round_ in range(2):
        paints = 2 * round_  # the second round also paints a mask prompt and a ground truth per session
        result = run_round(real_url, round_, 8, tmp_path, clients, paints=paints)
        assert not result["failures"], result["failures"]
        assert len(result["latency_s"]["attack"]) == 8 and len(result["latency_s"]["paint"]) == 8 * paints
        rss.append(rss_mb())
        seconds.append(round(result["seconds"], 2))
    record_property("soak_rss_mb_per_round", [round(v) for v in rss])
    record_property("soak_seconds_per_round", seconds)
    print(f"soak: RSS per round {[round(v) for v in rss]} MB, seconds per round {seconds}")
    assert rss[2] - rss[1] < 300, rss  # the second round does not keep what the first allocated


def test_space_settings_come_from_the_environment(monkeypatch, capsys):
    """A Space picks its model and robust adapter with SAMDEMO_MODEL / SAMDEMO_ADAPTER_REPO, read at start."""
    monkeypatch.setenv("SAMDEMO_MODEL", "sam2-small")
    monkeypatch.setenv("SAMDEMO_ADAPTER_REPO", "owner/robust-sam@0123abc")
    args = app.parse_args([])
    assert args.model == "sam2-small"
    assert args.adapter == AdapterChoice(ADAPTER_HUB, "owner/robust-sam", "0123abc")
    monkeypatch.setenv("SAMDEMO_ADAPTER_REPO", "owner/name.")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "not a Hugging Face Hub repo id" in capsys.readouterr().err
    monkeypatch.delenv("SAMDEMO_ADAPTER_REPO")
    assert app.parse_args(["--model", "sam-small"]).adapter == AdapterChoice()  # the shipped adapter
    demo = app.build_demo(Lab(), "sam2-small", AdapterChoice(ADAPTER_HUB, "owner/robust-sam", "v1"))
    values = {getattr(block, "label", None): getattr(block, "value", None) for block in demo.blocks.values()}
    assert values["Hub repo id"] == "owner/robust-sam" and values["Revision"] == "v1"
    assert values["Attack"] == "cross-prompt"  # the mission's attack is the default
