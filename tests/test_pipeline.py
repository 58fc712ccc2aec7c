"""samdemo.pipeline (the attack sequence every caller shares) and samdemo.factory (engines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samdemo import pipeline
from samdemo.defense import AdapterError
from samdemo.errors import ModelUnavailableError
from samdemo.factory import load_engine, robust_copy
from samdemo.pipeline import AttackRequest, run_attack
from samdemo.prompts import box_prompt, point_prompt

try:
    from test_app import tiny_engine, write_tiny_adapters
except ImportError:
    from tests.test_app import tiny_engine, write_tiny_adapters


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return write_tiny_adapters(tmp_path_factory.mktemp("checkpoints"))


def scene_image(size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((size, size, 3), 90, np.uint8)
    image[16:48, 12:40] = (220, 40, 40)
    return np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fields,message", [
    ({"eps255": 33}, "between 0 and 32"),
    ({"eps255": 8 / 255}, None),  # a small number is a legal (tiny) epsilon in 1/255 units
    ({"eps255": "8/255"}, "1/255 units"),
    ({"attack": "nope"}, "Unknown attack"),
    ({"generator": "adam"}, "Unknown generator"),
    ({"steps": 0}, "steps"),
    ({"restarts": 0}, "restarts"),
    ({"seed": -1}, "seed"),
    ({"attack": "cross-prompt", "options": {"gird": 8}}, "no option 'gird'; its options: k, "),
    ({"attack": "random", "options": {"grid": 8}}, "it takes none"),
])
def test_request_is_checked_once_in_one_unit(fields, message):
    if message is None:
        assert AttackRequest(**fields).eps == pytest.approx(8 / 255 / 255)
        return
    with pytest.raises(ValueError, match=message):
        AttackRequest(**fields)


def test_request_is_keyword_only_and_converts_epsilon():
    with pytest.raises(TypeError):
        AttackRequest("mask")  # noqa: the fields have no order a caller could get wrong
    request = AttackRequest(attack="mask", eps255=4, steps=3)
    assert request.eps == pytest.approx(4 / 255) and request.uses_prompts
    assert request.with_(attack="cross-prompt").uses_prompts is False
    attack = request.build(tiny_engine("sam-small"))
    assert attack.eps == pytest.approx(4 / 255) and attack.steps == 3


def test_run_attack_crafts_on_the_target_and_predicts_with_every_engine(adapters):
    original = tiny_engine("sam-small")
    original.model.requires_grad_(False)
    robust, adapter = robust_copy(original, adapters / "sam-small-adapter")
    image = scene_image()
    prompts = [point_prompt(25, 30), box_prompt(10, 14, 42, 50)]
    request = AttackRequest(attack="mask", eps255=8, steps=2, seed=3)
    outcome = run_attack(request, {"original": original, "robust": robust}, image, prompts, target="robust")
    assert outcome.target == "robust" and outcome.models == ["original", "robust"]
    assert np.abs(outcome.adversarial.astype(int) - image.astype(int)).max() <= 8
    for key, masks in outcome.masks.items():
        assert masks.shape == (2, 64, 64) and masks.dtype == bool, key
    assert np.array_equal(outcome.iou("original", "clean"), [1.0, 1.0])
    expected = [np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)
                for a, b in zip(outcome.masks["robust", "adversarial"], outcome.masks["robust", "clean"])]
    assert outcome.iou("robust", "adversarial") == pytest.approx(expected, abs=1e-6)
    assert outcome.timings["steps_run"] == 2
    # the same request crafted on the robust engine directly gives the same perturbation (seeded)
    again = pipeline.craft(request, robust, torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255, [prompts])
    assert np.array_equal(again.to_uint8(), outcome.adversarial)


def test_prompt_free_attacks_never_see_the_prompts(monkeypatch):
    engine = tiny_engine("sam-small")
    seen = []
    real = pipeline.AttackRequest.build

    def spy(self, *args, **kwargs):
        attack = real(self, *args, **kwargs)
        forward = attack.forward
        attack.forward = lambda images, prompts=None: (seen.append(prompts), forward(images, prompts))[1]
        return attack

    monkeypatch.setattr(pipeline.AttackRequest, "build", spy)
    run_attack(AttackRequest(attack="cross-prompt", steps=1), {"m": engine}, scene_image(), [point_prompt(25, 30)])
    run_attack(AttackRequest(attack="mask", steps=1), {"m": engine}, scene_image(), [point_prompt(25, 30)],
               craft_prompts=[box_prompt(10, 14, 42, 50)])
    assert seen[0] is None and seen[1][0][0].kind == "box"


def test_robust_copy_is_frozen_shares_the_cache_and_refuses_foreign_weights(adapters):
    original = tiny_engine("sam-small")
    robust, adapter = robust_copy(original, adapters / "sam-small-adapter")
    assert robust.cache is original.cache and robust.adapter_tag != original.adapter_tag
    assert not any(p.requires_grad for p in robust.model.parameters())
    assert adapter.num_trainable > 0 and robust.model is not original.model
    other = tiny_engine("sam-small")
    with torch.no_grad():
        next(other.model.image_encoder.neck.parameters()).add_(0.1)
    with pytest.raises(AdapterError, match="fingerprint|other weights|trained on"):
        robust_copy(other, adapters / "sam-small-adapter")


def test_load_engine_errors_are_clear(tmp_path):
    with pytest.raises(ModelUnavailableError, match="Unknown model"):
        load_engine("sam-vit-z")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_engine("sam-small", weights=tmp_path / "missing.safetensors")


def test_attack_options_parse_as_json_and_are_checked():
    from samdemo.pipeline import parse_option

    assert parse_option("cross-prompt:grid=8") == ("cross-prompt", "grid", 8)
    assert parse_option("feature:distance=cosine") == ("feature", "distance", "cosine")
    assert parse_option("cross-prompt:mix_types=[\"box\"]") == ("cross-prompt", "mix_types", ["box"])
    for text, message in [("grid=8", "ATTACK:KEY=VALUE"), ("cross-prompt:grid", "ATTACK:KEY=VALUE"),
                          ("pixel:grid=8", "Unknown attack 'pixel'"), ("mask:grid=8", "no option 'grid'")]:
        with pytest.raises(ValueError, match=message):
            parse_option(text)
    attack = AttackRequest(attack="cross-prompt", options={"grid": 8}).build(tiny_engine("sam-small"))
    assert attack.grid == 8


def test_each_model_has_its_chosen_attack_options():
    from samdemo.build import MODEL_REGISTRY, attack_options

    assert attack_options("sam2-small", "cross-prompt") == {"grid": 8}  # chosen on sam2-small's validation scenes
    assert attack_options("sam-small", "cross-prompt") == {}  # the class default (grid 4)
    assert attack_options("sam2-small", "mask") == {} and attack_options("a-test-architecture", "cross-prompt") == {}
    attack_options("sam2-small", "cross-prompt")["grid"] = 2  # a copy: the registry is unchanged
    assert attack_options("sam2-small", "cross-prompt") == {"grid": 8}
    for spec in MODEL_REGISTRY.values():
        for attack, options in spec.attack_options.items():
            AttackRequest(attack=attack, options=options)  # every registered option exists
