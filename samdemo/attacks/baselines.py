"""Baseline attacks: single-prompt mask attack, all-channel feature attack, random control.

* ``mask`` (Attack-SAM style, prompt-specific): with the user's own prompts, drive the mask
  logits to background: minimise the BCE against an empty mask, ``mean_p mean_{k, pixels}
  softplus(z_{p,k})`` (the attack maximises its negative), on the low-resolution logits of all four mask tokens (``tokens="all"``)
  or only the chosen one (``tokens="chosen"``). All four by default: SAM picks a token after
  the fact (best predicted IoU for a lone point; SAM 2's stability fallback otherwise), so an
  attack on the chosen token alone leaves the others to be picked instead.
* ``feature`` (prompt-agnostic, UMI-GRAT / TAP style): maximise the relative MSE between the
  adversarial and clean image embedding on *all* channels (+ SAM 2's high-res maps).
* ``random``: uniform +-eps sign noise (each pixel +eps or -eps with probability 1/2), the
  control that tells an attack from mere noise of the same L-infinity size.
"""

from __future__ import annotations

import time

import torch

from samdemo.attacks.base import (DEFAULT_EPS, DEFAULT_STEPS, Attack, AttackResult, StepInfo, background_bce,
                                  feature_distance, per_image_generators, per_image_prompts, quantize_project,
                                  validate_images)
from samdemo.attacks.generators import project
from samdemo.engine import ImageFeatures, SegmentEngine
from samdemo.prompts import Prompt


def mask_loss(engine: SegmentEngine, features: ImageFeatures, prompts: list[Prompt], image_index: int = 0,
              step: StepInfo | None = None, tokens: str = "all") -> torch.Tensor:
    """Mean over prompts of the background BCE of their mask logits, one batched decoder call.
    The BCE to an empty mask: an attack *minimises* it (maximises its negative)."""
    prediction = engine.decode(features, prompts, image_index=image_index, validate=False)
    logits = prediction.low_res_all if tokens == "all" else prediction.low_res_logits
    return background_bce(logits, step).mean()


class MaskAttack(Attack):
    """Attack-SAM style: push the masks of the user's prompts to background. Batches: one encoder pass for
    the batch, then one decoder call per image with its own prompts."""

    name = "mask"
    uses_prompts = True

    def __init__(self, engine: SegmentEngine, eps: float = DEFAULT_EPS, steps: int = DEFAULT_STEPS,
                 step_size: float | None = None, generator="pgd", random_start: bool = True, seed=None,
                 progress=None, cancel=None, restarts: int = 1, *, tokens: str = "all"):
        super().__init__(engine, eps, steps, step_size, generator, random_start, seed, progress, cancel, restarts)
        if tokens not in ("all", "chosen"):
            raise ValueError(f"tokens must be 'all' or 'chosen'; got {tokens!r}.")
        self.tokens = tokens

    def prepare(self, images, prompts, rngs):
        groups = per_image_prompts(prompts, len(images))
        hw = tuple(images.shape[-2:])
        for group in groups:
            for prompt in group:
                prompt.validate(hw)
        return {"prompts": groups, "info": {"prompts": sum(len(g) for g in groups), "tokens": self.tokens}}

    def loss(self, adv, state, step, rngs):
        feats = self.engine.embed(adv)
        # maximise minus the BCE: the masks go to background
        return -torch.stack([mask_loss(self.engine, feats, group, i, step, self.tokens)
                             for i, group in enumerate(state["prompts"])])


class FeatureAttack(Attack):
    """Prompt-agnostic: push the whole image embedding away from its clean value."""

    name = "feature"

    def __init__(self, engine: SegmentEngine, eps: float = DEFAULT_EPS, steps: int = DEFAULT_STEPS,
                 step_size: float | None = None, generator="pgd", random_start: bool = True, seed=None,
                 progress=None, cancel=None, restarts: int = 1, *, distance: str = "mse", high_res_weight: float = 1.0):
        super().__init__(engine, eps, steps, step_size, generator, random_start, seed, progress, cancel, restarts)
        if distance not in ("mse", "cosine"):
            raise ValueError(f"distance must be 'mse' or 'cosine'; got {distance!r}.")
        self.distance, self.high_res_weight = distance, float(high_res_weight)

    def prepare(self, images, prompts, rngs):
        return {"clean": self.engine.embed(images), "info": {"distance": self.distance}}

    def loss(self, adv, state, step, rngs):
        clean: ImageFeatures = state["clean"]
        feats = self.engine.embed(adv)
        per_image = feature_distance(feats.image_embed, clean.image_embed, self.distance)
        if feats.high_res and self.high_res_weight:
            per_image = per_image + self.high_res_weight * sum(
                feature_distance(f, c, "mse") for f, c in zip(feats.high_res, clean.high_res)) / len(feats.high_res)
        return per_image


class RandomAttack(Attack):
    """Control: x + eps * s with s uniform in {-1, +1} per pixel (then clipped and quantised)."""

    name = "random"

    def forward(self, images: torch.Tensor, prompts=None) -> AttackResult:
        start = time.perf_counter()
        source_device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        x = validate_images(images)
        rngs = per_image_generators(self.seed, len(x), "cpu")
        self._check_cancel(0, 1)
        signs = torch.cat([torch.randint(0, 2, (1, *x.shape[1:]), generator=g, device="cpu")
                           for g in rngs]).float().to(x.device) * 2 - 1
        adv = quantize_project(x + project(signs * self.eps, x, self.eps), x, self.eps)
        if self.progress is not None:
            self.progress(1, 1)
        return AttackResult(adv.to(source_device), (adv - x).to(source_device), [], time.perf_counter() - start,
                            {"attack": self.name, "steps_run": 0})
