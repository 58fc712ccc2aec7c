"""A universal (image-agnostic) perturbation, DarkSAM / UAP style: one delta learned over a set of
images, then added unchanged to images it has never seen.

    delta = fit_universal(engine, images, eps255=8, steps=50, seed=0)   # 1 x 3 x H x W, |delta| <= eps
    adversarial = apply_universal(delta, test_images)                   # quantized to the 8-bit grid

It maximises the mean over the training images of the feature distance of ``feature``
(``base.feature_distance``: the image embedding pushed away from its clean value, relative to its
spatial spread), with signed gradient steps on the shared delta (step 2.5 eps / steps, Madry et
al.'s rule) from a uniform random start. Neither the adapter's training attacks nor their losses
are image-agnostic, so this is an attack family the defense never saw. All images share one size.
"""

from __future__ import annotations

import torch

from samdemo.attacks.base import as_generator, eps_from_255, feature_distance, quantize_project, validate_steps
from samdemo.engine import SegmentEngine


def fit_universal(engine: SegmentEngine, images: torch.Tensor, eps255: float = 8.0, steps: int = 50,
                  seed: int = 0, batch: int = 4) -> torch.Tensor:
    """The 1 x 3 x H x W perturbation (pixel units) that moves the embeddings of ``images`` (N x 3 x H x W
    in [0, 1]) the most on average, within the L-infinity ball of ``eps255``/255."""
    eps, steps = eps_from_255(eps255), validate_steps(steps)
    images = images.detach().float().to(engine.device)
    rng = as_generator(seed)
    delta = ((torch.rand((1, *images.shape[1:]), generator=rng) * 2 - 1) * eps).to(engine.device)
    step_size = 2.5 * eps / steps
    with torch.no_grad():
        clean = [engine.embed(images[i:i + batch]).image_embed.detach() for i in range(0, len(images), batch)]
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = sum(feature_distance(engine.embed((images[i:i + batch] + delta).clamp(0, 1)).image_embed,
                                    clean[i // batch]).sum() for i in range(0, len(images), batch)) / len(images)
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
    return delta.detach()


def apply_universal(delta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``images`` (N x 3 x H x W in [0, 1]) plus ``delta``, on the 8-bit grid and within the delta's bound."""
    eps = float(delta.abs().max())
    return quantize_project(images + delta.to(images.device), images, eps)
