"""Noise generators: how a gradient becomes an L-infinity step.

* ``fgsm``: one step of size eps from the clean image, ``delta = eps * sign(g)`` (Goodfellow
  et al. 2015); the attack's ``steps`` and ``step_size`` are ignored. With ``random_start`` the
  gradient is taken at the random start x + U(-eps, eps) (the step still starts from x, as in
  R+FGSM, Tramer et al. 2018): feature-distance losses are stationary at x itself (their
  gradient there is exactly 0), so a plain FGSM on them would not move.
* ``pgd``: ``delta <- Proj(delta + alpha * sign(g))`` (Madry et al. 2018).
* ``mifgsm``: momentum on the L1-normalised gradient, ``m <- mu * m + g / ||g||_1`` (per image),
  ``delta <- Proj(delta + alpha * sign(m))`` with mu = 1.0 (Dong et al. 2018).
* ``apgd``: Auto-PGD (Croce & Hein 2020): step size 2 eps halved at checkpoints where the loss
  stops rising, momentum 0.75, restarts from the best point; see ``apgd.py``.
* ``segpgd``: the PGD update, and it asks the attack's *mask* losses to weight pixels as SegPGD
  (Gu et al. 2022): pixels the model still gets "right" (not yet fooled) weigh 1 - lambda(t),
  fooled ones lambda(t), with lambda(t) = (t - 1) / (2T) for t = 1..T. Feature losses have no
  pixels, so for them segpgd is plain PGD.

``Proj`` clips delta to [-eps, eps] and x + delta to [0, 1] (:func:`project`).
"""

from __future__ import annotations

import torch


def project(delta: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip delta to the L-infinity ball and x + delta to the [0, 1] image box."""
    delta = delta.clamp(-eps, eps)
    return (clean + delta).clamp(0, 1) - clean


def segpgd_lambda(t: int, total: int) -> float:
    """SegPGD's schedule lambda(t) = (t - 1) / (2T), t = 1..T: 0 at the first step, < 1/2 at the last."""
    return (t - 1) / (2 * total)


def segpgd_weights(fooled: torch.Tensor, t: int, total: int) -> torch.Tensor:
    """Per-pixel weights: 1 - lambda(t) where the attack has not succeeded yet, lambda(t) where it has."""
    lam = segpgd_lambda(t, total)
    return torch.where(fooled, torch.full_like(fooled, lam, dtype=torch.float32),
                       torch.full_like(fooled, 1 - lam, dtype=torch.float32))


class NoiseGenerator:
    """A stateless description; :meth:`start` returns the per-run updater (which may hold state)."""

    name = "base"
    single_step = False  # FGSM: one step of size eps, no random start
    pixel_weighting = False  # SegPGD: the attack weights mask-loss pixels
    needs_loss = False  # APGD: step() also gets the per-image loss of the current iterate

    @staticmethod
    def default_step_size(eps: float, steps: int) -> float:
        """Step size when the attack is not given one: 2.5 eps / steps (Madry et al. 2018)."""
        return 2.5 * eps / steps

    def start(self, clean: torch.Tensor, eps: float, step_size: float, steps: int) -> "NoiseGenerator":
        run = type(self).__new__(type(self))
        run.__dict__.update(self.__dict__)
        run.eps, run.step_size, run.steps = eps, step_size, steps
        run.reset(clean)
        return run

    def reset(self, clean: torch.Tensor) -> None:
        pass

    def step(self, delta: torch.Tensor, grad: torch.Tensor, t: int, loss: torch.Tensor | None = None) -> torch.Tensor:
        """New (unprojected) delta from the current delta and the gradient of the loss to maximise
        (``loss``: its per-image values at ``delta``, for generators with ``needs_loss``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FGSM(NoiseGenerator):
    name = "fgsm"
    single_step = True

    def step(self, delta, grad, t, loss=None):
        return self.eps * grad.sign()  # from the clean image; delta was only where g was taken


class PGD(NoiseGenerator):
    name = "pgd"

    def step(self, delta, grad, t, loss=None):
        return delta + self.step_size * grad.sign()


class MIFGSM(NoiseGenerator):
    name = "mifgsm"

    def __init__(self, momentum: float = 1.0):
        self.momentum = float(momentum)

    def reset(self, clean):
        self.velocity = torch.zeros_like(clean)

    def step(self, delta, grad, t, loss=None):
        l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
        self.velocity = self.momentum * self.velocity + grad / l1
        return delta + self.step_size * self.velocity.sign()


class SegPGD(PGD):
    name = "segpgd"
    pixel_weighting = True


from samdemo.attacks.apgd import APGD  # noqa: E402  (apgd.py builds on NoiseGenerator and project above)

GENERATORS: dict[str, type[NoiseGenerator]] = {"fgsm": FGSM, "pgd": PGD, "mifgsm": MIFGSM, "segpgd": SegPGD,
                                               "apgd": APGD}


def make_generator(generator: str | NoiseGenerator) -> NoiseGenerator:
    if isinstance(generator, NoiseGenerator):
        return generator
    key = str(generator).lower().replace("-", "").replace("_", "")
    if key not in GENERATORS:
        raise ValueError(f"Unknown noise generator {generator!r}; choose one of {', '.join(GENERATORS)}.")
    return GENERATORS[key]()
