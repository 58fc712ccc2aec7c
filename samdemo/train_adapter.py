"""Train a robustness adapter adversarially (``python -m samdemo train-adapter``).

Only the adapter's parameters move (``samdemo.defense``): with ``--method svd`` (default, the
Robust SAM defense) the singular values of the target layers (512 on Meta's models, 256 on the
embedded small ones, by default; ``--svd-rank k`` trains only the k largest of each targeted
layer, to spread a fixed budget over many layers); the baselines ``--method lora`` (rank ``--lora-rank``) and
``--method full`` (the whole weights) parametrise the *same* layers and go through the same loop.
Every step, on a batch of images with target masks:

1. **Attack** the *current adapted* model (white box, so the defense never trains against a
   stale attack): one attack per step, cycling through ``--attacks`` (default cross-prompt,
   feature, mask; ``samdemo.attacks``) with few PGD steps (``--attack-steps``, default 4) at
   ``--eps`` (in 1/255 units like every command; default 8).
2. **Loss** = ``adv_weight`` x segmentation loss on the adversarial images + ``clean_weight`` x
   the same loss on the clean images, for a point, a jittered box and a mask prompt per target
   instance (``train_base.segmentation_loss``: 20 focal + dice + IoU-head MSE; a lone point
   takes the best of its three masks, as SAM's training does).

Targets: ``--data scenes`` uses the procedural scenes' ground-truth masks; ``--data DIR`` (any
folder of images, no labels) uses the *original* model's own clean segments (its answers to a
4 x 4 point grid, computed once before training), so the adapter learns to keep the original
model's clean behaviour under attack.

Optimiser: Adam, one group per trainable tensor with learning rate ``lr x`` a per-tensor scale
(``Adapter.param_groups``: svd ``mean(s_base)``; full ``rms(W)``; lora ``rms(A)`` for A and
``||W||_F / (sqrt(out) ||A||_F)`` for B), so that one step changes each W by about
``lr x ||W||_F`` whatever the method: a relative step, the same for every method, layer and
model size. Linear warm-up, cosine decay to 10 %. Seeds: per-image streams ``(seed, step,
position in the batch)`` for prompts and per-image attack seeds (and LoRA's initial A: ``seed``),
so a resumed run repeats an uninterrupted one, and ``torchrun --nproc-per-node N`` (each process
takes every N-th image of the global batch, gradients summed over processes) trains as one process.
Checkpoints (``RUN_DIR/state.pt``, read back with ``weights_only=True``) every
``--checkpoint-every`` steps; ``RUN_DIR/log.json`` holds the method, the loss per step
and the held-out evaluation: clean mIoU (``quality.prompt_quality``) and mIoU after
each ``--eval-attacks`` attack crafted against the model being evaluated (step 0 = the
original model). The result is an adapter folder (``--out``, default
``checkpoints/<model>-adapter``, where the app finds the shipped adapter, for svd, and
``checkpoints/<model>-adapter-lora-r<R>`` / ``-adapter-full`` for the baselines):
adapter.safetensors, adapter_config.json (method, recipe + metrics), README.md model card,
singular_values.png.

    python -m samdemo train-adapter --model sam-small            # -> checkpoints/sam-small-adapter
    python -m samdemo train-adapter --model sam-small --method lora --lora-rank 1   # -> ...-adapter-lora-r1
    python -m samdemo train-adapter --model sam2-small --data ~/photos --out /tmp/sam2-photos-adapter
    python -m samdemo train-adapter --model sam2-small --targets 'image_encoder.*' --svd-rank 14  # 504 values

From Python (the app's *Train a robust adapter*): ``train_adapter(cfg, run_dir, out_dir, engine=copy,
images=[H x W x 3 uint8 arrays], progress=fn, cancel=event)``: label-free images in memory
(:class:`ImageData`, the same path as a folder), ``progress(step, total, stage=text)`` and a
``threading.Event`` that stops training within a step.

Defaults are sized for sam-small / sam2-small on the 2-core CPU box (the shipped adapters' own recipes, chosen on
validation scenes, differ: a spread budget, lr 0.02, adv weight 2, and for sam-small ``--attack-steps 8``; each
adapter_config.json holds its command's settings and docs/RESULTS.md the commands): 300 steps of 4 scenes at lr 0.05 (measured 3.0-3.9 s per step on one core while two
runs shared the machine, plus ~20 s per held-out evaluation of 16 scenes with a 10-step attack,
4 of them): about 17 / 21 minutes. lr 0.005 (the first shipped recipe) barely moved the spectrum
(~5 % in 150 steps) and gave no measurable gain; 0.05 moves it by tens of percent without
costing clean mIoU.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from samdemo import distributed
from samdemo.defense import LAYER_TYPES, METHODS, SVD_SELECTIONS, Adapter, AdapterConfig, apply_adapter, save_adapter
from samdemo.attacks.base import eps_from_255
from samdemo.pipeline import AttackRequest, craft
from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.errors import AttackCancelled, UserError
from samdemo.prompts import Prompt, prompts_from_mask
from samdemo.quality import prompt_quality
from samdemo.losses import segmentation_loss
from samdemo.prompt_sampling import jittered_box, random_point

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class AdapterTrainConfig:
    model: str = "sam-small"
    arch: str = ""  # architecture YAML with random weights instead of --model's weights (tests, smoke runs)
    data: str = "scenes"  # "scenes" or a folder of images
    targets: str = ""  # comma-separated module globs; "" = the family's default
    method: str = "svd"  # svd (the defense), lora or full (baselines on the same layers)
    lora_rank: int = 1
    svd_rank: int = 0  # svd: train only the k largest singular values of each layer (0: all)
    svd_select: str = "largest"  # svd with --svd-rank: the k largest (the defense) or k at random (a control)
    steps: int = 300
    batch: int = 4
    instances: int = 3  # target instances per image per step (a point, a box and a mask prompt each)
    lr: float = 0.05  # relative: one step changes each W by about lr x ||W||_F (Adapter.param_groups)
    warmup: int = 10
    adv_weight: float = 1.0
    clean_weight: float = 1.0
    attacks: str = "cross-prompt,feature,mask"
    attack_steps: int = 4
    eps: float = 8.0  # L-inf bound in 1/255 units, like every command
    generator: str = "pgd"
    seed: int = 0
    train_pool: int = 0  # 0: a fresh training image every time; N: cycle through N images
    image_size: int = 0  # folder data: images are centre-cropped and resized to this (0: model input size)
    eval_every: int = 100
    eval_scenes: int = 16
    eval_attacks: str = "cross-prompt"
    eval_attack_steps: int = 10
    checkpoint_every: int = 10
    minutes: float = 0.0  # stop (resumably) after this wall time; 0 = no limit
    device: str = ""  # "" = cuda when there is one, else cpu; under torchrun each process on its local GPU

    def attack_list(self) -> list[str]:
        return [a.strip() for a in self.attacks.split(",") if a.strip()]

    def eval_attack_list(self) -> list[str]:
        return [a.strip() for a in self.eval_attacks.split(",") if a.strip()]

    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    def variant(self) -> str:
        """Suffix of the default out and run folders: "" for svd, so the baselines never overwrite it."""
        if self.method == "svd":
            return f"-{'top' if self.svd_select == 'largest' else self.svd_select}{self.svd_rank}" if self.svd_rank else ""
        return f"-lora-r{self.lora_rank}" if self.method == "lora" else f"-{self.method}"

    def update_rank(self) -> int | None:
        """The adapter's ``rank`` for this method (None: the method's default)."""
        if self.method == "lora":
            return self.lora_rank
        if self.method == "svd" and self.svd_rank:
            return self.svd_rank
        return None


# ---------------------------------------------------------------------- data
class SceneData:
    """Procedural scenes with ground-truth masks (``samdemo.scenes``)."""

    def __init__(self, size: int):
        from samdemo.scenes import train_scene, validation_scenes

        self.size, self._train, self._heldout = size, train_scene, validation_scenes
        self.description = "procedural scenes (ground-truth masks)"

    def train(self, index: int):
        return self._train(index, size=self.size)

    def heldout(self, n: int) -> list:
        return self._heldout(n, size=self.size)


class ImageData:
    """Images without labels; targets are the original model's own clean segments (label-free).

    ``images``: H x W x 3 uint8 arrays of any size, each centre-cropped to a square and resized to
    ``size`` px. The last ``min(eval_images, max(1, N // 5))`` are held out for the before / after
    check. ``engine`` must be the *original* model (no adapter yet): its answers to a 4 x 4 point
    grid, computed once here, are the targets."""

    def __init__(self, images: Sequence[np.ndarray], engine: SegmentEngine, size: int, eval_images: int,
                 source: str = "images"):
        if len(images) < 2:
            raise UserError(f"{source}: need at least 2 images (one to train on, one held out for the check), "
                            f"found {len(images)}.")
        squares = [square_image(image, size) for image in images]
        samples = [SimpleNamespace(image=image, masks=self.pseudo_masks(engine, image)) for image in
                   tqdm(squares, desc="pseudo-labels (original model)", leave=False)]
        n_eval = min(eval_images, max(1, len(samples) // 5))
        self.train_samples, self.eval_samples = samples[:-n_eval], samples[-n_eval:]
        self.description = (f"{len(images)} images from {source} ({len(self.train_samples)} train, {n_eval} held "
                            "out); targets: the original model's clean segments")

    @classmethod
    def from_folder(cls, folder: Path, engine: SegmentEngine, size: int, eval_images: int) -> "ImageData":
        """Every image under ``folder`` (recursively, by suffix: ``IMAGE_SUFFIXES``), in name order."""
        from PIL import Image

        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(paths) < 2:
            raise UserError(f"--data {folder}: need at least 2 images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                            f"found {len(paths)}.")
        images = []
        for path in paths:
            with Image.open(path) as im:
                images.append(square_image(np.asarray(im.convert("RGB"), dtype=np.uint8), size))  # small at once
        return cls(images, engine, size, eval_images, source=str(folder))

    @staticmethod
    @torch.no_grad()
    def pseudo_masks(engine: SegmentEngine, image: np.ndarray) -> np.ndarray:
        """K x H x W bool: the model's distinct clean segments for a 4 x 4 point grid (at least one)."""
        from samdemo.attacks import sample_prompt_pool

        features = engine.embed(image_to_tensor(image))
        pool = sample_prompt_pool(engine, features, 0, grid=4, max_segments=8, min_area=0.005)
        return pool.segments

    def train(self, index: int):
        return self.train_samples[index % len(self.train_samples)]

    def heldout(self, n: int) -> list:
        return self.eval_samples[:n]


def square_image(image: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 uint8 -> its centre square resized to size x size x 3 uint8 (bicubic)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"A training image must be H x W x 3 uint8, got shape {image.shape} ({image.dtype}).")
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.uint8).copy()


# ---------------------------------------------------------------------- loss
def instance_prompts(masks: np.ndarray, instances: int, rng: np.random.Generator) -> tuple[list[Prompt], np.ndarray]:
    """A random point, a jittered box and the mask itself for up to ``instances`` instances.

    Returns (prompts, targets) with targets[i] the mask that prompts[i] should produce.
    """
    chosen = rng.permutation(len(masks))[:instances]
    prompts, targets = [], []
    for i in chosen:
        mask = np.asarray(masks[i], dtype=bool)
        prompts += [Prompt(points=random_point(mask, rng)[None], labels=np.array([1])),
                    Prompt(box=jittered_box(mask, rng)), Prompt(mask=mask)]
        targets += [mask] * 3
    return prompts, np.stack(targets)


def prompted_losses(engine: SegmentEngine, images: torch.Tensor, prompts: list[list[Prompt]],
                    targets: list[np.ndarray]) -> torch.Tensor:
    """The ``segmentation_loss`` of every prompt of every image, P values in prompt order (one
    encoder pass for the B x 3 x H x W batch; ``targets[b]``: len(prompts[b]) x H x W masks).

    A lone point is scored by the best of its three multimask outputs (SAM's ambiguity-aware
    training), every other prompt by the single-mask output (token 0).
    """
    features = engine.embed(images)
    losses = []
    for b, (group, target_np) in enumerate(zip(prompts, targets)):
        target = torch.as_tensor(target_np, dtype=torch.float32, device=engine.device)
        prediction = engine.decode(features, group, image_index=b, validate=False)
        logits = engine.postprocess(prediction.low_res_all, features.orig_hw, features.input_hw)
        per_token = segmentation_loss(logits, target[:, None].expand_as(logits), prediction.iou_all)
        single_point = torch.tensor([p.is_single_point for p in group], device=per_token.device)
        losses.append(torch.where(single_point, per_token[:, 1:].min(1).values, per_token[:, 0]))
    return torch.cat(losses)


# ---------------------------------------------------------------------- evaluation
def attacked_quality(engine: SegmentEngine, scenes: list, attack: str, cfg: AdapterTrainConfig,
                     chunk: int = 8, cancel: threading.Event | None = None) -> dict[str, float]:
    """mIoU (``prompt_quality``) on the scenes after attacking each against ``engine`` itself.

    Attacks get the evaluation prompts (used by prompt-specific attacks such as "mask"); seeds
    are fixed per scene, so successive evaluations face comparable attacks. ``cancel`` (set) stops the
    attack after its current step (:class:`AttackCancelled`).
    """
    attacked = []
    for start in range(0, len(scenes), chunk):
        part = scenes[start:start + chunk]
        images = torch.cat([image_to_tensor(s.image) for s in part])
        prompts = [[p for m in s.masks for p in prompts_from_mask(m).values()] for s in part]
        request = AttackRequest(attack=attack, eps255=cfg.eps, steps=cfg.eval_attack_steps, generator=cfg.generator,
                                seed=cfg.seed * 7919 + start)
        result = craft(request, engine, images, prompts, cancel=cancel)
        attacked += [SimpleNamespace(image=result.to_uint8(i), masks=s.masks) for i, s in enumerate(part)]
    return prompt_quality(engine, attacked)


def heldout_quality(engine: SegmentEngine, scenes: list, cfg: AdapterTrainConfig,
                    cancel: threading.Event | None = None) -> dict:
    """Clean mIoU per prompt type, and under each of the config's evaluation attacks."""
    out = {"clean": prompt_quality(engine, scenes), "attacked": {}}
    for name in cfg.eval_attack_list():
        out["attacked"][name] = attacked_quality(engine, scenes, name, cfg, cancel=cancel)
    return out


def _summary(evaluation: dict) -> str:
    parts = [f"clean box {evaluation['clean']['box']:.3f}"]
    parts += [f"{name} box {q['box']:.3f}" for name, q in evaluation["attacked"].items()]
    return ", ".join(parts)


def metrics_table(cfg: AdapterTrainConfig, baseline: dict | None, final: dict | None, description: str,
                  heldout: int | None = None) -> dict:
    """The adapter's ``metrics``: baseline (original model) and final rows, plus the raw numbers.
    ``heldout``: the number of held-out images (default ``cfg.eval_scenes``)."""
    rows = []
    for label, result in (("original", baseline), ("adapted", final)):
        if result is None:
            continue
        rows.append({"condition": f"clean, {label}"} | {k: result["clean"][k] for k in ("point", "box", "mask")})
    for name in cfg.eval_attack_list():
        for label, result in (("original", baseline), ("adapted", final)):
            if result is not None and name in result["attacked"]:
                rows.append({"condition": f"{name} attack ({cfg.eps:g}/255, {cfg.eval_attack_steps} "
                                          f"steps, against the {label} model), {label}"}
                            | {k: result["attacked"][name][k] for k in ("point", "box", "mask")})
    note = (f"Held-out data: {description}; {cfg.eval_scenes if heldout is None else heldout} images. Attacks are white-box and adaptive: crafted "
            "against the model being evaluated (the original model for 'original' rows, the adapted one for "
            "'adapted' rows).")
    return {"table": rows, "baseline": baseline, "final": final, "note": note}


# ---------------------------------------------------------------------- training
def build_engine(cfg: AdapterTrainConfig, device: str | None = None) -> SegmentEngine:
    """The engine ``cfg`` names on ``device``: a registry model, or a random one of the ``--arch`` YAML."""
    from samdemo.factory import load_engine, random_engine

    if not cfg.arch:
        return load_engine(cfg.model, device=device)
    engine = random_engine(cfg.arch, cfg.seed)
    engine.model.to(device or "cpu")
    return engine


def image_seed(cfg: AdapterTrainConfig, step: int, position: int) -> int:
    """The attack seed of image ``position`` of the global batch of ``step`` (0-based): per image, so
    that an image faces the same attack whichever process crafts it."""
    return cfg.seed * 1_000_003 + step * cfg.batch + position


ProgressFn = Callable[..., None]  # progress(step, total, stage="...")


def train_adapter(cfg: AdapterTrainConfig, run_dir: Path, out_dir: Path | None = None, resume: bool = True,
                  engine: SegmentEngine | None = None, *, images: Sequence[np.ndarray] | None = None,
                  images_source: str = "images given in memory", progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> dict:
    """Train (or resume) in ``run_dir``; write the adapter folder to ``out_dir``. Returns the log.

    ``engine``: an existing engine (default: built from ``cfg.model`` / ``cfg.arch`` on ``cfg.device``); the adapter is
    applied to it in place during training and removed at the end, whatever happens (so give a copy
    of a model that others use meanwhile). ``images``: H x W x 3 uint8 arrays to train on instead of
    ``cfg.data``, label-free (:class:`ImageData`; ``images_source`` names them in the log).
    ``progress(step, total, stage=text)``: called before each held-out check and after every
    optimiser step (an exception raised there, e.g. a time limit, stops training). ``cancel``: once set,
    training stops within the current step (its attack stops after its current iteration) with
    :class:`AttackCancelled`; nothing is written to ``out_dir`` then.

    Under ``torchrun --nproc-per-node N`` process r takes images r, r + N, ... of every global
    batch of ``cfg.batch`` images, crafts their attacks (per-image seeds, :func:`image_seed`) and
    its share of the loss; the adapter's gradients are summed over the processes
    (``distributed.sum_gradients``), so N processes train as one. Process 0 alone evaluates and
    writes the checkpoint, the log and the adapter folder.
    """
    for name in cfg.attack_list() + cfg.eval_attack_list():
        AttackRequest(attack=name, eps255=cfg.eps)  # unknown names and a bad epsilon: a clear error before any work
    if not cfg.attack_list():
        raise ValueError("--attacks is empty: give at least one attack to train against.")
    if cfg.svd_select != "largest" and (cfg.method != "svd" or not cfg.svd_rank):
        raise ValueError(f"--svd-select {cfg.svd_select} chooses k singular values per layer: it needs --method svd "
                         "and --svd-rank k.")
    world = distributed.world_size()
    if cfg.batch % world:
        raise ValueError(f"--batch {cfg.batch} must be a multiple of the number of processes ({world}).")
    torch.manual_seed(cfg.seed)
    distributed.setup(cfg.device)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        engine = engine or build_engine(cfg, distributed.local_device(cfg.device))
        engine.model.eval()
        size = cfg.image_size or engine.image_size
        if images is not None:
            data = ImageData(images, engine, size, cfg.eval_scenes, images_source)
        elif cfg.data == "scenes":
            data = SceneData(size)
        else:
            data = ImageData.from_folder(Path(cfg.data), engine, size, cfg.eval_scenes)
        eval_set = data.heldout(cfg.eval_scenes)

        adapter = apply_adapter(engine, AdapterConfig(method=cfg.method, target_modules=cfg.target_list()),
                                rank=cfg.update_rank(), seed=cfg.seed, select=cfg.svd_select)
        try:
            return _train(cfg, run_dir, out_dir, resume, engine, adapter, data, eval_set, progress, cancel)
        finally:
            adapter.remove()
    finally:
        distributed.teardown()


def _train(cfg, run_dir, out_dir, resume, engine, adapter: Adapter, data, eval_set, progress=None,
           cancel=None) -> dict:
    rank, world = distributed.group()
    optimizer = torch.optim.Adam(adapter.param_groups(cfg.lr))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(cfg.steps, 1))))))
    state_path, log_path = run_dir / "state.pt", run_dir / "log.json"
    log: dict = {"config": asdict(cfg), "processes": world, "model": engine.name, "data": data.description,
                 "method": adapter.method,
                 "layers": adapter.names, "num_trainable": adapter.num_trainable,
                 "fingerprint": adapter.config.fingerprint, "heldout_images": len(eval_set), "train": [], "eval": [],
                 "seconds": 0.0}
    step = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if "deltas" in state:  # written before the baselines: svd, one "delta" per layer
            state |= {"method": "svd", "layers": list(state["deltas"]),
                      "adapter": {f"layers.{i}.delta": d for i, d in enumerate(state["deltas"].values())}}
        shapes = {name: tuple(t.shape) for name, t in state["adapter"].items()}
        if (state.get("fingerprint"), state["method"], state["layers"], shapes,
                state.get("layer_info", adapter.config.layers)) != (
                adapter.config.fingerprint, adapter.method, adapter.names,
                {name: tuple(t.shape) for name, t in adapter.state_dict().items()}, adapter.config.layers):
            raise RuntimeError(f"{state_path} belongs to another model, method, target layers, rank or choice of "
                               "singular values; use --no-resume or another --run-dir.")
        adapter.load_state_dict(state["adapter"])  # the parameters themselves: bit-exact resume
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step = int(state["step"])
        log = json.loads(log_path.read_text())
        log.setdefault("resumed", []).append({"step": step, "processes": world})

    def save():
        if rank != 0:
            return
        torch.save({"method": adapter.method, "layers": adapter.names, "adapter": adapter.state_dict(),
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step,
                    "fingerprint": adapter.config.fingerprint, "layer_info": adapter.config.layers}, state_path)
        log_path.write_text(json.dumps(log, indent=1))

    def report(stage: str) -> None:
        if progress is not None:
            progress(step, cfg.steps, stage=stage)

    def run_eval():
        if rank == 0:
            report("held-out check of the " + ("adapted" if step else "original") + " model")
            result = heldout_quality(engine, eval_set, cfg, cancel=cancel)
            adapter.refresh_tag()
            log["eval"].append({"step": step, "seconds": round(log["seconds"], 1)} | result)
            tqdm.write(f"step {step}: held-out mIoU {_summary(result)}")
            save()

    start, seconds_before = time.time(), log["seconds"]
    if cfg.eval_every and not any(e["step"] == 0 for e in log["eval"]) and step == 0:
        run_eval()  # the original model (adapter at identity)
    names = cfg.attack_list()
    positions = range(rank, cfg.batch, world)  # this process's images of every global batch
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train-adapter {engine.name}", disable=rank != 0)
    while step < cfg.steps:
        if cancel is not None and cancel.is_set():
            raise AttackCancelled(f"training cancelled at step {step} of {cfg.steps}")
        # one random stream per image of the global batch: any number of processes draws the same prompts
        rngs = [np.random.default_rng([cfg.seed, step, position]) for position in positions]
        indices = [step * cfg.batch + position for position in positions]
        samples = [data.train(i % cfg.train_pool if cfg.train_pool else i) for i in indices]
        prompts, targets = zip(*(instance_prompts(s.masks, cfg.instances, rng) for s, rng in zip(samples, rngs)))
        prompts, targets = [list(p) for p in prompts], list(targets)
        images = torch.cat([image_to_tensor(s.image) for s in samples]).to(engine.device)
        # each process's loss is its share of the global mean: its sum over the global number of prompts
        count = distributed.total(torch.tensor(float(sum(len(p) for p in prompts))))
        name = names[step % len(names)]
        if cfg.adv_weight:
            adv = torch.cat([
                craft(AttackRequest(attack=name, eps255=cfg.eps, steps=cfg.attack_steps, generator=cfg.generator,
                                    seed=image_seed(cfg, step, position)), engine, images[i:i + 1], [prompts[i]],
                      cancel=cancel).adv_images for i, position in enumerate(positions)]).to(engine.device)
            loss_adv = prompted_losses(engine, adv, prompts, targets).sum() / count
        else:  # clean-only fine-tuning (a control): no attack is crafted
            name, loss_adv = "none", torch.zeros((), device=engine.device)
        loss_clean = prompted_losses(engine, images, prompts, targets).sum() / count
        loss = cfg.adv_weight * loss_adv + cfg.clean_weight * loss_clean
        optimizer.zero_grad(set_to_none=True)  # the attacks may have left gradients on the adapter
        loss.backward()
        distributed.sum_gradients(adapter.parameters())
        optimizer.step()
        schedule.step()
        step += 1
        values = [distributed.total(part) for part in (loss, loss_adv, loss_clean)]
        log["seconds"] = seconds_before + time.time() - start
        log["train"].append([step, *(round(v, 5) for v in values), name])
        bar.update(1)
        bar.set_postfix(loss=f"{values[0]:.4f}", adv=f"{values[1]:.3f}", clean=f"{values[2]:.3f}", attack=name)
        report(f"step {step}/{cfg.steps}, loss {values[0]:.3f} (adversarial {values[1]:.3f}, clean {values[2]:.3f})")
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            run_eval()
        elif step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save()
        # every process stops at the same step: process 0's clock decides
        if cfg.minutes and distributed.agree(time.time() - start > cfg.minutes * 60) and step < cfg.steps:
            save()
            if rank == 0:
                tqdm.write(f"stopping after {cfg.minutes} minutes at step {step}; rerun to resume")
            break
    bar.close()
    adapter.refresh_tag()
    save()
    distributed.barrier()  # process 0 may still be evaluating or writing: the others wait before leaving
    if rank == 0 and out_dir is not None and step >= cfg.steps:
        from samdemo.plots import singular_value_plot

        evals = log["eval"]
        baseline = next((e for e in evals if e["step"] == 0), None)
        final = evals[-1] if evals and evals[-1]["step"] == step else None
        metrics = metrics_table(cfg, baseline, final, data.description, len(eval_set))
        recipe = asdict(cfg) | {"completed_steps": step,
                                "train_seconds": round(log["seconds"], 1), "data_description": data.description,
                                "num_trainable": adapter.num_trainable, "lr_rule": LAYER_TYPES[cfg.method].lr_rule,
                                "lr_per_tensor": {g["name"]: g["lr"] for g in optimizer.param_groups},
                                "objective": "adv_weight * L_seg(adversarial) + clean_weight * L_seg(clean); "
                                             "L_seg = 20 focal + dice + IoU MSE (train_base.segmentation_loss)"}
        save_adapter(adapter, out_dir, training=recipe, metrics=metrics, training_log=log,
                     figure=singular_value_plot(adapter))
        tqdm.write(f"adapter written to {out_dir}")
    return log


# ---------------------------------------------------------------------- CLI
def parse_eps(text: str) -> float:
    """``--eps`` in 1/255 units like every command ('8'), or an explicit fraction ('8/255') -> 1/255 units."""
    try:
        value = float(Fraction(str(text)) * 255) if "/" in str(text) else text
        eps_from_255(value)  # the threat model's bound, with its message
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--eps is in 1/255 units (e.g. 8, at most 32) or a fraction like 8/255; got {text!r}") from None
    return float(value)


HELP = {
    "model": "registry name of the base model (its trained weights)",
    "arch": "architecture YAML with random weights instead of --model (tests, smoke runs)",
    "data": "'scenes' (procedural scenes, ground-truth masks) or a folder of images (label-free)",
    "targets": "comma-separated module globs to adapt (default: the family's neck layers)",
    "method": "svd (singular values, the defense), lora or full (baselines on the same layers)",
    "lora_rank": "rank of the LoRA update (--method lora)",
    "svd_rank": "train only the k largest singular values of each layer (--method svd; 0: all)",
    "svd_select": "which k singular values --svd-rank trains: the k largest (the defense) or k drawn at random "
                  "per layer (seeded by --seed; a control)",
    "steps": "optimiser steps", "batch": "images per step",
    "instances": "target masks per image per step (a point, a box and a mask prompt each)",
    "lr": "relative learning rate: a step changes each weight by about lr x its Frobenius norm",
    "warmup": "linear warm-up steps (then cosine decay to 10 %%)",
    "adv_weight": "weight of the loss on adversarial images (0: clean-only fine-tuning, a control)", "clean_weight": "weight of the loss on clean images",
    "attacks": "comma-separated attacks to train against, one per step in turn",
    "attack_steps": "attack iterations per training step", "generator": "attack noise generator (pgd, ...)",
    "seed": "seed of data, prompts and attacks (per step)",
    "train_pool": "cycle through this many training images (0: a fresh one each time)",
    "image_size": "folder data: square size the images are cropped and resized to (0: model input size)",
    "eval_every": "held-out evaluation every N steps (0: none)", "eval_scenes": "held-out images",
    "eval_attacks": "comma-separated attacks for the held-out robust mIoU",
    "eval_attack_steps": "iterations of the evaluation attacks",
    "checkpoint_every": "write RUN_DIR/state.pt every N steps",
    "minutes": "stop (resumably) after this wall time (0: no limit)",
}


def configure_parser(parser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="adapter folder to write (default: checkpoints/<model>-adapter, where the app looks for "
                             "the shipped adapter; checkpoints/<model>-adapter-lora-r<R> / -adapter-full for the "
                             "baselines; required with --arch)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="checkpoints and log.json (default: runs/adapter-<model>[-lora-r<R>|-full]); reruns "
                             "resume from it")
    for name, default in asdict(AdapterTrainConfig()).items():
        flag = f"--{name.replace('_', '-')}"
        if name == "eps":
            parser.add_argument(flag, type=parse_eps, default=default,
                                help="L-inf budget in 1/255 units like every command (default 8; 8/255 also reads)")
        elif name in ("method", "svd_select"):
            choices = METHODS if name == "method" else SVD_SELECTIONS
            parser.add_argument(flag, choices=choices, default=default, help=f"{HELP[name]} (default: {default})")
        elif name == "device":
            distributed.add_device_argument(parser)
        else:
            parser.add_argument(flag, type=type(default), default=default,
                                help=f"{HELP.get(name, '')} (default: {default})".strip())
    parser.add_argument("--no-resume", action="store_true", help="start over even if the run dir has a checkpoint")


def run(args) -> int:
    cfg = AdapterTrainConfig(**{k: getattr(args, k) for k in asdict(AdapterTrainConfig())})
    if args.out is None and cfg.arch:
        raise ValueError("--out is required with --arch (a random-weight model has no shipped adapter folder).")
    from samdemo.build import CHECKPOINT_DIR

    out = args.out or CHECKPOINT_DIR / f"{cfg.model}-adapter{cfg.variant()}"
    run_dir = args.run_dir or Path("runs") / f"adapter-{cfg.model}{cfg.variant()}"
    log = train_adapter(cfg, run_dir, out, resume=not args.no_resume)
    if log["eval"]:
        print(f"held-out mIoU: step 0: {_summary(log['eval'][0])}; step {log['eval'][-1]['step']}: "
              f"{_summary(log['eval'][-1])}")
    return 0
