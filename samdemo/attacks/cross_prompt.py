"""The cross-prompt attack (Robust SAM, arXiv 2504.08906, made precise).

The perturbation is crafted *without* the user's prompt and must break SAM whichever prompt
type is used later. Once per image, on the clean image (no gradient to the pixels):

1. **Prompt pool.** A ``grid x grid`` lattice of single positive points (cell centres); the
   clean model's answers to those points are its own *segments* (kept if 0.2 %-90 % of the
   image, deduplicated greedily at IoU > 0.8 in order of predicted IoU). Boxes are the segments'
   tight boxes, mask prompts the segments themselves. Nothing comes from the user.
2. **Channel importance per prompt type** t (point, box, mask), gradient x activation on the
   clean embedding E (C x h x w):  I_t(c) = mean_{p in t, (y, x)} |dL_p/dE_c(y, x) * E_c(y, x)|,
   where L_p is the clean-mask margin of prompt p's chosen low-res mask logits z_p:
   mean of z_p over its clean foreground minus mean over its clean background. The per-prompt
   gradients come from *one* batched decoder call per type: the decoder repeats E per prompt
   before its transformer, and a pre-hook on the transformer captures that P x C x h x w input,
   whose gradient is exactly dL_p/dE for each p.
3. **Key channels** = top-k of  min_t rank(I_t)/(C-1): the channels that rank high for *every*
   prompt type (the paper's channels "shared by box and point prompts", extended to masks).

Loss, maximised by the noise generator (one encoder forward + backward per step):

    L_adv = D(E_adv[K], E_clean[K])  (+ w_hr * mean_l MSE_rel(F_l adv, F_l clean), SAM 2)
            - mix * mean_p BCE(z_p(x_adv), 0) over ``prompts_per_step`` prompts of mixed types

D is the relative MSE (default) or 1 - cosine along the key channels. SAM 2 also feeds two
high-resolution maps F_l (stride 4 and 8) straight into the decoder's upsampler, bypassing E;
they are prompt-independent too, so their relative MSE over all channels is added with weight
``high_res_weight`` (default 1). The mask term (on by default, ``mix=100``) resamples
``prompts_per_step`` = 32 prompts each step: points (a random pixel of a segment) and boxes (a
segment's box, sides jittered by up to 10 %), optionally masks; all of them go through
``engine.decode`` in one call (the engine batches prompts of one structure), so its cost grows
with the decoder only, never with extra encoder passes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from samdemo.attacks.base import (DEFAULT_EPS, DEFAULT_STEPS, Attack, StepInfo, background_bce,
                                  feature_distance)
from samdemo.engine import ImageFeatures, SegmentEngine
from samdemo.prompts import PROMPT_TYPES, Prompt, box_prompt, mask_prompt, point_prompt



# ---------------------------------------------------------------------------------------------
# prompt pool (prompt-free: from a point grid and the clean model's own segments)
# ---------------------------------------------------------------------------------------------
class PromptPool:
    """Prompts of every type for one image, from the clean model only."""

    def __init__(self, points: list[Prompt], segments: np.ndarray, hw: tuple[int, int]):
        self.hw = hw
        self.points = points
        self.segments = segments  # S x H x W bool, S >= 1
        self.boxes_xyxy = np.array([tight_box(s) for s in segments], np.float32)
        self.boxes = [box_prompt(*b) for b in self.boxes_xyxy]
        self.masks = [mask_prompt(s) for s in segments]
        self._pixels = [np.argwhere(s) for s in segments]  # (y, x) rows

    def by_type(self, kind: str) -> list[Prompt]:
        return {"point": self.points, "box": self.boxes, "mask": self.masks}[kind]

    def sample(self, n: int, rng: torch.Generator, types=PROMPT_TYPES, jitter: float = 0.1) -> list[Prompt]:
        """``n`` fresh prompts, types interleaved: a random pixel of a random segment (point), its
        box with each side moved by up to ``jitter`` x side (box), the segment itself (mask)."""
        h, w = self.hw
        count = len(self.segments)
        draws = torch.rand((n, 5), generator=rng, dtype=torch.float64).numpy()
        prompts = []
        for i in range(n):
            kind, s = types[i % len(types)], min(int(draws[i, 0] * count), count - 1)
            if kind == "point":
                pixels = self._pixels[s]
                y, x = pixels[min(int(draws[i, 1] * len(pixels)), len(pixels) - 1)]
                prompts.append(point_prompt(float(x), float(y)))
            elif kind == "box":
                x0, y0, x1, y1 = self.boxes_xyxy[s]
                bw, bh = x1 - x0, y1 - y0
                move = (draws[i, 1:5] * 2 - 1) * jitter
                x0, x1 = np.clip([x0 + move[0] * bw, x1 + move[2] * bw], 0, w - 1)
                y0, y1 = np.clip([y0 + move[1] * bh, y1 + move[3] * bh], 0, h - 1)
                prompts.append(box_prompt(*_valid_box(x0, y0, x1, y1, h, w)))
            else:
                prompts.append(self.masks[s])
        return prompts


class UniformPromptPool:
    """Prompts drawn uniformly over the whole image, ignoring what the clean model segments: points
    anywhere, boxes of any position with sides of 5-60 % of the image. A pool that cannot miss an
    object the model's own segments missed (``prompt_source="uniform"``)."""

    def __init__(self, hw: tuple[int, int]):
        self.hw = hw

    def sample(self, n: int, rng: torch.Generator, types=PROMPT_TYPES, jitter: float = 0.1) -> list[Prompt]:
        h, w = self.hw
        draws = torch.rand((n, 4), generator=rng, dtype=torch.float64).numpy()
        prompts = []
        for i in range(n):
            if types[i % len(types)] == "point":
                prompts.append(point_prompt(float(draws[i, 0] * (w - 1)), float(draws[i, 1] * (h - 1))))
            else:  # masks have no uniform analogue: a box stands in
                bw, bh = (0.05 + 0.55 * draws[i, 2]) * w, (0.05 + 0.55 * draws[i, 3]) * h
                x0, y0 = draws[i, 0] * (w - 1 - bw), draws[i, 1] * (h - 1 - bh)
                prompts.append(box_prompt(*_valid_box(x0, y0, x0 + bw, y0 + bh, h, w)))
        return prompts


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Inclusive tight box (x0, y0, x1, y1) of a non-empty mask, widened to at least 1 px."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return _valid_box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()), h, w)


def _valid_box(x0, y0, x1, y1, h, w):
    if x1 - x0 < 1:
        x0, x1 = (x0, x0 + 1) if x0 + 1 <= w else (x1 - 1, x1)
    if y1 - y0 < 1:
        y0, y1 = (y0, y0 + 1) if y0 + 1 <= h else (y1 - 1, y1)
    return float(x0), float(y0), float(x1), float(y1)


def grid_points(hw: tuple[int, int], grid: int) -> list[Prompt]:
    h, w = hw
    return [point_prompt((j + 0.5) * w / grid, (i + 0.5) * h / grid) for i in range(grid) for j in range(grid)]


@torch.no_grad()
def sample_prompt_pool(engine: SegmentEngine, features: ImageFeatures, image_index: int = 0, grid: int = 4,
                       max_segments: int = 16, min_area: float = 0.002, max_area: float = 0.9,
                       dedup_iou: float = 0.8, interior_only: bool = False) -> PromptPool:
    """Point grid -> the clean model's segments -> boxes and masks. If the model finds no usable
    segment (a random test model), the grid cells themselves are the segments. ``interior_only``: leave
    out segments that touch the image border (background regions usually do, objects rarely)."""
    hw = features.orig_hw
    points = grid_points(hw, grid)
    prediction = engine.decode(features, points, image_index=image_index, validate=False)
    masks = prediction.masks.cpu().numpy()
    order = np.argsort(-prediction.iou_pred.float().cpu().numpy(), kind="stable")
    area = masks.reshape(len(masks), -1).mean(1)
    kept: list[np.ndarray] = []
    for i in order:
        if not min_area <= area[i] <= max_area:
            continue
        if interior_only and (masks[i][[0, -1]].any() or masks[i][:, [0, -1]].any()):
            continue
        if any(_iou(masks[i], other) > dedup_iou for other in kept):
            continue
        kept.append(masks[i])
        if len(kept) >= max_segments:
            break
    if not kept:
        h, w = hw
        for i in range(grid):
            for j in range(grid):
                cell = np.zeros(hw, bool)
                cell[i * h // grid:max((i + 1) * h // grid, i * h // grid + 1),
                     j * w // grid:max((j + 1) * w // grid, j * w // grid + 1)] = True
                kept.append(cell)
    return PromptPool(points, np.stack(kept), hw)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ---------------------------------------------------------------------------------------------
# channel importance and key channels
# ---------------------------------------------------------------------------------------------
def clean_margin(low_res: torch.Tensor) -> torch.Tensor:
    """P x h x w logits at the clean image -> P margins: mean over the clean foreground (logit > 0)
    minus mean over the clean background. Defined even when a mask is empty or full."""
    fg = (low_res.detach() > 0).float()
    bg = 1 - fg
    fg_mean = (low_res * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp_min(1)
    bg_mean = (low_res * bg).flatten(1).sum(1) / bg.flatten(1).sum(1).clamp_min(1)
    return fg_mean - bg_mean


def channel_importance(engine: SegmentEngine, features: ImageFeatures, prompts: list[Prompt],
                       image_index: int = 0) -> torch.Tensor:
    """I(c) = mean over prompts and positions of |dL_p/dE_c * E_c| (C values), one decoder call."""
    feats = features.select(image_index).detach()
    embed = feats.image_embed.clone().requires_grad_(True)
    feats = ImageFeatures(embed, feats.high_res, feats.orig_hw, feats.input_hw)
    captured: list[torch.Tensor] = []

    def capture(module, args, kwargs):  # the decoder's per-prompt copy of E (+ dense prompt embedding)
        src = args[0] if args else kwargs.get("image_embedding")
        if isinstance(src, torch.Tensor) and src.requires_grad:
            captured.append(src)

    handle = engine.mask_decoder.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.enable_grad():
            prediction = engine.decode(feats, prompts, validate=False)
            loss = clean_margin(prediction.low_res_logits[:, 0]).sum()
            if sum(len(c) for c in captured) == len(prompts):
                grads = torch.cat(torch.autograd.grad(loss, captured), dim=0)  # P x C x h x w
            else:  # an unknown decoder layout: the gradient of the summed loss instead
                grads = torch.autograd.grad(loss, embed)[0]
    finally:
        handle.remove()
    return (grads * embed.detach()).abs().mean(dim=(0, 2, 3))


def rank_normalise(values: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [0, 1] (1 = largest); ties broken by channel index, deterministically."""
    ranks = torch.empty_like(values)
    ranks[torch.argsort(values, stable=True)] = torch.arange(len(values), dtype=values.dtype, device=values.device)
    return ranks / max(len(values) - 1, 1)


def key_channels(importance: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Top-k channels of min over types of the rank-normalised importance (sorted indices)."""
    score = torch.stack([rank_normalise(v.float()) for v in importance.values()]).min(0).values
    top = torch.argsort(score, descending=True, stable=True)[:k]
    return top.sort().values


# ---------------------------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------------------------
MASK_TARGETS = ("background", "flip")


def flipped_mask_bce(logits: torch.Tensor, clean_fg: torch.Tensor) -> torch.Tensor:
    """P x ... mask logits and the clean image's foreground (same shape, bool) -> P values: the BCE
    against the *inverted* clean mask, foreground and background pixels weighted equally. Minimising it
    empties the clean mask and grows the mask into the clean background, so a mask that cannot be
    emptied (a click on a flat, high-contrast region) can still be made to leak; the equal weights keep
    the large background from drowning the object."""
    fg = clean_fg.float().flatten(1)
    bg = 1 - fg
    logits = logits.flatten(1)
    to_background = (F.softplus(logits) * fg).sum(1) / fg.sum(1).clamp_min(1)
    to_foreground = (F.softplus(-logits) * bg).sum(1) / bg.sum(1).clamp_min(1)
    return 0.5 * (to_background + to_foreground)


class CrossPromptAttack(Attack):
    """Prompt-agnostic key-channel feature attack plus a mixed-prompt mask term (on by default).

    k: number of key channels (default C/4: 32 of the embedded models' 128, 64 of real SAM's
    256); distance: "mse" or "cosine"; mix: weight of the mixed-prompt mask loss (default 100,
    which balances its ~100x smaller scale; 0 disables it, and then the decoder is not run in
    the loop at all: the paper's pure feature-level loss); prompts_per_step: prompts in that
    term per step (default 32); mix_types: their types (default point and box: the decoder
    copies mask prompts, so spending a third of the batch on them bought nothing in any column);
    grid: the point grid side; types: prompt types whose channel importance must agree (all
    three); high_res_weight: SAM 2's high-res maps; prompt_source: where the mask term's prompts
    come from, "segments" (the pool of the clean model's segments) or "uniform" (anywhere in the
    image, :class:`UniformPromptPool`); mask_target: what the mask term pushes those masks to,
    "background" (empty masks) or "flip" (the inverted clean mask, :func:`flipped_mask_bce`; weaker on
    validation scenes); max_area: the largest segment the pool keeps, as a fraction of the image (default
    0.9; smaller keeps the background's large segments out of the mask term); interior_only: the pool leaves
    out segments that touch the image border. See docs/METHOD.md for the measurements.

    Batches: the encoder forward + backward runs over the whole batch; what is inherently per image (the
    prompt pool, channel importance and key channels in :meth:`prepare`; the key-channel distance and the
    mask term's sampled prompts, drawn from image i's generator, and their decoder call in :meth:`loss`)
    runs image by image on the batched features.
    """

    name = "cross-prompt"

    def __init__(self, engine: SegmentEngine, eps: float = DEFAULT_EPS, steps: int = DEFAULT_STEPS,
                 step_size: float | None = None, generator="pgd", random_start: bool = True, seed=None,
                 progress=None, cancel=None, restarts: int = 1, *, k: int | None = None, distance: str = "mse", mix: float = 100.0,
                 prompts_per_step: int = 32, mix_types=("point", "box"), grid: int = 4, types=PROMPT_TYPES,
                 high_res_weight: float = 1.0, prompt_source: str = "segments", mask_target: str = "background",
                 max_area: float = 0.9, interior_only: bool = False):
        super().__init__(engine, eps, steps, step_size, generator, random_start, seed, progress, cancel, restarts)
        if distance not in ("mse", "cosine"):
            raise ValueError(f"distance must be 'mse' or 'cosine'; got {distance!r}.")
        if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"k must be a positive number of channels; got {k!r}.")
        for label, value in (("types", types), ("mix_types", mix_types)):
            if not value or isinstance(value, str) or any(t not in PROMPT_TYPES for t in value):
                raise ValueError(f"{label} must be a non-empty subset of {PROMPT_TYPES}; got {value!r}.")
        if mix < 0 or prompts_per_step < 1 or grid < 1:
            raise ValueError("mix must be >= 0, prompts_per_step >= 1 and grid >= 1.")
        if not 0 < max_area <= 1:
            raise ValueError(f"max_area must be a fraction of the image in (0, 1]; got {max_area!r}.")
        self.max_area, self.interior_only = float(max_area), bool(interior_only)
        self.k, self.distance, self.mix = k, distance, float(mix)
        self.prompts_per_step, self.grid, self.types = int(prompts_per_step), int(grid), tuple(types)
        self.mix_types = tuple(mix_types)
        if prompt_source not in ("segments", "uniform"):
            raise ValueError(f"prompt_source must be 'segments' or 'uniform'; got {prompt_source!r}.")
        self.prompt_source = prompt_source
        if mask_target not in MASK_TARGETS:
            raise ValueError(f"mask_target must be one of {MASK_TARGETS}; got {mask_target!r}.")
        self.mask_target = mask_target
        self.high_res_weight = float(high_res_weight)

    def prepare(self, images, prompts, rngs):
        engine = self.engine
        clean = engine.embed(images)
        channels = clean.image_embed.shape[1]
        k = min(self.k or max(channels // 4, 1), channels)
        pools, keys, importances = [], [], []
        for i in range(len(images)):
            pool = sample_prompt_pool(engine, clean, i, grid=self.grid, max_area=self.max_area,
                                      interior_only=self.interior_only)
            importance = {t: channel_importance(engine, clean, pool.by_type(t), i) for t in self.types}
            pools.append(pool)
            importances.append(importance)
            keys.append(key_channels(importance, k).to(clean.image_embed.device))
        info = {"k": k, "channels": channels, "key_channels": [key.tolist() for key in keys],
                "segments": [len(p.segments) for p in pools], "mix": self.mix, "distance": self.distance,
                "importance": [{t: v.tolist() for t, v in imp.items()} for imp in importances]}
        return {"clean": clean, "pools": pools, "keys": keys, "info": info}

    def loss(self, adv, state, step: StepInfo, rngs):
        clean: ImageFeatures = state["clean"]
        feats = self.engine.embed(adv)
        per_image = []
        for i, key in enumerate(state["keys"]):
            total = feature_distance(feats.image_embed[i:i + 1, key], clean.image_embed[i:i + 1, key],
                                     self.distance).sum()
            if feats.high_res and self.high_res_weight:
                total = total + self.high_res_weight * sum(
                    feature_distance(f[i:i + 1], c[i:i + 1], "mse").sum()
                    for f, c in zip(feats.high_res, clean.high_res)) / len(feats.high_res)
            if self.mix:
                pool = state["pools"][i] if self.prompt_source == "segments" else UniformPromptPool(clean.orig_hw)
                prompts = pool.sample(self.prompts_per_step, rngs[i], self.mix_types)
                logits = self.engine.decode(feats, prompts, image_index=i, validate=False).low_res_all
                if self.mask_target == "flip":
                    with torch.no_grad():
                        clean_fg = self.engine.decode(clean, prompts, image_index=i, validate=False).low_res_all > 0
                    term = flipped_mask_bce(logits, clean_fg)
                else:
                    term = background_bce(logits, step)
                total = total - self.mix * term.mean()
            per_image.append(total)
        return torch.stack(per_image)


class KeyChannelAttack(CrossPromptAttack):
    """The paper's cross-prompt attack (Robust SAM, arXiv 2504.08906): the key-channel feature loss
    alone, i.e. :class:`CrossPromptAttack` with ``mix=0`` (no sampled-prompt mask term, the decoder
    is not run in the loop). Kept as its own row so that tables say which attack is which:
    ``cross-prompt`` is ours (feature loss + the mask term of 32 sampled prompts, weight 100)."""

    name = "key-channel"

    def __init__(self, engine: SegmentEngine, eps: float = DEFAULT_EPS, steps: int = DEFAULT_STEPS,
                 step_size: float | None = None, generator="pgd", random_start: bool = True, seed=None,
                 progress=None, cancel=None, restarts: int = 1, **options):
        if options.get("mix", 0):
            raise ValueError("key-channel is the feature loss alone (mix=0); use cross-prompt for the mask term.")
        options["mix"] = 0.0
        super().__init__(engine, eps, steps, step_size, generator, random_start, seed, progress, cancel, restarts,
                         **options)
