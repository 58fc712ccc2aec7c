"""--device in the benchmark scripts (``benchmarks/_common.parse_args``): an unavailable device is one ``error:``
line and exit code 2 before any model is loaded or result written, and a CPU run records the device it used."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from samdemo import distributed
from samdemo.build import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
# every benchmark that runs a model (training_curve.py plots logs; model_costs.py counts on the meta device)
SCRIPTS = ("adapter_merge", "app_latency", "app_training", "attack_speed", "attack_strength", "bf16_fidelity",
           "evaluate_scaling", "lab_features", "model_quality", "real_size", "soak", "training_speed")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def run_script(name: str, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *argv], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(device: str) -> str:
    with pytest.raises(ValueError) as error:
        distributed.check_device(device)
    return f"error: {error.value}"


@NO_CUDA
@pytest.mark.parametrize("script", SCRIPTS)
def test_unavailable_cuda_is_one_error_line(script, tmp_path, monkeypatch, capsys):
    """Each script's main in this process (a fresh interpreter per script costs seconds of imports; the subprocess
    tests below check the exit status of a real run)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script (training_speed.py imports _common)
    spec = importlib.util.spec_from_file_location(f"benchmark_{script}", BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "result.json"
    with pytest.raises(SystemExit) as exit_:
        module.main(["--device", "cuda", "--out", str(out)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [error_line("cuda")] and captured.out == ""
    assert not any(tmp_path.iterdir())


@NO_CUDA
def test_unavailable_cuda_exits_before_loading(tmp_path):
    out = tmp_path / "result.json"
    done = run_script("bf16_fidelity", "--device", "cuda", "--out", str(out))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [error_line("cuda")] and done.stdout == ""  # no traceback
    assert "CUDA is not available" in done.stderr and not out.exists()


def test_an_unknown_device_is_one_error_line(tmp_path):
    done = run_script("bf16_fidelity", "--device", "tpu", "--out", str(tmp_path / "result.json"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [error_line("tpu")] == ["error: --device 'tpu' is not a device; use cpu, "
                                                               "cuda or cuda:N."]


def test_a_cpu_run_records_its_device(tmp_path):
    """adapter_merge.py at its smallest (2 rounds of 1 call per variant) on the CPU writes its JSON with the device."""
    out = tmp_path / "adapter_merge.json"
    done = run_script("adapter_merge", "--device", "cpu", "--rounds", "2", "--reps", "1", "--warmup", "0",
                      "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["model"] == "sam-small"
    assert all(value > 0 for value in result["median_ms"].values())
    assert result["max_abs_logit_diff_merged_vs_unmerged"] < 1e-3  # the merged adapter is the unmerged one
