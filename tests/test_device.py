"""--device: one shared option (``distributed.add_device_argument``) on every command that runs a model and on
the app (``--device`` / ``SAMDEMO_DEVICE``); an unknown or unavailable device is one ``error:`` line and exit
code 2 before anything is loaded, and ``--device cpu`` reaches the engine."""

from __future__ import annotations

import sys

import pytest
import torch

import samdemo.factory as factory
from samdemo import distributed
from samdemo.__main__ import main
from samdemo.build import CONFIG_DIR, REPO_ROOT
from tests import tiny_evaluate

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
IMAGE = str(REPO_ROOT / "assets" / "scene-0.png")

# the least each command needs to parse; the device is checked before it runs
COMMANDS = {
    "attack": ["attack", "--image", IMAGE, "--out", "adv.png"],
    "evaluate": ["evaluate", "--out", "eval"],
    "train-adapter": ["train-adapter"],
    "train-base": ["train-base", "--family", "sam", "--run-dir", "run"],
    "curve": ["curve", "--image", IMAGE, "--out", "curve.png"],
    "control": ["control", "--adapter", "adapter", "--out", "control"],
}


def test_check_device():
    assert distributed.check_device("cpu") == "cpu"
    assert distributed.check_device("") == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(ValueError, match=r"is not a device; use cpu, cuda or cuda:N\.$"):
            distributed.check_device(bad)
    with pytest.raises(ValueError, match=r"^--device meta: samdemo runs on cpu or cuda\[:N\]\.$"):
        distributed.check_device("meta")
    with pytest.raises(ValueError, match="^--device cuda:99: (CUDA is not available|this machine has)"):
        distributed.check_device("cuda:99")


@NO_CUDA
@pytest.mark.parametrize("command", COMMANDS)
def test_unavailable_cuda_is_one_error_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(factory, "load_engine", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main([*COMMANDS[command], "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "error: --device cuda: CUDA is not available on this machine (this torch is a CPU-only build); use --device cpu."
        if torch.version.cuda is None else
        "error: --device cuda: CUDA is not available on this machine (no GPU is visible); use --device cpu."]
    assert not any(tmp_path.iterdir())


def test_an_unknown_device_is_one_error_line(capsys):
    assert main([*COMMANDS["evaluate"], "--device", "tpu"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --device 'tpu' is not a device; use cpu, cuda or cuda:N."]


def test_device_cpu_reaches_the_engine(tmp_path, monkeypatch, capsys):
    """The attack command with ``--device cpu`` builds its engine there and writes the adversarial image."""
    devices = []

    def tiny(name, weights=None, device=None, cache=None, frozen=False):
        devices.append(device)
        return tiny_evaluate.tiny_engine(name, weights, device, cache, frozen)

    monkeypatch.setattr(factory, "load_engine", tiny)
    out = tmp_path / "adv.png"
    assert main(["attack", "--image", IMAGE, "--out", str(out), "--steps", "1", "--device", "cpu"]) == 0
    assert devices == ["cpu"] and out.stat().st_size > 0


def test_train_adapter_runs_on_the_cpu(tmp_path):
    assert main(["train-adapter", "--arch", str(CONFIG_DIR / "sam_tiny_test.yaml"), "--steps", "1", "--batch", "1",
                 "--instances", "1", "--attack-steps", "1", "--attacks", "feature", "--eval-every", "0",
                 "--device", "cpu", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "adapter.safetensors").is_file()


def test_app_device_flag_and_variable(monkeypatch):
    sys.path.insert(0, str(REPO_ROOT))
    import app

    assert app.parse_args(["--device", "cpu"]).device == "cpu"
    monkeypatch.setenv("SAMDEMO_DEVICE", "cpu")
    assert app.parse_args([]).device == "cpu"
    if not torch.cuda.is_available():
        monkeypatch.setenv("SAMDEMO_DEVICE", "cuda")
        with pytest.raises(SystemExit) as exit_:
            app.parse_args([])
        assert exit_.value.code == 2
