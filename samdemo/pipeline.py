"""The one sequence every part of samdemo runs: attack, then predict clean and adversarial, then IoU.

    request = AttackRequest(attack="cross-prompt", eps255=8, steps=10, seed=0)
    outcome = run_attack(request, {"original": engine, "robust": robust_engine}, image, [prompt])
    outcome.adversarial                         # H x W x 3 uint8, within eps255/255 of ``image``
    outcome.masks["robust", "adversarial"]      # P x H x W bool, one mask per prompt
    outcome.iou("robust", "adversarial")        # P IoUs against the robust model's clean masks

* :class:`AttackRequest`: the threat model and the attack, built by keyword, epsilon in **1/255
  units** (the one unit of every interface), checked once against ``EPS_MAX_255``;
* :func:`craft`: the perturbation of a B x 3 x H x W batch in [0, 1] against one engine;
* :func:`predict_types`: the masks of several objects' point / box / mask prompts on an image;
* :func:`run_attack`: craft on one engine, predict with every engine on the clean and the
  adversarial image, with timings. The app, ``samdemo attack``, evaluate, the transfer matrix,
  train-adapter's held-out checks and the benchmarks call these; nothing here renders.

Coordinates: prompts are in the original image frame (``samdemo.prompts``).
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from samdemo.attacks import ATTACKS, GENERATORS, AttackResult
from samdemo.attacks.base import DEFAULT_STEPS, eps_from_255, validate_restarts, validate_steps
from samdemo.engine import SegmentEngine, image_to_tensor, tensor_to_image
from samdemo.metrics import batch_iou
from samdemo.prompts import Prompt

DEFAULT_ATTACK = "cross-prompt"  # the mission's attack: crafted without the user's prompt
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class AttackRequest:
    """One attack under an L-infinity threat model. ``eps255`` and ``step_size255`` are in 1/255 units
    (``eps255=8`` is 8/255 of the [0, 1] pixel range); ValueError with one clear message when invalid.

    ``restarts``: random starts, each image keeps its best iterate over all of them (AutoAttack's rule).
    ``seed``: one whole number for the batch (one random stream its images share), or a tuple of them, one
    per image: each image is then attacked as it would be alone with its seed, in a batch of any size
    (``samdemo.attacks.base``)."""

    attack: str = DEFAULT_ATTACK
    generator: str = "pgd"
    eps255: float = 8.0
    steps: int = DEFAULT_STEPS
    seed: int | tuple[int, ...] = 0
    restarts: int = 1
    step_size255: float | None = None
    random_start: bool = True
    options: Mapping[str, object] = field(default_factory=dict)  # attack-specific keyword arguments

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"Unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}.")
        if self.generator not in GENERATORS:
            raise ValueError(f"Unknown generator {self.generator!r}; choose one of {', '.join(GENERATORS)}.")
        eps_from_255(self.eps255)
        validate_steps(self.steps)
        validate_restarts(self.restarts)
        if isinstance(self.seed, (list, tuple)):
            object.__setattr__(self, "seed", tuple(self.seed))  # a list given is kept as an immutable tuple
        for seed in self.seed if isinstance(self.seed, tuple) else [self.seed]:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seed must be a whole number >= 0 (or one per image); got {self.seed!r}.")
        if self.seed == ():
            raise ValueError("seed: one per image needs at least one seed.")
        check_options(self.attack, self.options)

    @property
    def eps(self) -> float:
        """Epsilon in pixel units ([0, 1] images), what the attack classes take."""
        return eps_from_255(self.eps255)

    @property
    def uses_prompts(self) -> bool:
        """Whether the attack is crafted with the objects' prompts (prompt-specific) or without (prompt-free)."""
        return ATTACKS[self.attack].uses_prompts

    def with_(self, **changes) -> "AttackRequest":
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    def build(self, engine: SegmentEngine, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None):
        """The attack object against ``engine`` (``samdemo.attacks``)."""
        step_size = None if self.step_size255 is None else self.step_size255 / 255
        return ATTACKS[self.attack](engine, eps=self.eps, steps=self.steps, step_size=step_size,
                                    generator=self.generator, random_start=self.random_start, seed=self.seed,
                                    restarts=self.restarts, progress=progress, cancel=cancel, **dict(self.options))


def check_options(attack: str, options: Mapping[str, object]) -> None:
    """ValueError naming the first keyword of ``options`` that ``attack``'s class does not take (its keyword-only
    parameters; any keyword when it passes them on)."""
    parameters = inspect.signature(ATTACKS[attack].__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    known = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    for key in options:
        if key not in known:
            raise ValueError(f"The {attack} attack has no option {key!r}"
                             + (f"; its options: {', '.join(known)}." if known else "; it takes none."))


def parse_option(text: str) -> tuple[str, str, object]:
    """``ATTACK:KEY=VALUE`` (VALUE read as JSON when it is, else kept as text) -> (attack, key, value); ValueError
    with one clear message otherwise."""
    import json

    attack, _, assignment = text.partition(":")
    key, equals, value = assignment.partition("=")
    if not (attack and key and equals):
        raise ValueError(f"An attack option is ATTACK:KEY=VALUE (e.g. cross-prompt:grid=8); got {text!r}.")
    if attack not in ATTACKS:
        raise ValueError(f"Unknown attack {attack!r} in option {text!r}; choose one of {', '.join(ATTACKS)}.")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    check_options(attack, {key: parsed})
    return attack, key, parsed


def craft(request: AttackRequest, engine: SegmentEngine, images: torch.Tensor, prompts=None,
          progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> AttackResult:
    """Perturb a B x 3 x H x W batch in [0, 1] against ``engine``. ``prompts`` (one list of
    :class:`Prompt` per image, or one list for a single image) are used only by prompt-specific attacks.
    With one ``request.seed`` per image, image i's perturbation is the one it gets alone with seed i."""
    attack = request.build(engine, progress, cancel)
    return attack(images, prompts if attack.uses_prompts else None)


@torch.no_grad()
def predict_types(engine: SegmentEngine, image: torch.Tensor, objects: Sequence[Mapping[str, Prompt]],
                  types: Sequence[str]) -> dict[str, torch.Tensor]:
    """{type: N x H x W bool} masks predicted on a 1 x 3 x H x W image for every object's prompt of each type."""
    features = engine.embed(image)
    return {t: engine.decode(features, [o[t] for o in objects], validate=False).masks.cpu() for t in types}


@dataclass
class AttackOutcome:
    """What :func:`run_attack` measured; no rendering.

    ``masks[model, input]``: P x H x W bool, one mask per prompt (``input`` is "clean" or
    "adversarial"); ``iou_pred`` the models' own quality estimates (P); ``timings`` in seconds
    (``attack``, ``predict``, and ``steps_run``)."""

    request: AttackRequest
    target: str
    adversarial: np.ndarray
    masks: dict[tuple[str, str], np.ndarray]
    iou_pred: dict[tuple[str, str], np.ndarray]
    result: AttackResult
    timings: dict[str, float]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(model for model, _ in self.masks))

    def iou(self, model: str, input: str, reference: np.ndarray | None = None) -> np.ndarray:
        """P IoUs of ``masks[model, input]`` with ``reference`` (P x H x W or H x W; default the same
        model's clean masks)."""
        masks = self.masks[model, input]
        reference = self.masks[model, "clean"] if reference is None else np.broadcast_to(reference, masks.shape).copy()
        return batch_iou(torch.as_tensor(masks), torch.as_tensor(np.ascontiguousarray(reference))).numpy()


def run_attack(request: AttackRequest, engines: Mapping[str, SegmentEngine], image: np.ndarray,
               prompts: Sequence[Prompt], target: str | None = None, craft_prompts: Sequence[Prompt] | None = None,
               progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> AttackOutcome:
    """Craft a perturbation of the H x W x 3 uint8 ``image`` on ``engines[target]`` (default the first
    engine), then predict ``prompts`` with every engine on the clean and the adversarial image.

    A prompt-specific attack is crafted with ``craft_prompts`` (default ``prompts``); a prompt-free
    one never sees them."""
    if not prompts:
        raise ValueError("run_attack needs at least one prompt to evaluate.")
    target = target or next(iter(engines))
    crafter = engines[target]
    t0 = time.perf_counter()
    result = craft(request, crafter, image_to_tensor(image).to(crafter.device),
                   [list(craft_prompts or prompts)], progress, cancel)
    adversarial = tensor_to_image(result.adv_images)
    t_attack = time.perf_counter()
    masks, iou_pred = {}, {}
    for name, engine in engines.items():
        for input_name, shown in (("clean", image), ("adversarial", adversarial)):
            prediction = engine.predict(shown, list(prompts))
            masks[name, input_name] = prediction.masks.cpu().numpy()
            iou_pred[name, input_name] = prediction.iou_pred.float().cpu().numpy()
    timings = {"attack": t_attack - t0, "predict": time.perf_counter() - t_attack,
               "steps_run": int(result.info.get("steps_run", request.steps))}
    return AttackOutcome(request, target, adversarial, masks, iou_pred, result, timings)
