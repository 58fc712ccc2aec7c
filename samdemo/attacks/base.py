"""Threat model, result type and the shared attack loop (torchattacks style).

Threat model: L-infinity on pixels in [0, 1]. An attack returns ``x_adv`` with
``|x_adv - x| <= eps`` elementwise and ``x_adv`` in [0, 1], on the 8-bit grid (every value is
``k / 255``): what a user downloads is a PNG, so the bound must hold *after* quantisation.
:func:`quantize_project` rounds to the grid and re-projects in integer levels, so that for an
8-bit input the bound holds exactly in the PNG's integers (|k_adv - k| <= floor(255 eps)).

Every attack is a small subclass of :class:`Attack` that defines how to *prepare* (clean
features, prompts, key channels...) and which *loss* to maximise (one value per image);
:meth:`Attack.forward` runs the loop: random start, one encoder forward + backward per step, a
noise-generator update (``generators.py``, ``apgd.py``), projection, progress callback and
cancellation check. It returns, per image, the *best* iterate (the highest loss seen, over all
steps and all ``restarts`` random starts), not the last one (Croce & Hein 2020; Carlini et al. 2019).

Batches: a B x 3 x H x W batch is one encoder forward + backward per step, and every image is
attacked on its own: its loss is its own value (the B values are summed, so gradients do not mix),
its best iterate, step size and checkpoints are its own, and with one seed per image
(``seed=[s_1, ..., s_B]``) its random draws (start, restarts, sampled prompts) come from its own
generator. An image then gets the perturbation it gets alone with its seed, whatever batch it is
crafted in, as far as the model's forward pass gives each image the same bits in a batch as alone
(true of the shipped models on the CPU; a backend that picks another convolution or matmul
algorithm for another batch size changes the last bits, and a sign step can turn such a difference
into a different pixel).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from samdemo.attacks.generators import NoiseGenerator, make_generator, project, segpgd_weights
from samdemo.engine import SegmentEngine
from samdemo.errors import AttackCancelled
from samdemo.prompts import Prompt

EPS_MAX_255 = 32  # the L-inf threat model, in 1/255 units: every interface takes epsilon in these units
EPS_MAX = EPS_MAX_255 / 255  # ... and the attacks in pixel units ([0, 1] images)
DEFAULT_EPS = 8 / 255
DEFAULT_STEPS = 10
MAX_STEPS = 1000
MAX_RESTARTS = 100

ProgressFn = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def validate_eps(eps) -> float:
    """``eps`` in [0, 1] pixel units, 0 <= eps <= 32/255; raises ValueError with a clear message."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise ValueError(f"eps must be a number in [0, 32/255] (pixel units in [0, 1]); got {eps!r}.")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0 or eps > EPS_MAX + 1e-12:
        hint = f" Did you mean {eps:g}/255 = {eps / 255:.4f}?" if 1 <= eps <= 32 else ""
        raise ValueError(f"eps must be between 0 and 32/255 = {EPS_MAX:.4f} (pixel units in [0, 1]); "
                         f"got {eps:g}.{hint}")
    return min(eps, EPS_MAX)


def eps_from_255(value) -> float:
    """An epsilon given in 1/255 units (CLI, app) -> pixel units, checked against the threat model."""
    try:
        eps255 = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"epsilon is in 1/255 units (e.g. 8); got {value!r}.") from None
    if not math.isfinite(eps255) or not 0 <= eps255 <= EPS_MAX_255:
        raise ValueError(f"epsilon is in 1/255 units and must be between 0 and {EPS_MAX_255}; got {eps255:g}.")
    return validate_eps(min(eps255 / 255, EPS_MAX))


def validate_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= MAX_STEPS:
        raise ValueError(f"steps must be an integer between 1 and {MAX_STEPS}; got {steps!r}.")
    return int(steps)


def validate_restarts(restarts) -> int:
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) \
            or not 1 <= int(restarts) <= MAX_RESTARTS:
        raise ValueError(f"restarts must be an integer between 1 and {MAX_RESTARTS}; got {restarts!r}.")
    return int(restarts)


def validate_step_size(step_size, eps: float, steps: int) -> float:
    """Default 2.5 * eps / steps (Madry et al. 2018): the sign steps can travel 2.5 eps in all, i.e.
    cross the whole 2-eps-wide box from a random start on one face to the opposite face, with
    slack for the steps that projection wastes."""
    if step_size is None:
        return 2.5 * eps / steps
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(step_size)) or float(step_size) <= 0 or float(step_size) > 1:
        raise ValueError(f"step_size must be a number in (0, 1] (pixel units); got {step_size!r}.")
    return float(step_size)


def validate_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a B x 3 x H x W tensor in [0, 1]; got {shape}.")
    images = images.detach().float()
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be finite and in [0, 1] (divide uint8 images by 255).")
    return images


def as_generator(seed, device: torch.device | str = "cpu") -> torch.Generator:
    """``seed``: a torch.Generator (used as is, its state advances), an int (a fresh generator per
    call, so the attack is reproducible bit for bit) or None (nondeterministic)."""
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        generator.manual_seed(int(seed))
    else:
        raise ValueError(f"seed must be an int, a torch.Generator or None; got {seed!r}.")
    return generator


def per_image_generators(seed, batch: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """``batch`` random streams, one per image. ``seed``: one seed (int, torch.Generator or None, see
    :func:`as_generator`) is one stream the images share, drawn from in image order; a list or tuple of
    ``batch`` seeds gives every image its own stream, so that its draws do not depend on the other images."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"seed: one per image is {batch} seeds; got {len(seed)}.")
        return [as_generator(s, device) for s in seed]
    return [as_generator(seed, device)] * batch


# ---------------------------------------------------------------------------------------------
# quantisation
# ---------------------------------------------------------------------------------------------
LEVEL_TOLERANCE = 2e-5  # in 8-bit levels: absorbs float32's representation error of k/255 (< 8e-6 levels)


def quantize_project(adv: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Round ``adv`` to the 8-bit grid (k/255) inside ``[clean - eps, clean + eps] ∩ [0, 1]``.

    Works in integer levels, in float64: the rounded level q is clamped to
    ``[ceil(255 (x - eps) - tol), floor(255 (x + eps) + tol)] ∩ [0, 255]`` with tol = 2e-5 levels.
    For an 8-bit input x = k/255 this is *exactly* ``|q - k| <= floor(255 eps)``: the bound holds
    in the PNG's integers. In float, ``|adv - x| <= eps`` then holds up to float32's representation
    error of k/255 (< 2e-7), far below one level (3.9e-3). Where the box holds no grid value
    (only possible when eps < 1/255 and x is not 8-bit) the clean value is kept. Returns float32.
    """
    clean64 = clean.detach().double()
    q = torch.round(adv.detach().double().clamp(0, 1) * 255)
    q_lo = torch.ceil((clean64 - eps) * 255 - LEVEL_TOLERANCE).clamp(0, 255)
    q_hi = torch.floor((clean64 + eps) * 255 + LEVEL_TOLERANCE).clamp(0, 255)
    out = (torch.minimum(torch.maximum(q, q_lo), q_hi) / 255).float()
    return torch.where(q_lo > q_hi, clean.detach().float(), out)


# ---------------------------------------------------------------------------------------------
# results and losses shared by the attacks
# ---------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """adv_images: B x 3 x H x W float32, every value k/255 and within eps of the input.
    perturbation: adv_images - images. losses: the objective the attack maximises, at each
    step's iterate, summed over the batch (minus the BCE for mask losses, so those are negative).
    seconds: wall time of forward. info: attack-specific details (key channels, pool sizes...)."""

    adv_images: torch.Tensor
    perturbation: torch.Tensor
    losses: list[float]
    seconds: float
    info: dict = field(default_factory=dict)

    def to_uint8(self, index: int = 0) -> np.ndarray:
        """Image ``index`` as H x W x 3 uint8 (exact: the values are already on the 8-bit grid)."""
        return (self.adv_images[index] * 255).round().byte().permute(1, 2, 0).cpu().numpy()

    @property
    def linf(self) -> float:
        return float(self.perturbation.abs().max()) if self.perturbation.numel() else 0.0


@dataclass
class StepInfo:
    """What a loss needs to know about the current step: t in 1..T, and whether the noise
    generator asks for SegPGD pixel weighting of mask losses."""

    t: int
    total: int
    pixel_weighting: bool = False


def background_bce(logits: torch.Tensor, step: StepInfo | None = None) -> torch.Tensor:
    """BCE of mask logits against an empty mask, mean over all but the first dim -> P values.
    Attacks that push masks to background *minimise* it (they maximise its negative).

    BCE(l, 0) = softplus(l): its gradient sigmoid(l) vanishes on pixels already pushed to
    background, so the budget goes to pixels still segmented (MSE towards -10 would keep spending
    it on pixels that are already background). With SegPGD weighting, pixels not yet fooled
    (logit > 0) get weight 1 - lambda(t), fooled ones lambda(t).
    """
    loss = F.softplus(logits)
    if step is not None and step.pixel_weighting:
        loss = loss * segpgd_weights(logits.detach() <= 0, step.t, step.total)
    return loss.flatten(1).mean(1)


def feature_distance(adv: torch.Tensor, clean: torch.Tensor, distance: str = "mse") -> torch.Tensor:
    """Distance between B x C x h x w feature maps -> B values (to maximise).

    mse: mean squared difference relative to the clean map's spatial variance, i.e. the mean
    square of ``clean`` minus its per-channel spatial mean. Scale-free (several maps can be
    summed, and 1.0 means "moved as much as the features vary across the image"); not relative
    to the raw energy, which in SAM's embeddings is dominated by an image-independent offset.
    cosine: mean over positions of 1 - cos(adv, clean) along the channels.
    """
    if distance == "mse":
        centred = clean - clean.mean(dim=(-2, -1), keepdim=True)
        spread = centred.square().flatten(1).mean(1).clamp_min(1e-12)
        return (adv - clean).square().flatten(1).mean(1) / spread
    if distance == "cosine":
        return (1 - F.cosine_similarity(adv, clean, dim=1, eps=1e-8)).flatten(1).mean(1)
    raise ValueError(f"distance must be 'mse' or 'cosine'; got {distance!r}.")


def per_image_prompts(prompts, batch: int) -> list[list[Prompt]]:
    """A list of Prompt (for every image of the batch) or a list of B lists -> B lists."""
    if prompts is None:
        raise ValueError("This attack needs the user's prompts: pass prompts=[Prompt, ...].")
    if isinstance(prompts, Prompt):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("This attack needs at least one prompt.")
    if all(isinstance(p, Prompt) for p in prompts):
        return [prompts] * batch
    if len(prompts) != batch or not all(isinstance(group, (list, tuple)) and group for group in prompts):
        raise ValueError(f"prompts must be a list of Prompt or one non-empty list per image ({batch}).")
    return [list(group) for group in prompts]


# ---------------------------------------------------------------------------------------------
# the attack loop
# ---------------------------------------------------------------------------------------------
class Attack:
    """Base class: ``Attack(engine, eps, steps, step_size, generator, random_start, seed, progress,
    cancel, restarts)``.

    ``forward(images, prompts=None) -> AttackResult`` (``attack(images)`` works too).
    ``progress(t, T)`` is called after each step (T = steps x restarts); ``cancel`` (a
    threading.Event) is checked before each step and raises :class:`AttackCancelled`. Subclasses
    define :meth:`prepare` (once per call, no gradient to the pixels) and :meth:`loss` (B values to
    *maximise*, one per image: their sum is differentiated, so every image gets its own gradient,
    and the per-image values choose each image's best iterate). ``restarts``: independent random
    starts (the first one at x itself when ``random_start`` is False); the best iterate over all of
    them is returned. ``seed``: an int, a torch.Generator or None for the whole batch, or a list of
    them, one per image (:func:`per_image_generators`); ``prepare`` and ``loss`` get the B
    generators as ``rngs`` and draw image i's randomness from ``rngs[i]`` only.
    """

    name = "base"
    uses_prompts = False  # True: crafted with the user's prompts (prompt-specific)

    def __init__(self, engine: SegmentEngine, eps: float = DEFAULT_EPS, steps: int = DEFAULT_STEPS,
                 step_size: float | None = None, generator: str | NoiseGenerator = "pgd",
                 random_start: bool = True, seed: int | torch.Generator | None = None,
                 progress: ProgressFn | None = None, cancel: threading.Event | None = None, restarts: int = 1):
        if not isinstance(engine, SegmentEngine):
            raise ValueError(f"engine must be a SegmentEngine; got {type(engine).__name__}.")
        self.engine = engine
        self.eps = validate_eps(eps)
        self.steps = validate_steps(steps)
        self.generator = make_generator(generator)
        self.step_size = (self.generator.default_step_size(self.eps, self.steps) if step_size is None
                          else validate_step_size(step_size, self.eps, self.steps))
        self.restarts = validate_restarts(restarts)
        self.random_start = bool(random_start)
        for one in seed if isinstance(seed, (list, tuple)) else [seed]:
            if one is not None and not isinstance(one, torch.Generator):
                as_generator(one)  # validate now rather than at the first forward
        self.seed = seed
        self.progress = progress
        self.cancel = cancel

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(engine={self.engine.name!r}, eps={self.eps * 255:g}/255, steps={self.steps}, "
                f"step_size={self.step_size * 255:.3g}/255, generator={self.generator.name!r}, "
                f"random_start={self.random_start}, restarts={self.restarts})")

    # -- to override ---------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor, prompts, rngs: list[torch.Generator]) -> dict:
        """State of the B x 3 x H x W clean ``images`` for :meth:`loss` (no gradient); ``rngs``: one per image."""
        return {}

    def loss(self, adv: torch.Tensor, state: dict, step: StepInfo, rngs: list[torch.Generator]) -> torch.Tensor:
        """B values to maximise, one per image of ``adv``; value i depends on image i (and ``rngs[i]``) only."""
        raise NotImplementedError

    # -- the loop --------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, prompts=None) -> AttackResult:
        return self.forward(images, prompts)

    def schedule(self) -> tuple[int, float, bool]:
        """(steps, step size, random start) actually run per restart: FGSM is one step of size eps from x."""
        if self.generator.single_step:
            return 1, self.eps, self.random_start
        return self.steps, self.step_size, self.random_start

    def _per_image_loss(self, adv: torch.Tensor, state: dict, step: StepInfo,
                        rngs: list[torch.Generator]) -> torch.Tensor:
        loss = self.loss(adv, state, step, rngs)
        if loss.ndim != 1 or len(loss) != len(adv):
            raise RuntimeError(f"{type(self).__name__}.loss must return one value per image "
                               f"({len(adv)}); got shape {tuple(loss.shape)}.")
        return loss

    def forward(self, images: torch.Tensor, prompts=None) -> AttackResult:
        start = time.perf_counter()
        source_device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        x = validate_images(images).to(self.engine.device)
        rngs = per_image_generators(self.seed, len(x), "cpu")
        steps, step_size, random_start = self.schedule()
        total = steps * self.restarts
        self._check_cancel(0, total)
        with torch.no_grad():
            state = self.prepare(x, prompts, rngs)
        best_delta = torch.zeros_like(x)
        best_loss = torch.full((len(x),), -math.inf, device=x.device)
        best_step = torch.zeros(len(x), dtype=torch.long)
        losses: list[float] = []

        def keep_best(delta: torch.Tensor, loss: torch.Tensor, step_index: int) -> None:
            nonlocal best_loss
            better = loss.detach() > best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best_delta[better] = delta[better]
            best_step[better.cpu()] = step_index

        for restart in range(self.restarts):
            if (random_start or restart > 0) and self.eps > 0:
                noise = torch.cat([torch.rand((1, *x.shape[1:]), generator=g, dtype=torch.float32)
                                   for g in rngs]).to(x.device)
                delta = project((noise * 2 - 1) * self.eps, x, self.eps)
            else:
                delta = torch.zeros_like(x)
            update = self.generator.start(x, self.eps, step_size, steps)
            for t in range(1, steps + 1):
                done = restart * steps + t - 1
                self._check_cancel(done, total)
                adv = (x + delta).detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = self._per_image_loss(adv, state, StepInfo(t, steps, self.generator.pixel_weighting), rngs)
                    (grad,) = torch.autograd.grad(loss.sum(), adv)
                losses.append(float(loss.detach().sum()))
                keep_best(delta, loss, done)  # every point of the ball is a candidate, the start too
                delta = project(update.step(delta, grad.detach(), t, loss.detach()), x, self.eps)
                if self.progress is not None:
                    self.progress(done + 1, total)
            with torch.no_grad():  # the last iterate has not been scored yet
                keep_best(delta, self._per_image_loss(x + delta, state, StepInfo(steps, steps,
                                                                                 self.generator.pixel_weighting), rngs),
                          restart * steps + steps)
        adv_images = quantize_project(x + best_delta, x, self.eps)
        info = {"attack": self.name, "generator": self.generator.name, "steps_run": total,
                "step_size": step_size, "random_start": random_start, "restarts": self.restarts,
                "best_loss": best_loss.tolist(), "best_step": best_step.tolist()} | state.get("info", {})
        return AttackResult(adv_images.to(source_device), (adv_images - x).to(source_device), losses,
                            time.perf_counter() - start, info)

    def _check_cancel(self, done: int, total: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise AttackCancelled(f"{self.name} attack cancelled after {done} of {total} steps.")
