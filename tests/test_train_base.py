import json
import sys

import torch
from safetensors.torch import save_file

from samdemo.build import CONFIG_DIR, build_architecture
from samdemo.train_base import BaseTrainConfig, export_weights, train_base


def test_two_steps_train_log_export_and_continue_from_exported_weights(tmp_path):
    cfg = BaseTrainConfig(family="sam", config=str(CONFIG_DIR / "sam_tiny_test.yaml"), steps=2, batch=1,
                          instances=1, eval_every=2, eval_scenes=1, checkpoint_every=1, warmup=1)
    log = train_base(cfg, tmp_path / "run")
    assert [row[0] for row in log["train"]] == [1, 2] and log["eval"][-1]["step"] == 2
    weights = export_weights(tmp_path / "run", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "training_log.json").read_text())["train"] == log["train"]

    # A new run initialised from the exported weights starts from them, not from random ones.
    init = BaseTrainConfig(**{**cfg.__dict__, "steps": 0, "init": str(weights)})
    train_base(init, tmp_path / "run2")
    continued = torch.load(tmp_path / "run2" / "state.pt", weights_only=True)["model"]
    trained = torch.load(tmp_path / "run" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(continued[k], trained[k]) for k in trained)
    fresh, _ = build_architecture(CONFIG_DIR / "sam_tiny_test.yaml")
    assert not all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())

    # Exporting the continued run over the weights it started from keeps the whole history.
    export_weights(tmp_path / "run2", tmp_path / "out")
    history = json.loads((tmp_path / "out" / "training_log.json").read_text())
    assert history["config"]["init"] == str(weights) and history["previous"]["train"] == log["train"]


def test_gpu_training_script_runs_on_cpu_with_tiny_settings(tmp_path):
    """The script a GPU machine runs at once: checked here on CPU, one step per model."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DEVICE": "cpu", "WORKERS": "1", "BATCH": "2", "INSTANCES": "1", "STEPS": "1",
           "EVAL_SCENES": "1", "RUNS": str(tmp_path / "runs"), "EXPORT": str(tmp_path / "export"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(root / "scripts/train_models_gpu.sh"), "1"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for family in ("sam", "sam2"):
        log = json.loads((tmp_path / "export" / f"{family}-small" / "training_log.json").read_text())
        assert [row[0] for row in log["train"]] == [1] and log["config"]["device"] == "cpu"
        assert (tmp_path / "export" / f"{family}-small" / "model.safetensors").stat().st_size > 1e6


def test_architecture_comparison_measures_each_run_where_it_stands(tmp_path):
    import subprocess
    from pathlib import Path

    cfg = BaseTrainConfig(family="sam", config=str(CONFIG_DIR / "sam_tiny_test.yaml"), steps=2, batch=2,
                          instances=1, eval_every=1, eval_scenes=1, checkpoint_every=1, warmup=1)
    train_base(cfg, tmp_path / "run")
    script = Path(__file__).resolve().parents[1] / "scripts" / "architecture_comparison.py"
    out, figure = tmp_path / "comparison.json", tmp_path / "comparison.png"
    subprocess.run([sys.executable, str(script), "--runs", f"tiny={tmp_path / 'run'}", "--scenes", "2", "--shapes", "1",
                    "--threads", "1", "--out", str(out), "--figure", str(figure)], check=True, capture_output=True)
    run = json.loads(out.read_text())["runs"]["tiny"]
    assert (run["step"], run["images"]) == (2, 4) and [e["step"] for e in run["curve"]] == [1, 2]
    assert all(0 <= run[part][kind] <= 1 for part in ("validation", "grey", "independent") for kind in ("point", "box"))
    assert figure.stat().st_size > 0

    bad = subprocess.run([sys.executable, str(script), "--runs", f"tiny={tmp_path}"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--runs takes NAME=RUN_DIR" in bad.stderr
