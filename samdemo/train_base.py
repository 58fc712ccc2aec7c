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

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from samdemo import distributed
from samdemo.build import CONFIG_DIR, build_architecture, read_state_dict
from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.losses import hard_iou, low_res_target, mask_loss, segmentation_loss
from samdemo.prompt_sampling import coarse_mask, corrective_click, featureless_image, jittered_box, random_point
from samdemo.prompts import Prompt
from samdemo.quality import image_variant, prompt_quality
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
    blank_fraction: float = 0.1  # share of images replaced by featureless ones with empty targets
    easy_fraction: float = 0.3  # share of scenes drawn flat-coloured on flat backgrounds (a curriculum)
    threads: int = 1  # torch threads of each training process
    workers: int = 1  # scene-generating worker processes per training process (0: none)
    device: str = ""  # "" = cuda when there is one, else cpu
    bf16: bool = False  # bfloat16 autocast (pays on GPUs; CPUs without bf16 units only slow down)

    def arch_path(self) -> Path:
        return Path(self.config) if self.config else CONFIG_DIR / f"{self.family}_small.yaml"


def training_step_loss(engine: SegmentEngine, images: np.ndarray, masks: list[np.ndarray], instances: int,
                       rngs: list[np.random.Generator], blank_fraction: float = 0.0) -> torch.Tensor:
    """Mean segmentation loss over every prompt of a batch (one encoder pass for the batch).

    images: B x S x S x 3 uint8; masks[b]: N_b x S x S bool instance masks of image b; rngs[b]
    draws everything random about image b (so a batch split across processes draws the same).
    With probability ``blank_fraction`` an image is replaced by a featureless one
    (``prompt_sampling.featureless_image``) whose prompts, drawn from the original masks, must
    all give an empty mask. Losses compare the decoder's low-resolution logits (S/4 a side) with
    area-downsampled targets (``losses.low_res_target``).
    """
    blank = [rng.random() < blank_fraction for rng in rngs]
    images = np.stack([featureless_image(rng, images.shape[1]) if empty else image
                       for image, empty, rng in zip(images, blank, rngs)])
    features = engine.embed(torch.cat([image_to_tensor(image) for image in images]).to(engine.device))
    losses = []
    for b, rng in enumerate(rngs):
        chosen = rng.permutation(len(masks[b]))[:instances]
        gts = [masks[b][i] for i in chosen]
        prompt_gts = gts  # prompts always come from a real object; targets vanish on a blank image
        if blank[b]:
            gts = [np.zeros_like(m) for m in gts]
        full = torch.as_tensor(np.stack(gts), dtype=torch.float32, device=engine.device)
        points = [random_point(m, rng) for m in prompt_gts]
        first = [Prompt(points=p[None], labels=np.array([1])) for p in points]
        single = ([Prompt(box=jittered_box(m, rng)) for m in prompt_gts]
                  + [Prompt(mask=coarse_mask(m, rng)) for m in prompt_gts])
        feats = features.select(b)

        pred = engine.decode(feats, first, validate=False, full_resolution=False)
        multi = pred.low_res_all[:, 1:]
        target = low_res_target(full, multi.shape[-2:])
        expanded = target[:, None].expand_as(multi)
        mask_part = mask_loss(multi, expanded)
        best = mask_part.detach().argmin(1)  # SAM's min-loss over the three ambiguous outputs
        iou_part = (pred.iou_all[:, 1:] - hard_iou(multi.detach(), expanded)) ** 2  # every token's quality
        losses.append(mask_part.gather(1, best[:, None])[:, 0] + iou_part.mean(1))

        low_res = multi.detach().gather(1, best[:, None, None, None].expand(-1, 1, *multi.shape[-2:]))
        chosen_masks = engine.postprocess(low_res, feats.orig_hw, feats.input_hw)[:, 0] > 0
        refine = []
        for i, gt in enumerate(gts):
            click, label = corrective_click(chosen_masks[i].cpu().numpy(), gt, rng)
            refine.append(Prompt(points=np.stack([points[i], click]), labels=np.array([1, label]),
                                 mask=low_res[i].cpu().numpy(), mask_is_logits=True))
        second = engine.decode(feats, single + refine, validate=False, full_resolution=False)
        logits = second.low_res_all[:, 0]
        losses.append(segmentation_loss(logits, target.repeat(3, 1, 1), second.iou_all[:, 0]))
    return torch.cat(losses).mean()


class SceneBatches(torch.utils.data.Dataset):
    """This process's share of batch ``step``: (b x S x S x 3 uint8 images, list of b masks
    N_i x S x S bool, list of b positions in the global batch).

    Drawn by index, so DataLoader workers build the next batches in other processes while the
    model trains, and a resumed run sees exactly the scenes it would have seen. Under torchrun,
    process ``rank`` of ``world`` takes images rank, rank + world, ... of the global batch."""

    def __init__(self, seed: int, batch: int, size: int, rank: int = 0, world: int = 1, easy_fraction: float = 0.0):
        if batch % world:
            raise ValueError(f"--batch {batch} must be a multiple of the number of processes ({world})")
        self.seed, self.batch, self.size, self.rank, self.world = seed, batch, size, rank, world
        self.easy_fraction = easy_fraction

    def __len__(self) -> int:
        return SCENES_PER_SEED // self.batch

    def is_easy(self, index: int) -> bool:
        """Whether training scene ``index`` is drawn in the easy mode (``scenes.make_scene``)."""
        return bool(np.random.default_rng([index, 1]).random() < self.easy_fraction)

    def __getitem__(self, step: int):
        first = self.seed * SCENES_PER_SEED + step * self.batch
        positions = list(range(self.rank, self.batch, self.world))
        scenes = [train_scene(first + i, size=self.size, easy=self.is_easy(first + i)) for i in positions]
        return np.stack([s.image for s in scenes]), [s.masks for s in scenes], positions


def _unchanged(batch):
    return batch  # numpy arrays as drawn (DataLoader's default would turn them into tensors)


def _scene_batches(cfg: "BaseTrainConfig", size: int, first_step: int, rank: int, world: int):
    dataset = SceneBatches(cfg.seed, cfg.batch, size, rank, world, cfg.easy_fraction)
    steps = range(first_step, cfg.steps)
    if cfg.workers == 0:
        return (dataset[step] for step in steps)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=list(steps), num_workers=cfg.workers,
                                         prefetch_factor=4, collate_fn=_unchanged)
    return iter(loader)


class _TrainingStep(torch.nn.Module):
    """The model and its training loss as one module, so that DistributedDataParallel (which
    all-reduces gradients of what its forward used) can wrap the whole step."""

    def __init__(self, engine: SegmentEngine, cfg: "BaseTrainConfig"):
        super().__init__()
        self.model, self.engine, self.cfg = engine.model, engine, cfg

    def forward(self, images, masks, rngs):
        with torch.autocast(self.engine.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            return training_step_loss(self.engine, images, masks, self.cfg.instances, rngs, self.cfg.blank_fraction)


def train_base(cfg: BaseTrainConfig, run_dir: Path, resume: bool = True) -> dict:
    """Train (or resume) in ``run_dir``; returns the log. Saves ``run_dir/state.pt`` regularly.

    Under ``torchrun --nproc-per-node N`` each process trains on its share of every batch
    (``SceneBatches``) and DistributedDataParallel averages the gradients; process 0 alone
    evaluates and writes checkpoints and the log."""
    world = distributed.world_size()
    rank = distributed.setup(cfg.device)
    device = torch.device(distributed.local_device(cfg.device))
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run_dir.mkdir(parents=True, exist_ok=True)
    model, family = build_architecture(cfg.arch_path())
    if cfg.init:  # runs/ is not committed: a later session continues from the shipped weights
        model.load_state_dict(read_state_dict(Path(cfg.init)))
    model.to(device)
    engine = SegmentEngine(model, family)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(cfg.steps, 1))))))
    state_path = run_dir / "state.pt"
    log: dict = {"config": asdict(cfg), "processes": world, "train": [], "eval": [], "seconds": 0.0}
    step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = int(state["step"])
        log = json.loads((run_dir / "log.json").read_text())
        log.setdefault("resumed", []).append({"step": step, "config": asdict(cfg), "processes": world})
    training_step = distributed.wrap(_TrainingStep(engine, cfg), device, unused_parameters=family == "sam2")
    if rank == 0:
        shutil.copy(cfg.arch_path(), run_dir / "config.yaml")

    def save():
        if rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step}, state_path)
            (run_dir / "log.json").write_text(json.dumps(log, indent=1))

    start, seconds_before = time.time(), log["seconds"]
    eval_set = validation_scenes(cfg.eval_scenes, size=engine.image_size) if rank == 0 else []
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train-base {family}", disable=rank != 0)
    # each seed draws its own scenes, so a continued run (--init, new seed) sees fresh data
    for images, masks, positions in _scene_batches(cfg, engine.image_size, step, rank, world):
        # one random stream per image of the global batch: resumed runs, and runs split over any
        # number of processes, draw the same prompts
        rngs = [np.random.default_rng([cfg.seed, step, position]) for position in positions]
        loss = training_step(images, masks, rngs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        global_loss = distributed.mean(loss.detach())
        log["seconds"] = seconds_before + time.time() - start
        log["train"].append([step, round(global_loss, 5)])
        bar.update(1)
        bar.set_postfix(loss=f"{global_loss:.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
        if rank == 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            model.eval()
            quality = prompt_quality(engine, eval_set)
            # the same prompts on a uniform grey image: what the model draws without looking
            grey = prompt_quality(engine, [image_variant(scene, "grey") for scene in eval_set])
            quality |= {f"grey_{kind}": grey[kind] for kind in ("point", "box")}
            model.train()
            log["eval"].append({"step": step, "seconds": round(log["seconds"], 1), **quality})
            tqdm.write(f"step {step}: validation mIoU " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save()
        # every process stops at the same step: process 0's clock decides
        if cfg.minutes and distributed.agree(time.time() - start > cfg.minutes * 60):
            save()
            tqdm.write(f"stopping after {cfg.minutes} minutes at step {step}; rerun to resume")
            break
    bar.close()
    save()
    distributed.barrier()  # process 0 may still be evaluating or writing: leave the group together
    distributed.teardown()
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
        if name in ("family", "config"):
            continue
        if name == "device":
            distributed.add_device_argument(parser)
        elif isinstance(default, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", action="store_true")
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--export", type=Path, default=None, help="after training, write model.safetensors here")


def run(args) -> int:
    fields = {k: getattr(args, k) for k in asdict(BaseTrainConfig())}
    cfg = BaseTrainConfig(**fields)
    train_base(cfg, args.run_dir, resume=not args.no_resume)
    if args.export and distributed.rank() == 0:
        print(f"exported {export_weights(args.run_dir, args.export)}")
    return 0
