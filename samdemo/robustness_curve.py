"""Robustness curve of one image: mIoU of the original and the robust model against epsilon.

For each epsilon (in 1/255 units, ``CURVE_EPS255`` by default) the attack of one
:class:`samdemo.pipeline.AttackRequest` (its ``eps255`` replaced) is crafted once on each *attacked*
model through :func:`samdemo.pipeline.run_attack`, and every *evaluated* model segments the
adversarial image with the same prompts:

* crafted on the original model: the original model is attacked white-box, the robust model
  sees a **transfer** attack;
* crafted on the robust model: the robust model is attacked **adaptively** (the attacker knows
  the defence), the original model sees a transfer from it.

mIoU is the mean over the P prompts of the IoU of each predicted mask (H x W, original image
frame) against a reference: the painted ground truth (H x W) when given, else the original
model's clean mask of the same prompt (P x H x W, as in the app's attack table). Epsilon 0 is the
clean image and costs no attack. Clean embeddings come from each engine's embedding cache (one
per model and image).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from samdemo import distributed
from samdemo.attacks.base import eps_from_255
from samdemo.engine import SegmentEngine
from samdemo.errors import AttackCancelled
from samdemo.metrics import batch_iou
from samdemo.pipeline import AttackRequest, run_attack
from samdemo.prompts import Prompt

CURVE_EPS255 = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
ORIGINAL, ROBUST = "original", "robust"
DEFAULT_CURVE_REQUEST = AttackRequest(attack="mask", steps=10)

CurveProgressFn = Callable[[int, int], None]  # (attack steps done, attack steps in all)


@dataclass
class RobustnessCurve:
    """mIoU per (attacked model, evaluated model) pair over ``eps255``.

    eps255: E epsilons in 1/255 units, ascending. miou: ``{(attacked, evaluated): E floats}`` with
    attacked, evaluated in {"original", "robust"} (only "original" when no robust model is given).
    reference: "ground truth" or "original clean mask". request: the attack (its eps255 is each
    point's). seconds: wall time of the whole curve.
    """

    eps255: list[float]
    miou: dict[tuple[str, str], list[float]]
    reference: str
    request: AttackRequest
    seconds: float
    settings: dict = field(default_factory=dict)

    @property
    def attack(self) -> str:
        return self.request.attack

    @property
    def steps(self) -> int:
        return self.request.steps

    def series(self, attacked: str, evaluated: str) -> list[float]:
        return self.miou[(attacked, evaluated)]

    @staticmethod
    def label(attacked: str, evaluated: str) -> str:
        """How a series reads in a legend: white-box, transfer or adaptive."""
        if attacked == evaluated:
            return f"{evaluated} model, {'adaptive' if evaluated == ROBUST else 'white-box'}"
        return f"{evaluated} model, transfer from {attacked}"

    def rows(self) -> list[list]:
        """Table rows [attacked, evaluated, eps255, mIoU], one per point, for CSV or a dataframe."""
        return [[attacked, evaluated, eps, round(value, 4)]
                for (attacked, evaluated), values in self.miou.items() for eps, value in zip(self.eps255, values)]


def check_eps_list(eps255: Sequence[float]) -> list[float]:
    """Epsilons in 1/255 units -> sorted, unique, each within the threat model (ValueError otherwise)."""
    for value in eps255:
        eps_from_255(value)
    values = sorted({float(e) for e in eps255})
    if not values:
        raise ValueError("The robustness curve needs at least one epsilon.")
    return values


def robustness_curve(original: SegmentEngine, image: np.ndarray, prompts: Sequence[Prompt],
                     request: AttackRequest = DEFAULT_CURVE_REQUEST, robust: SegmentEngine | None = None,
                     ground_truth: np.ndarray | None = None, eps255: Sequence[float] = CURVE_EPS255,
                     progress: CurveProgressFn | None = None,
                     cancel: threading.Event | None = None) -> RobustnessCurve:
    """The curve of one H x W x 3 uint8 ``image`` and its ``prompts`` (original image frame).

    ``request``: the attack, generator, steps and seed of every point (``eps255`` replaced by each
    of ``eps255``). ``ground_truth``: H x W bool, the one object every prompt points at (else each
    prompt's reference is the original model's clean mask). ``progress`` is called after every
    attack step with (done, total) over the whole curve; ``cancel`` stops it (within one step) with
    :class:`samdemo.errors.AttackCancelled`.
    """
    start = time.perf_counter()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("The robustness curve needs at least one prompt.")
    for prompt in prompts:
        prompt.validate(image.shape[:2])
    eps_values = check_eps_list(eps255)
    engines = {ORIGINAL: original} | ({ROBUST: robust} if robust is not None else {})

    clean = {name: engine.predict(image, prompts).masks.cpu() for name, engine in engines.items()}
    if ground_truth is not None:
        gt = np.asarray(ground_truth, dtype=bool)
        if gt.shape != tuple(image.shape[:2]):
            raise ValueError(f"The ground truth is {gt.shape}, the image {image.shape[:2]}.")
        reference, reference_name = np.array(np.broadcast_to(gt, clean[ORIGINAL].shape)), "ground truth"
    else:
        reference, reference_name = clean[ORIGINAL].numpy(), "original clean mask"
    reference_t = torch.from_numpy(reference)

    total = sum(e > 0 for e in eps_values) * len(engines) * request.steps
    done = 0

    def step_progress(t: int, _steps: int) -> None:
        if progress is not None:
            progress(done + t, total)

    miou = {(a, e): [] for a in engines for e in engines}
    for eps in eps_values:
        for attacked in engines:
            if eps == 0:
                for evaluated in engines:
                    miou[attacked, evaluated].append(float(batch_iou(clean[evaluated], reference_t).mean()))
                continue
            if cancel is not None and cancel.is_set():
                raise AttackCancelled(f"Robustness curve cancelled after {done} of {total} steps.")
            outcome = run_attack(request.with_(eps255=eps), engines, image, prompts, target=attacked,
                                 progress=step_progress, cancel=cancel)
            done += request.steps
            for evaluated in engines:
                miou[attacked, evaluated].append(float(outcome.iou(evaluated, "adversarial", reference).mean()))
    settings = {"attack": request.attack, "steps": request.steps, "generator": request.generator,
                "seed": request.seed, "eps255": eps_values, "prompts": len(prompts)}
    return RobustnessCurve(eps_values, miou, reference_name, request, time.perf_counter() - start, settings)


# ---------------------------------------------------------------------------------------------
# python -m samdemo curve
# ---------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    """``python -m samdemo curve``: the robustness curve of one image, as a PNG figure and a CSV."""
    from pathlib import Path

    from samdemo.attacks import ATTACKS, GENERATORS
    from samdemo.build import DEFAULT_MODEL

    parser.add_argument("--image", type=Path, required=True, help="input image (PNG/JPEG, RGB)")
    parser.add_argument("--out", type=Path, required=True, help="figure, .png; the table goes to the same name .csv")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--adapter", type=Path, default=None,
                        help="adapter folder of the robust model (default checkpoints/<model>-adapter when present)")
    parser.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"))
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"))
    parser.add_argument("--eps", type=float, nargs="+", default=list(CURVE_EPS255), help="1/255 units")
    parser.add_argument("--attack", default="mask", choices=list(ATTACKS))
    parser.add_argument("--generator", default="pgd", choices=list(GENERATORS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    distributed.add_device_argument(parser)


def run(args) -> int:
    import csv
    import sys

    from samdemo.attacks.cli import read_user_image, user_prompts
    from samdemo.build import CHECKPOINT_DIR
    from samdemo.factory import load_engine, robust_copy
    from samdemo.plots import robustness_curve_plot
    from samdemo.prompts import point_prompt

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file; got {args.out.name!r}.")
    request = AttackRequest(attack=args.attack, generator=args.generator, steps=args.steps, seed=args.seed)
    image, shown_hw = read_user_image(args.image)
    h, w = image.shape[:2]
    prompt = user_prompts(args, shown_hw, w / shown_hw[1]) or point_prompt(w / 2, h / 2)
    original = load_engine(args.model, device=args.device, frozen=True)
    folder = args.adapter or CHECKPOINT_DIR / f"{args.model}-adapter"
    robust = None
    if folder.is_dir():
        robust, _ = robust_copy(original, folder)
    elif args.adapter is not None:
        raise FileNotFoundError(f"adapter folder {folder} does not exist.")
    curve = robustness_curve(original, image, [prompt], request, robust=robust, eps255=args.eps,
                             progress=lambda done, total: print(f"\rstep {done}/{total}", end="", file=sys.stderr))
    print(file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    robustness_curve_plot(curve).savefig(args.out, dpi=120)
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        csv.writer(handle).writerows([["attacked", "evaluated", "eps255", "miou"], *curve.rows()])
    for (attacked, evaluated), values in curve.miou.items():
        print(f"{curve.label(attacked, evaluated):>40}: " + "  ".join(f"{v:.3f}" for v in values))
    print(f"eps /255: {curve.eps255}; mIoU vs {curve.reference}; {curve.seconds:.1f} s -> {args.out}")
    return 0
