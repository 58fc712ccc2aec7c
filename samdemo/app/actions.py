"""What the app computes, on top of :mod:`samdemo.pipeline`: the clean mask of the user's prompt, an
attack compared on the original and the robust model, the transfer matrix of the user's object, the
robustness curve (:mod:`samdemo.robustness_curve`), "segment everything" under attack
(:mod:`samdemo.segment_everything`), the settings of a download bundle (:mod:`samdemo.bundle`) and
a robustness adapter trained for the session (:mod:`samdemo.train_adapter`, :class:`TrainJob`).

Each action takes one typed request (:class:`AttackJob`, built by keyword from the widgets' values and
checked with the app's own messages) and returns a typed outcome of masks, IoUs and timings; the
pictures are drawn by :mod:`samdemo.app.render`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from samdemo import limits
from samdemo.app.models import ADAPTER_TRAINED, AdapterChoice, ModelManager, RobustModel, TrainedAdapter
from samdemo.app.session import PromptState
from samdemo.engine import SegmentEngine
from samdemo.errors import PromptError, UserError
from samdemo.metrics import ATTACK_SUCCESS_IOU, mask_iou
from samdemo.pipeline import AttackRequest, run_attack as run_pipeline
from samdemo.robustness_curve import CURVE_EPS255, RobustnessCurve, robustness_curve
from samdemo.segment_everything import EverythingUnderAttack, everything_under_attack
from samdemo.train_adapter import AdapterTrainConfig

TARGET_ORIGINAL, TARGET_ROBUST = "original", "robust"
PANEL_KEYS = ("original/clean", "original/adversarial", "robust/clean", "robust/adversarial")


@dataclass(frozen=True, kw_only=True)
class AttackJob:
    """One attack as the app runs it: the model, its defence, the attack and the model it is crafted on
    (``target``: the original model, a transfer attack on the robust one; or the robust model, adaptive)."""

    model: str
    adapter: AdapterChoice
    request: AttackRequest
    target: str = TARGET_ORIGINAL

    @classmethod
    def from_widgets(cls, *, model: str, adapter_kind, repo_id, revision, attack, generator, eps255, steps, seed,
                     target, trained: TrainedAdapter | None = None) -> "AttackJob":
        """The widgets' values (or the API's) -> a checked job; :class:`UserError` naming the field otherwise.
        ``trained``: the session's trained adapter (used when ``adapter_kind`` is "trained")."""
        from samdemo.attacks import ATTACKS, GENERATORS
        from samdemo.build import attack_options

        if attack not in ATTACKS:
            raise UserError(f"Unknown attack {limits.quoted(attack)}; choose one of {', '.join(ATTACKS)}.")
        if generator not in GENERATORS:
            raise UserError(f"Unknown generator {limits.quoted(generator)}.")
        if target not in (TARGET_ORIGINAL, TARGET_ROBUST):
            raise UserError(f"Unknown target {limits.quoted(target)}.")
        request = AttackRequest(attack=attack, generator=generator, eps255=limits.check_eps255(eps255),
                                steps=limits.check_steps(steps), seed=limits.check_seed(seed),
                                options=attack_options(model, attack))
        return cls(model=model, adapter=AdapterChoice.parse(adapter_kind, repo_id, revision, trained), request=request,
                   target=target)


@dataclass
class CleanResult:
    mask: np.ndarray
    iou_pred: float
    seconds: float


def clean_prediction(engine: SegmentEngine, image: np.ndarray, prompts: PromptState) -> CleanResult:
    prompt = prompts.to_prompt()
    prompt.validate(image.shape[:2])
    t0 = time.perf_counter()
    prediction = engine.predict(image, [prompt])
    return CleanResult(prediction.masks[0].cpu().numpy(), float(prediction.iou_pred[0]), time.perf_counter() - t0)


@dataclass
class Panel:
    """One of the four results: ``model`` ("original"/"robust") on ``input`` ("clean"/"adversarial")."""

    model: str
    input: str
    mask: np.ndarray | None  # None: no robust model
    iou_ref: float | None  # IoU with the reference (ground truth if painted, else the original clean mask)

    @property
    def model_label(self) -> str:
        return f"{'Original' if self.model == 'original' else 'Robust'} model"


@dataclass
class AttackOutcome:
    job: AttackJob
    panels: dict[str, Panel]  # keyed by PANEL_KEYS
    table: list[list]  # rows in PANEL_KEYS order, columns as text.TABLE_HEADERS
    adversarial: np.ndarray
    reference: str  # what the panels' IoUs are measured against, in words
    timings: dict[str, float]
    losses: list[float]

    @property
    def ious(self) -> dict[str, float | None]:
        return {key: panel.iou_ref for key, panel in self.panels.items()}

    @property
    def target_name(self) -> str:
        return self.job.target


def _engines(manager: ModelManager, job: AttackJob) -> dict[str, SegmentEngine]:
    original = manager.engine(job.model)
    robust = manager.robust(job.model, job.adapter)
    if job.target == TARGET_ROBUST and robust is None:
        raise UserError("An adaptive attack needs a robust model: choose an adapter, or attack the original model.")
    return {"original": original} | ({"robust": robust.engine} if robust is not None else {})


def run_attack(manager: ModelManager, job: AttackJob, image: np.ndarray, prompts: PromptState,
               progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
               time_limit: float | None = None) -> AttackOutcome:
    """Craft the perturbation on the job's target model, then predict with both models on both images.

    The attack stops with :class:`samdemo.errors.TimeLimitExceeded` after ``time_limit`` seconds
    (default ``limits.ATTACK_TIME_LIMIT_S``), counted once the models are loaded."""
    prompt = prompts.to_prompt()
    prompt.validate(image.shape[:2])
    t_start = time.perf_counter()
    engines = _engines(manager, job)
    t_load = time.perf_counter()
    seconds = limits.ATTACK_TIME_LIMIT_S if time_limit is None else time_limit
    measured = run_pipeline(job.request, engines, image, [prompt], target=job.target,
                            progress=limits.with_time_limit(progress, seconds), cancel=cancel)

    gt = prompts.ground_truth
    original_clean = measured.masks["original", "clean"][0]
    reference_mask = gt if gt is not None else original_clean
    panels, table = {}, []
    for key in PANEL_KEYS:
        model_key, input_key = key.split("/")
        if model_key not in engines:
            panels[key] = Panel(model_key, input_key, None, None)
            table.append([panels[key].model_label.lower(), input_key, None, None, None, "—", None])
            continue
        mask = measured.masks[model_key, input_key][0]
        panel = panels[key] = Panel(model_key, input_key, mask, mask_iou(mask, reference_mask))
        iou_own = mask_iou(mask, measured.masks[model_key, "clean"][0])
        iou_gt = mask_iou(mask, gt) if gt is not None else None
        success = "—" if input_key == "clean" else ("yes" if iou_own < ATTACK_SUCCESS_IOU else "no")
        table.append([panel.model_label.lower(), input_key, round(mask_iou(mask, original_clean), 3),
                      round(iou_own, 3), None if iou_gt is None else round(iou_gt, 3), success,
                      round(float(measured.iou_pred[model_key, input_key][0]), 3)])
    timings = {"load": t_load - t_start, **measured.timings}
    timings["total"] = time.perf_counter() - t_start
    return AttackOutcome(job, panels, table, measured.adversarial,
                         "your ground truth" if gt is not None else "the original model's clean mask", timings,
                         [float(v) for v in measured.result.losses])


@dataclass
class TransferOutcome:
    matrix: np.ndarray  # rows x cols IoU with the clean prediction of the same prompt
    matrix_gt: np.ndarray | None  # rows x cols IoU with the painted ground truth (None without one)
    rows: list[str]
    cols: list[str]
    seconds: float


def run_transfer(manager: ModelManager, job: AttackJob, image: np.ndarray, prompts: PromptState,
                 progress: Callable[[str, int, int], None] | None = None, cancel: threading.Event | None = None,
                 time_limit: float | None = None) -> TransferOutcome:
    """The transfer matrix across prompt types (``samdemo.attacks.transfer``) of the user's object.

    Every attack is crafted on the job's target model and evaluated on that same model with the
    object's point, box and mask prompts. The object is the painted ground truth when there is one,
    else the clean mask of the user's prompt. The attacks together stop after ``time_limit`` seconds
    (default ``limits.TRANSFER_TIME_LIMIT_S``)."""
    from samdemo.attacks.transfer import transfer_matrix

    t0 = time.perf_counter()
    target = _engines(manager, job)[job.target]
    gt = prompts.ground_truth
    user_prompts = [prompts.to_prompt()] if prompts.has_prompt else None
    if gt is None and user_prompts is None:
        raise PromptError("The transfer matrix needs an object: click it (or paint its ground truth) first.")
    seconds = limits.TRANSFER_TIME_LIMIT_S if time_limit is None else time_limit
    try:
        result = transfer_matrix(target, image, gt_masks=None if gt is None else gt[None], prompts=user_prompts,
                                 request=job.request, progress=limits.with_time_limit(progress, seconds,
                                                                                       "transfer matrix"),
                                 cancel=cancel)
    except ValueError as error:
        if isinstance(error, (PromptError, UserError)):
            raise
        raise UserError(str(error)) from None
    matrix_gt = None if result.iou_vs_gt is None else np.asarray(result.iou_vs_gt, dtype=np.float64)
    return TransferOutcome(np.asarray(result.iou_vs_clean, dtype=np.float64), matrix_gt, list(result.rows),
                           list(result.cols), time.perf_counter() - t0)


@dataclass
class CurveOutcome:
    """The robustness curve of the user's object (:class:`samdemo.robustness_curve.RobustnessCurve`)."""

    job: AttackJob
    curve: RobustnessCurve
    reference: str  # what the mIoU is measured against, in words
    seconds: float


def run_curve(manager: ModelManager, job: AttackJob, image: np.ndarray, prompts: PromptState,
              eps255=CURVE_EPS255, progress: Callable[[int, int], None] | None = None,
              cancel: threading.Event | None = None, time_limit: float | None = None) -> CurveOutcome:
    """mIoU of the original and the robust model over ``eps255`` (1/255 units), the job's attack crafted
    on each model at every epsilon (transfer and adaptive); against the painted ground truth when there
    is one. ``progress(done, total)`` counts attack steps over the whole curve; it stops with
    :class:`samdemo.errors.TimeLimitExceeded` after ``time_limit`` s (default ``limits.CURVE_TIME_LIMIT_S``)."""
    prompt = prompts.to_prompt()
    prompt.validate(image.shape[:2])
    t0 = time.perf_counter()
    engines = _engines(manager, job)
    seconds = limits.CURVE_TIME_LIMIT_S if time_limit is None else time_limit
    curve = robustness_curve(engines["original"], image, [prompt], job.request, robust=engines.get("robust"),
                             ground_truth=prompts.ground_truth, eps255=eps255,
                             progress=limits.with_time_limit(progress, seconds, "robustness curve"), cancel=cancel)
    reference = "your ground truth" if prompts.ground_truth is not None else "the original model's clean mask"
    return CurveOutcome(job, curve, reference, time.perf_counter() - t0)


def run_everything(manager: ModelManager, job: AttackJob, image: np.ndarray, prompts: PromptState,
                   progress: Callable[[int, int], None] | None = None,
                   stage: Callable[[str, int, int], None] | None = None, cancel: threading.Event | None = None,
                   time_limit: float | None = None, **settings) -> EverythingUnderAttack:
    """Craft the job's attack on its target model, then "segment everything" with both models on the clean
    and the adversarial image (``settings``: the mask generator's, over ``default_settings``). A prompt-free
    attack (cross-prompt) needs no prompt; a prompt-specific one uses the user's. The attack stops after
    ``time_limit`` s (default ``limits.ATTACK_TIME_LIMIT_S``)."""
    user = [prompts.to_prompt().validate(image.shape[:2])] if prompts.has_prompt else None
    if job.request.uses_prompts and user is None:
        raise PromptError(f"The {job.request.attack} attack is crafted for your prompt: click the object first, or "
                          "choose the cross-prompt attack (it needs no prompt).")
    engines = _engines(manager, job)
    seconds = limits.ATTACK_TIME_LIMIT_S if time_limit is None else time_limit
    return everything_under_attack(job.request, engines, image, job.target, user,
                                   limits.with_time_limit(progress, seconds), stage, cancel, **settings)


def bundle_settings(job: AttackJob, prompts: PromptState) -> tuple[dict, list[str]]:
    """The job in ``python -m samdemo attack``'s option names (``samdemo.bundle.SETTINGS_KEYS``; the image
    is added by the bundle), and what the CLI cannot replay of it, in words (empty: all of it)."""
    request = job.request
    settings = {"model": job.model, "attack": request.attack, "eps": request.eps255, "steps": request.steps,
                "seed": request.seed, "generator": request.generator, "target": job.target}
    if request.step_size255 is not None:
        settings["step_size"] = request.step_size255
    adapter = job.adapter
    settings["adapter"] = {"shipped": "shipped", "hub": f"{adapter.repo_id}@{adapter.revision}".rstrip("@"),
                           "none": None, ADAPTER_TRAINED: None}[adapter.kind]
    positive = [[x, y] for x, y, label in prompts.points if label == 1]
    negative = [[x, y] for x, y, label in prompts.points if label == 0]
    settings |= {"point": positive or None, "negative_point": negative or None,
                 "box": None if prompts.box is None else list(prompts.box)}
    caveats = []
    if adapter.kind == ADAPTER_TRAINED:
        caveats.append("the robust model's adapter was trained in the app and is not in the bundle: push it to the "
                       "Hub from the app, then replay with --adapter owner/name@commit")
    if prompts.mask is not None:
        caveats.append("the painted mask prompt is not a CLI option: the replay segments without it"
                       + (", and the mask attack is crafted without it" if request.uses_prompts else ""))
    if prompts.ground_truth is not None:
        caveats.append("the painted ground truth is in masks/ground-truth.png; the CLI scores against clean masks")
    return settings, caveats


# ---------------------------------------------------------------------------------------------
# Training a robustness adapter for the session
# ---------------------------------------------------------------------------------------------
BUDGET_PAPER, BUDGET_SPREAD = "paper", "spread"
SOURCE_EXAMPLES, SOURCE_UPLOADS, SOURCE_SCENES = "examples", "uploads", "scenes"
MAX_VALUES_PER_LAYER = 64  # "spread": k largest singular values per layer (narrow layers train all they have)
# The recipe of the app's runs: samdemo.train_adapter's defaults (the shipped adapters'), with 2 images per
# step and a held-out check of 4 images (clean, and a 10-step cross-prompt attack) before and after.
APP_TRAIN_SETTINGS = dict(batch=2, eval_scenes=4, eval_attacks="cross-prompt", eval_attack_steps=10,
                          checkpoint_every=10**9)


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """One training run as the app runs it: the model, the training recipe (``config``) and where the
    images come from (``source``: the bundled examples, the uploads, or generated scenes)."""

    model: str
    config: AdapterTrainConfig
    source: str

    @classmethod
    def from_widgets(cls, *, model: str, budget, values_per_layer, steps, source) -> "TrainJob":
        """The widgets' values (or the API's) -> a checked job; :class:`UserError` naming the field otherwise.
        ``budget``: "paper" (every singular value of the family's default layers, the neck: 512 on Meta's models)
        or "spread" (the ``values_per_layer`` largest of every layer of the image encoder)."""
        if budget not in (BUDGET_PAPER, BUDGET_SPREAD):
            raise UserError(f"Unknown budget {limits.quoted(budget)}; choose {BUDGET_PAPER} or {BUDGET_SPREAD}.")
        if source not in (SOURCE_EXAMPLES, SOURCE_UPLOADS, SOURCE_SCENES):
            raise UserError(f"Unknown image source {limits.quoted(source)}; choose {SOURCE_EXAMPLES}, "
                            f"{SOURCE_UPLOADS} or {SOURCE_SCENES}.")
        steps = limits.check_train_steps(steps)
        spread = {}
        if budget == BUDGET_SPREAD:
            k = limits.whole_number(values_per_layer, "Singular values per layer", 1, MAX_VALUES_PER_LAYER)
            spread = dict(targets="image_encoder.*", svd_rank=k)
        config = AdapterTrainConfig(model=model, data=source, steps=steps, warmup=min(10, max(1, steps // 5)),
                                    eval_every=steps, **APP_TRAIN_SETTINGS, **spread)
        return cls(model=model, config=config, source=source)


@dataclass
class TrainOutcome:
    """A finished run: the session's new adapter, its robust model (already built), the held-out table
    (rows of ``metrics_table``: condition and mIoU per prompt type, original then adapted) and the log."""

    trained: TrainedAdapter
    robust: RobustModel
    table: list[dict]
    note: str
    log: dict
    seconds: float


def run_training(manager: ModelManager, job: TrainJob, images: Sequence[np.ndarray] | None, out_dir: Path,
                 progress: Callable[..., None] | None = None, cancel: threading.Event | None = None,
                 time_limit: float | None = None) -> TrainOutcome:
    """Train an SVD adapter for ``job.model`` (``samdemo.train_adapter``) on a private copy of the shared
    model, write it to ``out_dir`` and build its robust model (merged, frozen: ``samdemo.factory.robust_copy``).

    ``images``: H x W x 3 uint8 arrays (label-free: targets are the original model's clean segments), or
    None for generated scenes (ground-truth masks). ``progress(step, total, stage=text)``; ``cancel`` stops
    within a step (:class:`samdemo.errors.AttackCancelled`); past ``time_limit`` s (default
    ``limits.TRAIN_TIME_LIMIT_S``) it stops with :class:`samdemo.errors.TimeLimitExceeded`. The shared model
    is never touched: other sessions keep using it meanwhile."""
    from samdemo.engine import EmbeddingCache
    from samdemo.factory import engine_copy
    from samdemo.train_adapter import metrics_table, train_adapter

    t0 = time.perf_counter()
    base = manager.engine(job.model)
    engine = engine_copy(base, cache=EmbeddingCache(64 * 2**20))  # the adapter's tag changes at every step
    seconds = limits.TRAIN_TIME_LIMIT_S if time_limit is None else time_limit
    what = {SOURCE_EXAMPLES: "the bundled examples", SOURCE_UPLOADS: "your uploads"}.get(job.source, "")
    try:
        with tempfile.TemporaryDirectory(prefix="samdemo-train-run-") as run_dir:
            log = train_adapter(job.config, Path(run_dir), out_dir, resume=False, engine=engine, images=images,
                                images_source=what, progress=limits.with_time_limit(progress, seconds, "training"),
                                cancel=cancel)
    except ValueError as error:  # e.g. a budget that does not fit the model's layers
        if isinstance(error, UserError):
            raise
        raise UserError(str(error)) from None
    finally:
        del engine  # frees the training copy (a full model) before the robust copy is made
    evals = {e["step"]: e for e in log["eval"]}
    metrics = metrics_table(job.config, evals.get(0), evals.get(job.config.steps), log["data"], log["heldout_images"])
    config = job.config
    budget = (f"{config.svd_rank} singular values per layer" if config.svd_rank else "every singular value") + \
        f" of {len(log['layers'])} layers"
    trained = TrainedAdapter(job.model, Path(out_dir), f"{job.model}, {log['num_trainable']:,} values ({budget}), "
                                                       f"{config.steps} steps")
    robust = manager.robust(job.model, AdapterChoice(ADAPTER_TRAINED, trained=trained))
    return TrainOutcome(trained, robust, metrics["table"], metrics["note"], log, time.perf_counter() - t0)
