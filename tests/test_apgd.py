"""APGD's schedule, best-iterate selection and restarts of the shared attack loop, the paper's attack row."""

from __future__ import annotations

import pytest
import torch

from samdemo.attacks import KeyChannelAttack, make_attack
from samdemo.attacks.apgd import APGD, apgd_checkpoints
from samdemo.attacks.base import Attack
from tests.conftest import tiny_engine

EPS = 8 / 255


class DistanceToTarget(Attack):
    """Toy objective with a known maximiser: minus the squared distance of the pixels to x + offset."""

    name = "distance-to-target"

    def __init__(self, engine, offset: float, **kwargs):
        super().__init__(engine, **kwargs)
        self.offset = offset

    def prepare(self, images, prompts, rng):
        return {"target": images + self.offset}

    def loss(self, adv, state, step, rng):
        return -(adv - state["target"]).square().flatten(1).sum(1)


def flat_image(value=128):
    return torch.full((1, 3, 8, 8), value / 255)


def test_checkpoints_are_autoattacks():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of 100 iterations (Croce & Hein 2020, sec. 3.2)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]


def test_best_iterate_not_last():
    """PGD with a step of eps oscillates between 0 and eps around the target 0.25 eps: after 3 steps
    the last iterate is eps, the best one seen is the start (distance 0.25 eps < 0.75 eps)."""
    engine = tiny_engine("sam")
    attack = DistanceToTarget(engine, 0.25 * EPS, eps=EPS, steps=3, step_size=EPS, random_start=False)
    result = attack(flat_image())
    assert torch.equal(result.adv_images, flat_image())
    assert result.info["best_step"] == [0]
    assert result.info["best_loss"][0] >= max(result.losses)


def test_restarts_keep_the_best_over_all_starts():
    engine = tiny_engine("sam")
    one = DistanceToTarget(engine, 0.25 * EPS, eps=EPS, steps=2, step_size=EPS / 8, seed=0)(flat_image())
    many = DistanceToTarget(engine, 0.25 * EPS, eps=EPS, steps=2, step_size=EPS / 8, seed=0, restarts=4)(flat_image())
    assert many.info["steps_run"] == 8 and len(many.losses) == 8
    assert many.info["best_loss"][0] >= one.info["best_loss"][0]  # the first restart is the single run
    assert many.losses[:2] == one.losses


def test_apgd_halves_its_step_and_finds_the_maximiser():
    """From eta = 2 eps APGD oscillates around the target, halves its step at checkpoints and ends on it;
    PGD with the default step 2.5 eps / T does not reach it as closely."""
    engine = tiny_engine("sam")
    target = 2 / 255
    apgd = DistanceToTarget(engine, target, eps=EPS, steps=30, generator="apgd", random_start=False)
    assert apgd.step_size == 2 * EPS
    result = apgd(flat_image())
    assert torch.allclose(result.perturbation, torch.full_like(result.perturbation, target), atol=1e-6)

    run = APGD().start(flat_image(), EPS, 2 * EPS, 30)
    delta, x = torch.zeros(1, 3, 8, 8), flat_image()
    for t in range(1, 31):
        loss = -(delta - target).square().flatten(1).sum(1)
        delta = run.step(delta, -2 * (delta - target), t, loss)
    assert run.halvings.item() >= 2 and run.eta.item() < 2 * EPS
    assert (x + delta).min() >= 0


def test_apgd_restarts_from_the_best_point_at_a_halving():
    run = APGD().start(torch.full((2, 1, 1, 1), 0.5), EPS, 2 * EPS, 20)  # checkpoints 4, 7, ...
    best = torch.full((2, 1, 1, 1), 0.01)
    run.step(best, torch.ones(2, 1, 1, 1), 1, torch.tensor([5.0, 5.0]))
    run.step(torch.full((2, 1, 1, 1), 0.02), torch.ones(2, 1, 1, 1), 2, torch.tensor([1.0, 6.0]))
    run.step(torch.full((2, 1, 1, 1), 0.02), torch.ones(2, 1, 1, 1), 3, torch.tensor([1.0, 7.0]))
    # at t = 4 the loss of image 0 never rose (< 75 % of 3 comparisons): it falls back to its best point;
    # image 1's rose 3 times of 3 and improved: it keeps its step size and its point
    new = run.step(torch.full((2, 1, 1, 1), -0.03), -torch.ones(2, 1, 1, 1), 4, torch.tensor([0.0, 9.0]))
    assert run.eta.tolist() == pytest.approx([EPS, 2 * EPS])
    assert run.halvings.tolist() == [1, 0]
    # image 0 stepped from its best point 0.01 along the best point's gradient (+), to the bound eps,
    # with momentum 0.75 against the previous iterate 0.02
    assert new[0].item() == pytest.approx(0.01 + 0.75 * (EPS - 0.01) + 0.25 * (0.01 - 0.02), abs=1e-6)
    assert new[1].item() < -0.02  # image 1 kept going from -0.03 along its own gradient (-)


def test_key_channel_is_cross_prompt_without_the_mask_term():
    engine = tiny_engine("sam")
    x = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(0)).float() / 255
    paper = make_attack("key-channel", engine, steps=2, seed=0)(x)
    ours_without_mask = make_attack("cross-prompt", engine, steps=2, seed=0, mix=0.0)(x)
    assert torch.equal(paper.adv_images, ours_without_mask.adv_images)
    assert paper.info["mix"] == 0.0 and paper.info["attack"] == "key-channel"
    try:
        KeyChannelAttack(engine, mix=100.0)
    except ValueError as error:
        assert "feature loss alone" in str(error)
    else:
        raise AssertionError("key-channel accepted a mask term")
