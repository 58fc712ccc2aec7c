"""APGD noise generator (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"; the L-infinity version of AutoAttack's APGD).

Per image, from ``x_0`` (the loop's start) with step size ``eta = 2 eps``:

* ``z = P(x_k + eta sign(g_k))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with
  momentum ``a = 0.75`` (``a = 1`` at the first step);
* checkpoints at the fractions ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``
  of the budget. At a checkpoint the step size of an image is halved, and that image restarts from
  its best point so far, when (1) its loss increased at fewer than 75 % of the steps since the last
  checkpoint, or (2) its step size was not halved at the last checkpoint and its best loss has not
  improved since.

The loop (:meth:`samdemo.attacks.base.Attack.forward`) hands the per-image loss of the current
iterate to :meth:`APGD.step`; the best iterate that the attack *returns* is kept by the loop itself.
"""

from __future__ import annotations

import math

import torch

from samdemo.attacks.generators import NoiseGenerator, project

APGD_MOMENTUM = 0.75
APGD_INCREASE_FRACTION = 0.75  # rho: the share of steps since the last checkpoint that must raise the loss


def apgd_checkpoints(steps: int) -> list[int]:
    """Steps (below ``steps``) at which APGD may halve its step size, in AutoAttack's integer form of
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): the first after max(int(0.22 T), 1)
    steps, then intervals shrinking by max(int(0.03 T), 1) down to max(int(0.06 T), 1)."""
    interval = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    checkpoints, t = [], interval
    while t < steps:
        checkpoints.append(t)
        interval = max(interval - shrink, shortest)
        t += interval
    return checkpoints


class APGD(NoiseGenerator):
    name = "apgd"
    needs_loss = True  # step() gets the per-image loss of the current iterate

    def __init__(self, momentum: float = APGD_MOMENTUM, increase_fraction: float = APGD_INCREASE_FRACTION):
        self.momentum = float(momentum)
        self.increase_fraction = float(increase_fraction)

    @staticmethod
    def default_step_size(eps: float, steps: int) -> float:
        return 2 * eps

    def reset(self, clean):
        batch = clean.shape[0]
        self.clean = clean
        self.eta = torch.full((batch,), float(self.step_size), device=clean.device)
        self.checkpoints = apgd_checkpoints(self.steps)
        self.previous_delta = None
        self.previous_loss = None
        self.best_loss = torch.full((batch,), -math.inf, device=clean.device)
        self.best_delta = torch.zeros_like(clean)
        self.best_grad = torch.zeros_like(clean)
        self.increases = torch.zeros(batch, device=clean.device)
        self.steps_since_check = 0
        self.best_at_last_check = self.best_loss.clone()
        self.halved_at_last_check = torch.ones(batch, dtype=torch.bool, device=clean.device)
        self.halvings = torch.zeros(batch, dtype=torch.long, device=clean.device)

    def step(self, delta, grad, t, loss=None):
        if loss is None:
            raise ValueError("APGD needs the per-image loss of the current iterate.")
        loss = loss.detach().reshape(-1).to(self.eta.device)
        improved = loss > self.best_loss
        self.best_loss = torch.where(improved, loss, self.best_loss)
        self.best_delta[improved] = delta[improved]
        self.best_grad[improved] = grad[improved]
        if self.previous_loss is not None:
            self.increases += (loss > self.previous_loss).float()
        self.previous_loss = loss
        self.steps_since_check += 1
        if t in self.checkpoints:
            oscillating = self.increases < self.increase_fraction * self.steps_since_check
            stalled = ~self.halved_at_last_check & (self.best_loss <= self.best_at_last_check)
            halve = oscillating | stalled
            self.eta = torch.where(halve, self.eta / 2, self.eta)
            self.halvings += halve.long()
            delta = torch.where(_per_image(halve, delta), self.best_delta, delta)
            grad = torch.where(_per_image(halve, grad), self.best_grad, grad)
            self.halved_at_last_check = halve
            self.best_at_last_check = self.best_loss.clone()
            self.increases.zero_()
            self.steps_since_check = 0
        eta = self.eta.view(-1, *([1] * (delta.ndim - 1)))
        towards = project(delta + eta * grad.sign(), self.clean, self.eps)
        if self.previous_delta is None:
            new = towards
        else:
            new = project(delta + self.momentum * (towards - delta) + (1 - self.momentum) * (delta - self.previous_delta),
                          self.clean, self.eps)
        self.previous_delta = delta
        return new


def _per_image(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))
