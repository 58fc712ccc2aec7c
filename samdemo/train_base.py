"""Train the embedded small SAM / SAM 2 on procedural scenes (``python -m samdemo train-base``).

Recipe (after SAM's, scaled to a CPU): every step embeds a batch of training scenes once and
decodes many prompts per image against it, since the encoder dominates the cost:
for each of up to ``instances`` ground-truth instances per image,

* a **box**: the tight box with each side jittered by N(0, 0.1 x side), clipped at 0.2 x side;
* a **single positive point**, uniform inside the mask, answered with three masks; only the
  mask closest to ground truth is trained (SAM's min-loss over ambiguous outputs);
* a **corrective round**: the first point, one click in the largest error region of the
  point's own (detached) prediction (positive on a miss, negative on a false positive) and that
  prediction's low-resolution logits as a mask prompt;
* a **mask prompt**: the ground-truth mask, randomly eroded/dilated by 0-2 px half the time.

Loss: 20 x focal + dice on the upsampled masks, plus MSE of the IoU head against the true IoU.
AdamW, linear warmup then cosine decay; gradients clipped at 1.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from samdemo.build import CONFIG_DIR, build_architecture, read_state_dict
from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.prompts import Prompt
from samdemo.quality import prompt_quality
from samdemo.scenes import train_scene, validation_scenes


SCENES_PER_SEED = 10_000_000  # seed s trains on scenes [s * 1e7, (s + 1) * 1e7), far below the held-out range


@dataclass
class BaseTrainConfig:
    family: str = "sam"
    config: str = ""  # architecture YAML; default samdemo/configs/<family>_small.yaml
    steps: int = 4000
    batch: int = 8
    instances: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 150
    seed: int = 0
    eval_every: int = 250
    eval_scenes: int = 40
    checkpoint_every: int = 50
    minutes: float = 0.0  # stop (resumably) after this wall time; 0 = no limit
    init: str = ""  # start from these weights (e.g. checkpoints/sam-small/model.safetensors) instead of random

    def arch_path(self) -> Path:
        return Path(self.config) if self.config else CONFIG_DIR / f"{self.family}_small.yaml"


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over the last two dims: ... x H x W -> ..."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid().flatten(-2)
    target = target.flatten(-2)
    return 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)


def soft_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).float().flatten(-2)
    target = target.flatten(-2)
    inter = (pred * target).sum(-1)
    union = ((pred + target) > 0).float().sum(-1)
    return inter / union.clamp(min=1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
    """Per mask: 20 focal + dice + MSE(IoU head, true IoU). logits/target ... x H x W, iou_pred ..."""
    mask_term = 20 * focal_loss(logits, target) + dice_loss(logits, target)
    iou_term = (iou_pred - soft_iou(logits.detach(), target)) ** 2
    return mask_term + iou_term


def _jittered_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
    box = box + np.clip(rng.normal(0, 0.1, 4) * side, -0.2 * side, 0.2 * side)
    h, w = mask.shape
    box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
    box[2], box[3] = max(box[2], box[0] + 2), max(box[3], box[1] + 2)
    return box.astype(np.float32)


def _random_point(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.nonzero(region)
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], np.float32)


def _corrective_click(pred: np.ndarray, gt: np.ndarray, rng) -> tuple[np.ndarray, int]:
    """A click in the largest error region: positive in a miss, negative in a false positive."""
    miss, extra = gt & ~pred, pred & ~gt
    region, label = (miss, 1) if miss.sum() >= extra.sum() else (extra, 0)
    if not region.any():
        return _random_point(gt, rng), 1
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return _random_point(labels == largest, rng), label


def _perturbed_mask(mask: np.ndarray, rng) -> np.ndarray:
    if rng.random() < 0.5:
        return mask
    k = int(rng.integers(1, 3))
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    op = cv2.erode if rng.random() < 0.5 else cv2.dilate
    out = op(mask.astype(np.uint8), kernel).astype(bool)
    return out if out.any() else mask


def training_step_loss(engine: SegmentEngine, scenes, instances: int, rng: np.random.Generator) -> torch.Tensor:
    """Mean segmentation loss over every prompt of a batch of scenes (one encoder pass)."""
    images = torch.cat([image_to_tensor(s.image) for s in scenes]).to(engine.device)
    features = engine.embed(images)
    losses = []
    for b, scene in enumerate(scenes):
        chosen = rng.permutation(len(scene.masks))[:instances]
        gts = [scene.masks[i] for i in chosen]
        target = torch.as_tensor(np.stack(gts), dtype=torch.float32, device=engine.device)
        points = [_random_point(m, rng) for m in gts]
        first = [Prompt(points=p[None], labels=np.array([1])) for p in points]
        single = [Prompt(box=_jittered_box(m, rng)) for m in gts] + [Prompt(mask=_perturbed_mask(m, rng)) for m in gts]
        feats = features.select(b)

        pred = engine.decode(feats, first, validate=False)
        multi = engine.postprocess(pred.low_res_all[:, 1:], feats.orig_hw, feats.input_hw)
        per_token = segmentation_loss(multi, target[:, None].expand_as(multi), pred.iou_all[:, 1:])
        mask_part = (20 * focal_loss(multi, target[:, None].expand_as(multi)) + dice_loss(multi, target[:, None].expand_as(multi)))
        best = mask_part.detach().argmin(1)
        iou_part = per_token - mask_part  # the IoU head learns every token's quality
        losses.append(mask_part.gather(1, best[:, None])[:, 0] + iou_part.mean(1))

        chosen_masks = (multi.detach().gather(1, best[:, None, None, None].expand(-1, 1, *multi.shape[-2:]))[:, 0] > 0)
        low_res = pred.low_res_all.detach().gather(1, (best + 1)[:, None, None, None].expand(-1, 1, *pred.low_res_all.shape[-2:]))
        refine = []
        for i, gt in enumerate(gts):
            click, label = _corrective_click(chosen_masks[i].cpu().numpy(), gt, rng)
            refine.append(Prompt(points=np.stack([points[i], click]), labels=np.array([1, label]),
                                 mask=low_res[i].cpu().numpy(), mask_is_logits=True))
        second = engine.decode(feats, single + refine, validate=False)
        logits = engine.postprocess(second.low_res_all[:, :1], feats.orig_hw, feats.input_hw)[:, 0]
        target3 = target.repeat(3, 1, 1)
        losses.append(segmentation_loss(logits, target3, second.iou_all[:, 0]))
    return torch.cat(losses).mean()


def train_base(cfg: BaseTrainConfig, run_dir: Path, resume: bool = True) -> dict:
    """Train (or resume) in ``run_dir``; returns the log. Saves ``run_dir/state.pt`` regularly."""
    torch.manual_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    model, family = build_architecture(cfg.arch_path())
    if cfg.init:  # runs/ is not committed: a later session continues from the shipped weights
        model.load_state_dict(read_state_dict(Path(cfg.init)))
    engine = SegmentEngine(model, family)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(cfg.steps, 1))))))
    state_path = run_dir / "state.pt"
    log: dict = {"config": asdict(cfg), "train": [], "eval": [], "seconds": 0.0}
    step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = int(state["step"])
        log = json.loads((run_dir / "log.json").read_text())
        log.setdefault("resumed", []).append({"step": step, "config": asdict(cfg)})  # e.g. a longer schedule
    shutil.copy(cfg.arch_path(), run_dir / "config.yaml")

    def save():
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "step": step}, state_path)
        (run_dir / "log.json").write_text(json.dumps(log, indent=1))

    start, seconds_before = time.time(), log["seconds"]
    eval_set = validation_scenes(cfg.eval_scenes, size=engine.image_size)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train-base {family}")
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])  # per-step streams make resumed runs identical
        # each seed draws its own scenes, so a continued run (--init, new seed) sees fresh data
        first_scene = cfg.seed * SCENES_PER_SEED + step * cfg.batch
        scenes = [train_scene(first_scene + i, size=engine.image_size) for i in range(cfg.batch)]
        loss = training_step_loss(engine, scenes, cfg.instances, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        log["seconds"] = seconds_before + time.time() - start
        log["train"].append([step, round(loss.item(), 5)])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            quality = prompt_quality(engine, eval_set)
            model.train()
            log["eval"].append({"step": step, "seconds": round(log["seconds"], 1), **quality})
            tqdm.write(f"step {step}: held-out mIoU " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save()
        if cfg.minutes and time.time() - start > cfg.minutes * 60:
            save()
            tqdm.write(f"stopping after {cfg.minutes} minutes at step {step}; rerun to resume")
            break
    bar.close()
    save()
    return log


def export_weights(run_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/model.safetensors`` and ``training_log.json`` from a training run.

    A run started with ``--init`` carries the log of the weights it continued (``previous``,
    recursively), so the shipped log is the whole training history.
    """
    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in state["model"].items()}
    log = json.loads((run_dir / "log.json").read_text())
    init = log["config"].get("init")
    previous = Path(init).parent / "training_log.json" if init else None
    if previous is not None and previous.exists() and "previous" not in log:
        log["previous"] = json.loads(previous.read_text())  # read before it is overwritten: the full history
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"step": str(state["step"])})
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=1))
    return out_dir / "model.safetensors"


def configure_parser(parser) -> None:
    parser.add_argument("--family", choices=["sam", "sam2"], required=True)
    parser.add_argument("--config", default="", help="architecture YAML (default: samdemo/configs/<family>_small.yaml)")
    parser.add_argument("--run-dir", type=Path, required=True, help="where state.pt and log.json go")
    for name, default in asdict(BaseTrainConfig()).items():
        if name not in ("family", "config"):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--export", type=Path, default=None, help="after training, write model.safetensors here")


def run(args) -> int:
    fields = {k: getattr(args, k) for k in asdict(BaseTrainConfig())}
    cfg = BaseTrainConfig(**fields)
    train_base(cfg, args.run_dir, resume=not args.no_resume)
    if args.export:
        print(f"exported {export_weights(args.run_dir, args.export)}")
    return 0
