"""benchmarks/gpu_check.sh run on CPU with tiny settings (the embedded 256-px models), and the
predicted cost table / activation checkpointing it relies on (samdemo.costs, samdemo.efficiency)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_cpu_with_tiny_settings(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "ATTACK_MODELS": "sam-small sam2-small", "ATTACK_STEPS": "2", "TRAIN_MODELS": "sam-small", "TRAIN_BATCH": "1",
           "EVAL_MODEL": "sam-small", "EVAL_IMAGES": "1", "APP_MODELS": "sam-small", "APP_CLICKS": "1",
           "APP_ATTACKS": "1", "TRAIN_BASE_MINUTES": "0", "STAGE_TIMEOUT": "400", "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    parts = summary["parts"]
    assert summary["train_base_ran"] is False
    for model in ("sam-small", "sam2-small"):
        row = parts["attack"]["models"][model]["attack"]
        assert "error" not in row, row
        assert row["image_size"] == 256 and len(row["step_s"]) == 2 and row["step_s_median"] > 0
        assert row["peak_memory_gb"] > 0.05  # the model alone is 16 MB; the process holds torch too
    assert parts["attack"]["device"] == "cpu" and parts["attack"]["bf16"] is False
    train = parts["train"]["models"]["sam-small"]["train"]
    assert "error" not in train, train
    assert train["seconds"] > 0
    evaluate = parts["evaluate"]["models"]["sam-small"]["evaluate"]
    assert "error" not in evaluate, evaluate
    assert evaluate["images"] == 1 and evaluate["images_per_s"] > 0
    app = parts["app_latency_sam-small"]
    assert app["model"] == "sam-small" and app["device"] == "cpu"  # gpu_check.sh passes its DEVICE on


def test_cost_prediction_counts_what_the_step_does():
    from samdemo import costs

    plain = costs.step_profile("sam-small", prompts=32)
    encoder_only = costs.step_profile("sam-small", prompts=0)
    ckpt = costs.step_profile("sam-small", prompts=32, checkpointing=True)
    assert plain["image_size"] == 256 and 4.0 < plain["params_m"] < 4.2  # the embedded SAM: 4.07 M parameters
    assert plain["weights_mb"] == pytest.approx(plain["params_m"] * 1e6 * 4 / 2**20)
    # decoding 32 prompts costs FLOPs on top of the encoder; recomputing the encoder costs more still
    assert encoder_only["gflop_per_step"] < plain["gflop_per_step"] < ckpt["gflop_per_step"]
    # a recomputed encoder saves far fewer activations, and the prediction's peak follows
    encoder_ckpt = costs.step_profile("sam-small", prompts=0, checkpointing=True)
    assert encoder_ckpt["saved_activations_mb"] < 0.5 * encoder_only["saved_activations_mb"]
    assert ckpt["saved_activations_mb"] < plain["saved_activations_mb"]
    assert ckpt["peak_memory_gb_fp32"] < plain["peak_memory_gb_fp32"]
    assert plain["peak_memory_gb_bf16"] < plain["peak_memory_gb_fp32"]
    assert plain["gpu_ms_per_step_tf32"] == pytest.approx(2 * plain["gpu_ms_per_step_bf16"], rel=0.01)
    table = costs.table([plain, ckpt])
    assert table.count("\n") == 3 and "sam-small + ckpt" in table


def test_cost_prediction_of_meta_models_without_weights():
    from samdemo import costs

    vit_b = costs.step_profile("sam-vit-b")
    hiera_t = costs.step_profile("sam2.1-hiera-tiny")
    assert vit_b["image_size"] == hiera_t["image_size"] == 1024
    assert 93 < vit_b["params_m"] < 94.5 and 38 < hiera_t["params_m"] < 40  # Meta's published sizes: 94 M, 39 M
    assert 2000 < vit_b["gflop_per_step"] < 3000  # encoder ~ 3 x 742 GFLOP forward at 1024 px
    assert hiera_t["gflop_per_step"] < vit_b["gflop_per_step"]


def test_activation_checkpointing_keeps_the_gradient():
    from samdemo.build import build_architecture, get_spec
    from samdemo.efficiency import disable_activation_checkpointing, enable_activation_checkpointing
    from samdemo.engine import SegmentEngine

    torch.manual_seed(0)
    model, family = build_architecture(get_spec("sam2-small").config)
    engine = SegmentEngine(model.eval().requires_grad_(False), family)
    x = torch.rand(1, 3, 256, 256)

    def grad():
        adv = x.clone().requires_grad_(True)
        loss = engine.embed(adv).image_embed.square().mean()
        return torch.autograd.grad(loss, adv)[0]

    reference = grad()
    assert enable_activation_checkpointing(model) > 0
    assert enable_activation_checkpointing(model) == len(model.image_encoder.trunk.blocks)  # idempotent
    checkpointed = grad()
    torch.testing.assert_close(checkpointed, reference, rtol=1e-4, atol=1e-7)
    with torch.no_grad():  # no recomputation machinery when no gradient is asked for
        engine.embed(x)
    disable_activation_checkpointing(model)
    assert "forward" not in vars(model.image_encoder.trunk.blocks[0])
    torch.testing.assert_close(grad(), reference)
