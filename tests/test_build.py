"""Registry, weight loading (safetensors, weights_only, Hub errors) and the full-size configs."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from samdemo.build import (CHECKPOINT_DIR, DEFAULT_MODEL, MODEL_REGISTRY, ModelUnavailableError, build_architecture,
                           get_spec, load_model, read_state_dict)
from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.factory import load_engine
from tests.test_engine import example_prompts, reference_logits, reference_predictor


def test_registry_covers_every_family_and_size():
    expected = {"sam-small", "sam2-small", "sam-vit-b", "sam-vit-l", "sam-vit-h"} | {
        f"sam{v}-hiera-{s}" for v in ("2", "2.1") for s in ("tiny", "small", "base-plus", "large")}
    assert expected <= set(MODEL_REGISTRY)
    assert DEFAULT_MODEL == "sam-small"
    for spec in MODEL_REGISTRY.values():
        assert spec.config.exists(), spec.config
        assert spec.hub is not None or spec.local_file  # weights come from somewhere
    assert get_spec("sam2.1-hiera-tiny").hub.repo_id == "facebook/sam2.1-hiera-tiny"
    assert get_spec("sam2.1-hiera-tiny").hub.filename == "sam2.1_hiera_tiny.pt"
    assert get_spec("sam-vit-b").hub.filename == "checkpoints/sam_vit_b_01ec64.pth"


def test_unknown_model_names_list_the_known_ones():
    with pytest.raises(ModelUnavailableError, match="Unknown model 'sam-vit-x'.*sam-small"):
        get_spec("sam-vit-x")


def test_offline_and_not_cached_gives_one_clear_error(tmp_path):
    code = textwrap.dedent("""
        from samdemo.build import load_model
        from samdemo.errors import ModelUnavailableError
        try:
            load_model("sam-vit-b")
        except ModelUnavailableError as error:
            print(error)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), SAMDEMO_CHECKPOINTS=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert "checkpoints/sam_vit_b_01ec64.pth" in message and "ybelkada/segment-anything" in message
    assert str(tmp_path / "sam_vit_b_01ec64.pth") in message  # where to put it by hand
    assert "Traceback" not in result.stderr


def test_a_checkpoint_that_is_not_the_published_file_is_refused(tmp_path, monkeypatch):
    import hashlib

    from samdemo import build
    from samdemo.build import HubFile, ModelSpec, locate_weights

    monkeypatch.setattr(build, "CHECKPOINT_DIR", tmp_path)
    torch.save({"w": torch.ones(3)}, tmp_path / "sam_vit_b_01ec64.pth")  # right name, not Meta's bytes
    with pytest.raises(ModelUnavailableError, match=r"not the published checkpoint.*expected 01ec64d29a2fca3f"):
        locate_weights(get_spec("sam-vit-b"))
    digest = hashlib.md5((tmp_path / "sam_vit_b_01ec64.pth").read_bytes()).hexdigest()
    spec = ModelSpec("copy", "sam", get_spec("sam-vit-b").config, "sam_vit_b_01ec64.pth",
                     HubFile("owner/repo", "sam_vit_b_01ec64.pth", md5=digest), 1, "")
    assert locate_weights(spec) == tmp_path / "sam_vit_b_01ec64.pth"
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"truncated")  # a changed file is checked again
    with pytest.raises(ModelUnavailableError, match="Delete it to download it again"):
        locate_weights(spec)


class WritesAFile:
    def __reduce__(self):
        return (open, ("/tmp/samdemo_pickle_payload_ran", "w"))


def test_pickle_payload_in_a_pth_is_refused_and_never_runs(tmp_path):
    target = "/tmp/samdemo_pickle_payload_ran"
    if os.path.exists(target):
        os.remove(target)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": WritesAFile()}, f)
    torch.save({"model": {"w": torch.zeros(1)}, "payload": WritesAFile()}, tmp_path / "evil2.pt")
    for bad in (path, tmp_path / "evil2.pt"):
        with pytest.raises(ModelUnavailableError, match="weights_only"):
            read_state_dict(bad)
    assert not os.path.exists(target)


def test_plain_checkpoints_load_with_weights_only(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "sam2_style.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "sam_style.pth")
    assert read_state_dict(tmp_path / "sam2_style.pt")["w"].shape == (2,)
    assert read_state_dict(tmp_path / "sam_style.pth")["w"].shape == (3,)


@pytest.mark.parametrize("name", ["sam-small", "sam2-small"])
def test_embedded_models_load_offline(name):
    if not (CHECKPOINT_DIR / get_spec(name).local_file).exists():
        pytest.skip(f"{name} weights are not in checkpoints/ (being trained)")
    engine = load_engine(name, device="cpu")
    size = sum(p.numel() for p in engine.model.parameters())
    assert 1e6 < size < 10e6  # under the 40 MB limit at fp32


@pytest.mark.parametrize("name", ["sam-vit-b", "sam2.1-hiera-tiny"])
def test_full_size_architectures_match_the_official_predictor(name):
    """Random-init ViT-B / Hiera-T at 1024 px: the engine equals SamPredictor / SAM2ImagePredictor."""
    torch.manual_seed(0)
    spec = get_spec(name)
    model, family = build_architecture(spec.config)
    engine = SegmentEngine(model.eval(), family, name=name)
    image = (np.random.default_rng(0).random((1024, 1024, 3)) * 255).astype(np.uint8)
    predictor = reference_predictor(engine)
    with torch.no_grad():
        predictor.set_image(image)
        features = engine.embed(image_to_tensor(image))
        for label, prompt in example_prompts(1024, 1024).items():
            ours = engine.decode(features, [prompt]).logits[0].numpy()
            assert np.abs(ours - reference_logits(predictor, prompt)).max() < 1e-3, label
