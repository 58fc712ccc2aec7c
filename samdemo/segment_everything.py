"""SAM's "segment everything" through our engine, so that an attacked image is segmented the same way.

``segment_anything.SamAutomaticMaskGenerator`` does the work: a grid of point prompts, filtering
by predicted IoU and stability, box NMS, small-region clean-up. It asks a ``SamPredictor`` for
masks; :class:`EnginePredictor` answers in its place through :meth:`SegmentEngine.embed_image`
and :meth:`SegmentEngine.decode`, so the same algorithm runs on SAM and SAM 2 models, on the
embedded ones, on a model with an adapter, and on any image (clean or adversarial) with the
engine's embedding cache.

:func:`everything_under_attack` crafts one perturbation through :func:`samdemo.pipeline.craft`
(the cross-prompt attack is the natural one here: it needs no prompt) and segments the clean and the
adversarial image with every engine.

Frames: images are H x W x 3 uint8; points and masks are in the original H x W frame (the
engine maps them to the model's input, so the predictor's coordinate transform is the identity).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from samdemo.engine import SegmentEngine, image_to_tensor, tensor_to_image
from samdemo.errors import AttackCancelled
from samdemo.pipeline import AttackRequest, ProgressFn, craft
from samdemo.prompts import Prompt

DEFAULT_POINTS_PER_SIDE = 16  # 256 prompts: a few seconds on 2 CPU cores at 256 px
# The embedded models' IoU head and masks are less confident than Meta's: with SAM's ViT-H
# thresholds (0.88, 0.95) they keep no mask; these keep 7-10 masks on a held-out scene.
EMBEDDED_MODEL_THRESHOLDS = {"pred_iou_thresh": 0.3, "stability_score_thresh": 0.6}
SURVIVAL_IOU = 0.5  # a clean mask survives the attack if an adversarial mask overlaps it this much


class EnginePredictor:
    """The part of ``segment_anything.SamPredictor`` that ``SamAutomaticMaskGenerator`` calls:
    ``set_image``, ``reset_image``, ``transform.apply_coords``, ``predict_torch``, ``device`` and
    ``model.mask_threshold``, backed by a :class:`SegmentEngine` (no gradient)."""

    def __init__(self, engine: SegmentEngine):
        self.engine = engine
        self.model = _MaskThreshold()  # logits > 0 are foreground, as in the engine
        self.transform = _OriginalFrame()
        self.features = None

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an H x W x 3 uint8 RGB image (through the engine's cache)."""
        if image_format != "RGB":
            raise ValueError("EnginePredictor takes RGB images.")
        self.features = self.engine.embed_image(np.ascontiguousarray(image))

    def reset_image(self) -> None:
        self.features = None

    def predict_torch(self, point_coords: torch.Tensor, point_labels: torch.Tensor, boxes=None, mask_input=None,
                      multimask_output: bool = True, return_logits: bool = False):
        """B x N x 2 points (original frame) and B x N labels -> (B x M x H x W masks or logits,
        B x M predicted IoU, B x M x 4h x 4w low-resolution logits); M = 3 with
        ``multimask_output`` (SAM's tokens 1-3), else 1 (the token the engine's rule picks)."""
        if self.features is None:
            raise RuntimeError("set_image must be called before predict_torch.")
        if boxes is not None or mask_input is not None:
            raise ValueError("EnginePredictor answers point prompts only (what the mask generator sends).")
        coords, labels = point_coords.cpu().numpy(), point_labels.cpu().numpy()
        prompts = [Prompt(points=c.astype(np.float32), labels=lab.astype(np.int64)) for c, lab in zip(coords, labels)]
        with torch.no_grad():
            prediction = self.engine.decode(self.features, prompts, validate=False, full_resolution=False)
        if multimask_output:
            low_res, iou = prediction.low_res_all[:, 1:], prediction.iou_all[:, 1:]
        else:
            low_res, iou = prediction.low_res_logits, prediction.iou_pred[:, None]
        logits = self.engine.postprocess(low_res, self.features.orig_hw, self.features.input_hw)
        return (logits if return_logits else logits > 0), iou, low_res


class _MaskThreshold:
    mask_threshold = 0.0


class _OriginalFrame:
    """The engine takes prompts in the original frame: coordinates pass unchanged."""

    @staticmethod
    def apply_coords(coords: np.ndarray, original_size) -> np.ndarray:
        return coords


class _InputSizeOnly:
    """What ``SamAutomaticMaskGenerator.__init__`` reads of its model (to build a ``SamPredictor``
    that :class:`EngineMaskGenerator` then replaces)."""

    def __init__(self, image_size: int):
        self.image_encoder = type("ImageEncoder", (), {"img_size": image_size})()


class EngineMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` over a :class:`SegmentEngine`; ``settings`` are its keyword
    arguments, over :func:`default_settings`. ``generate(image)`` returns its records, each with
    an H x W bool ``segmentation``."""

    def __init__(self, engine: SegmentEngine, **settings):
        settings = default_settings(engine) | settings
        super().__init__(_InputSizeOnly(engine.image_size), **settings)
        self.predictor = EnginePredictor(engine)


def default_settings(engine: SegmentEngine) -> dict:
    """Generator settings for ``engine``: 16 x 16 points; SAM's own thresholds for Meta's models,
    :data:`EMBEDDED_MODEL_THRESHOLDS` for the embedded ones."""
    from samdemo.build import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(engine.name)
    embedded = spec is not None and spec.hub is None
    return {"points_per_side": DEFAULT_POINTS_PER_SIDE} | (EMBEDDED_MODEL_THRESHOLDS if embedded else {})


def segment_everything(engine: SegmentEngine, image: np.ndarray, **settings) -> np.ndarray:
    """All masks of an H x W x 3 uint8 image -> K x H x W bool, largest first."""
    records = EngineMaskGenerator(engine, **settings).generate(image)
    records.sort(key=lambda record: record["area"], reverse=True)
    if not records:
        return np.zeros((0, *image.shape[:2]), bool)
    return np.stack([record["segmentation"] for record in records]).astype(bool)


def surviving_masks(clean: np.ndarray, adversarial: np.ndarray, threshold: float = SURVIVAL_IOU) -> np.ndarray:
    """K bools: clean mask k (of K x H x W) survives when some adversarial mask (of L x H x W)
    overlaps it with IoU >= ``threshold``. With threshold >= 0.5 a mask can match at most one
    mask of a set of disjoint masks, so best-match counting does not double count."""
    if len(clean) == 0:
        return np.zeros(0, bool)
    if len(adversarial) == 0:
        return np.zeros(len(clean), bool)
    a = torch.as_tensor(clean).flatten(1).float()
    b = torch.as_tensor(adversarial).flatten(1).float()
    inter = a @ b.T  # K x L pixel counts
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    best = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).max(dim=1).values
    return (best >= threshold).numpy()


@dataclass
class EverythingComparison:
    """Masks of one model on the clean and the adversarial image (K x H x W and L x H x W bool)
    and which clean masks survive (K bools)."""

    clean: np.ndarray
    adversarial: np.ndarray
    survived: np.ndarray

    @property
    def summary(self) -> str:
        return f"{len(self.clean)} masks clean, {len(self.adversarial)} attacked, {int(self.survived.sum())} survive"


def compare_everything(engine: SegmentEngine, clean_image: np.ndarray, adversarial_image: np.ndarray,
                       **settings) -> EverythingComparison:
    """Segment both H x W x 3 uint8 images with the same generator settings and match the masks."""
    clean = segment_everything(engine, clean_image, **settings)
    adversarial = segment_everything(engine, adversarial_image, **settings)
    return EverythingComparison(clean, adversarial, surviving_masks(clean, adversarial))


@dataclass
class EverythingUnderAttack:
    """:func:`everything_under_attack`'s result: the H x W x 3 uint8 ``adversarial`` image, one
    :class:`EverythingComparison` per engine name, and ``timings`` in seconds (``attack``, ``segment``)."""

    request: AttackRequest
    target: str
    adversarial: np.ndarray
    comparisons: dict[str, EverythingComparison]
    timings: dict[str, float]


def everything_under_attack(request: AttackRequest, engines: Mapping[str, SegmentEngine], image: np.ndarray,
                            target: str | None = None, prompts: Sequence[Prompt] | None = None,
                            progress: ProgressFn | None = None, stage: Callable[[str, int, int], None] | None = None,
                            cancel: threading.Event | None = None, **settings) -> EverythingUnderAttack:
    """Craft ``request`` on ``engines[target]`` (default the first) against the H x W x 3 uint8 ``image``,
    then segment everything on the clean and the adversarial image with every engine.

    A prompt-specific attack needs ``prompts`` (original frame); a prompt-free one ignores them.
    ``progress(t, T)`` follows the attack's steps, ``stage(what, k, K)`` the K segmentations; ``cancel``
    is checked by the attack at every step and before every segmentation (:class:`AttackCancelled`)."""
    target = target or next(iter(engines))
    if request.uses_prompts and not prompts:
        raise ValueError(f"The {request.attack} attack is crafted for a prompt: give one, or choose a prompt-free "
                         "attack (cross-prompt).")
    crafter = engines[target]
    t0 = time.perf_counter()
    result = craft(request, crafter, image_to_tensor(image).to(crafter.device),
                   [list(prompts)] if prompts else None, progress, cancel)
    adversarial = tensor_to_image(result.adv_images)
    t_attack = time.perf_counter()
    comparisons, total = {}, 2 * len(engines)
    for k, (name, engine) in enumerate(engines.items()):
        masks = {}
        for j, (input_name, shown) in enumerate((("clean", image), ("adversarial", adversarial))):
            if cancel is not None and cancel.is_set():
                raise AttackCancelled("Segment everything cancelled.")
            if stage is not None:
                stage(f"{name} model, {input_name} image", 2 * k + j, total)
            masks[input_name] = segment_everything(engine, shown, **settings)
        comparisons[name] = EverythingComparison(masks["clean"], masks["adversarial"],
                                                 surviving_masks(masks["clean"], masks["adversarial"]))
    timings = {"attack": t_attack - t0, "segment": time.perf_counter() - t_attack}
    return EverythingUnderAttack(request, target, adversarial, comparisons, timings)
