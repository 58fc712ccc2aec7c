"""Attacks on a batch of images: with one seed per image, each image gets the perturbation (and so the masks)
it gets alone, for every attack and noise generator; one seed for a batch is one random stream, as before."""

from __future__ import annotations

import pytest
import torch

from samdemo.attacks import make_attack
from samdemo.attacks.base import Attack, per_image_generators
from samdemo.build import CHECKPOINT_DIR
from samdemo.engine import image_to_tensor
from samdemo.metrics import batch_iou
from samdemo.pipeline import AttackRequest, craft, predict_types
from samdemo.prompts import prompts_from_mask
from samdemo.scenes import validation_scenes
from tests.conftest import tiny_engine

EPS = 8 / 255
SEEDS = [11, 2024, 7]
needs = {name: pytest.mark.skipif(not (CHECKPOINT_DIR / name / "model.safetensors").exists(),
                                  reason=f"the embedded {name} is needed")
         for name in ("sam-small", "sam2-small")}


class NoisyDistance(Attack):
    """A toy objective with per-image randomness and no model: minus the squared distance to x + offset, plus
    a draw from the image's own stream at every evaluation (so a mixed-up stream changes the result)."""

    name = "noisy-distance"

    def prepare(self, images, prompts, rngs):
        return {"target": images + 2 / 255}

    def loss(self, adv, state, step, rngs):
        noise = torch.cat([torch.rand(1, generator=g) for g in rngs]) * 1e-3
        return -(adv - state["target"]).square().flatten(1).sum(1) + noise


def images(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


@pytest.mark.parametrize("generator", ["pgd", "apgd", "mifgsm", "fgsm"])
def test_per_image_seeds_make_the_loop_per_image(generator):
    """Random starts, restarts, the loss's draws, APGD's step sizes and checkpoints, the best iterate: per image."""
    engine = tiny_engine("sam")
    x = images()
    attack = lambda seed: NoisyDistance(engine, eps=EPS, steps=6, generator=generator, seed=seed, restarts=2)  # noqa: E731
    batched = attack(SEEDS)(x)
    for i, seed in enumerate(SEEDS):
        alone = attack(seed)(x[i:i + 1])
        assert torch.equal(batched.adv_images[i:i + 1], alone.adv_images)
        assert batched.info["best_step"][i] == alone.info["best_step"][0]
        assert batched.info["best_loss"][i] == pytest.approx(alone.info["best_loss"][0], abs=1e-6)
    # not a degenerate comparison: the images end at different points of their own balls
    assert len({tuple(p.flatten().tolist()) for p in batched.perturbation}) == 3


def test_random_attack_per_image_and_one_stream_for_one_seed():
    engine = tiny_engine("sam")
    x = images(size=16)
    batched = make_attack("random", engine, eps=EPS, seed=SEEDS)(x)
    for i, seed in enumerate(SEEDS):
        assert torch.equal(batched.adv_images[i:i + 1], make_attack("random", engine, eps=EPS, seed=seed)(x[i:i + 1]).adv_images)
    # one int seed for the batch: the images share one stream, drawn in image order (unchanged numbers)
    shared = make_attack("random", engine, eps=EPS, seed=5)(x).perturbation
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    moved = shared != 0  # a pixel at 0 or 1 may not move
    assert moved.float().mean() > 0.9 and torch.equal(shared.sign()[moved], signs.float()[moved])


def test_seed_validation():
    engine = tiny_engine("sam")
    with pytest.raises(ValueError, match="one per image is 3 seeds; got 2"):
        make_attack("random", engine, seed=[1, 2])(images())
    with pytest.raises(ValueError, match="seed must be an int"):
        make_attack("feature", engine, seed=[1, "a"])
    with pytest.raises(ValueError, match="one per image"):
        AttackRequest(seed=(1, -2))
    assert AttackRequest(seed=[3, 4]).seed == (3, 4)
    assert len(per_image_generators(None, 2)) == 2


@pytest.fixture(scope="module")
def scenes():
    return validation_scenes(3)


def attack_masks(engine, scene_images, scenes, adv_images):
    """Per image: {type: IoU of the masks of its first two objects on the adversarial image vs the clean one}."""
    out = []
    for i, scene in enumerate(scenes):
        objects = [prompts_from_mask(m) for m in scene.masks[:2]]
        clean = predict_types(engine, scene_images[i:i + 1], objects, ("point", "box"))
        adv = predict_types(engine, adv_images[i:i + 1], objects, ("point", "box"))
        out.append({t: batch_iou(adv[t], clean[t]).tolist() for t in clean})
    return out


@pytest.mark.parametrize("model, attack, generator", [
    pytest.param("sam-small", "cross-prompt", "pgd", marks=needs["sam-small"]),
    pytest.param("sam-small", "cross-prompt", "apgd", marks=needs["sam-small"]),
    pytest.param("sam-small", "mask", "pgd", marks=needs["sam-small"]),
    pytest.param("sam-small", "mask", "apgd", marks=needs["sam-small"]),
    pytest.param("sam-small", "feature", "apgd", marks=needs["sam-small"]),
    pytest.param("sam2-small", "cross-prompt", "apgd", marks=needs["sam2-small"]),
    pytest.param("sam2-small", "mask", "pgd", marks=needs["sam2-small"]),
])
def test_batch_of_three_equals_each_image_alone(model, attack, generator, scenes):
    """On the shipped models (whose forward pass gives an image the same bits in a batch as alone on the CPU)
    the batch's perturbations and the masks they cause are each image's own."""
    from samdemo.factory import load_engine

    engine = load_engine(model, device="cpu", frozen=True)
    x = torch.cat([image_to_tensor(s.image) for s in scenes])
    prompts = [[p for m in s.masks[:2] for p in prompts_from_mask(m).values()] for s in scenes]
    options = {"prompts_per_step": 8} if attack == "cross-prompt" else {}
    request = AttackRequest(attack=attack, generator=generator, steps=3, seed=tuple(SEEDS), options=options)
    batched = craft(request, engine, x, prompts)
    alone = [craft(request.with_(seed=(seed,)), engine, x[i:i + 1], prompts[i:i + 1]) for i, seed in enumerate(SEEDS)]
    for i, result in enumerate(alone):
        assert (batched.adv_images[i:i + 1] - result.adv_images).abs().max().item() <= 1e-5, i
        assert batched.info["best_step"][i] == result.info["best_step"][0]
    assert attack_masks(engine, x, scenes, batched.adv_images) == \
        attack_masks(engine, x, scenes, torch.cat([r.adv_images for r in alone]))
    assert batched.perturbation.abs().amax(dim=(1, 2, 3)).min() > 0  # every image is attacked
