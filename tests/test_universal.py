"""samdemo.attacks.universal: one perturbation for every image."""

from __future__ import annotations

import torch

from samdemo.attacks.base import feature_distance
from samdemo.attacks.universal import apply_universal, fit_universal

try:
    from test_app import tiny_engine
except ImportError:
    from tests.test_app import tiny_engine


def test_universal_perturbation_is_bounded_shared_and_moves_unseen_images():
    engine = tiny_engine("sam-small")
    engine.model.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    train, test = torch.rand(4, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    delta = fit_universal(engine, train, eps255=8, steps=5, seed=1, batch=2)
    assert delta.shape == (1, 3, 64, 64) and delta.abs().max() <= 8 / 255 + 1e-6
    adversarial = apply_universal(delta, test)
    assert ((adversarial - test).abs() <= 8 / 255 + 1e-6).all()
    assert torch.equal(adversarial * 255, (adversarial * 255).round())  # on the 8-bit grid
    with torch.no_grad():
        moved = feature_distance(engine.embed(adversarial).image_embed, engine.embed(test).image_embed)
        noise = torch.rand(1, 3, 64, 64, generator=g) * 16 / 255 - 8 / 255
        random = feature_distance(engine.embed(apply_universal(noise, test)).image_embed,
                                  engine.embed(test).image_embed)
    assert (moved > random).all()  # learnt on other images, it still beats noise of the same size
    assert torch.equal(delta, fit_universal(engine, train, eps255=8, steps=5, seed=1, batch=2))  # seeded
