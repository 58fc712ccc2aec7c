"""Evaluate attacks and defenses over a dataset (``python -m samdemo evaluate``).

    python -m samdemo evaluate --model sam-small --adapter checkpoints/sam-small-adapter --data scenes \
        --attacks cross-prompt,mask,feature,random --prompts point,box,mask --eps 8 --steps 10 \
        --limit 50 --seed 0 --out runs/eval

Defenses: ``none`` (the original model) and one per ``--adapter`` (a local folder or Hub id,
``samdemo.hub.resolve_adapter`` then ``samdemo.defense.load_adapter_folder`` on its own copy of
the model), labelled by the folder name (the repo id for the Hub) and the ``method`` of its
adapter_config.json ("svd" when absent). Modes:
``white-box`` (defense none: crafted and evaluated on the original model), ``transfer`` (crafted
on the original model, evaluated on the defense; each attack is crafted once per image and
evaluated on every defense) and ``adaptive`` (crafted on the defense itself).

Objects: the ``--max-instances`` largest ground-truth instances of an image, each prompted
with its centre-most point (``point``), tight box (``box``), its mask (``mask``) and optionally
three positive points drawn uniformly from it (``points``), a blocky 12 x 12-cell copy of its mask
(``coarse-mask``: the exact mask is copied back by the decoder, so it measures the prompt, not the
model) and that with the point (``coarse-mask+point``); attacks are crafted with the first four only. Attacks and point draws are seeded
per image from ``--seed`` and the image name, so results do not depend on the image order.

Metrics per record (one defense x mode x attack x crafting type x evaluation type), pooled over
all instances of all images: ``miou_gt`` (adversarial prediction vs ground truth),
``miou_clean`` (vs the same model's clean prediction with the same prompt), ``clean_miou_gt``
(no attack), ``grey_miou_gt`` (the same prompts on a uniform grey image: what the model answers
without the image), ``asr`` (fraction of instances with IoU(adversarial, clean prediction) < 0.5), each
with a 95 % percentile-bootstrap interval over images (1000 resamples of whole images, the same
resamples for every record, seeded by ``--seed``).

Files in ``--out``:

* ``per_image.jsonl`` (under torchrun: ``per_image.rank<r>.jsonl``, one per process, same format): line 1
  ``{"settings": {...}}``, then one line per image:
  ``{"name", "instances", "seconds", "threads" (torch's intra-op threads), "cpu" (the vector instructions torch
  uses, ``torch.backends.cpu.get_cpu_capability()``: "AVX2", "AVX512", ...), "clean": {defense: {type: [IoU vs GT per instance]}}, "grey": (same),
  "attacked": [{"defense", "mode", "attack", "crafted_with", "evaluated_with", "iou_gt": [...],
  "iou_clean": [...]}]}`` (or ``{"name", "instances": 0, "skipped": reason}``). A rerun with the
  same settings skips the images already there (``--limit`` may change; every log in ``--out`` counts, whatever
  the number of processes that wrote it); other settings are an error.
* ``results.json``: ``{"header": {"settings": {"model", "adapters", "data", "attacks", "prompts",
  "eps" (1/255 units), "steps", "generator", "seed", "max_instances", "max_side", "restarts", "attack_options"
  ({attack: {keyword: value}}, only when any: the model's chosen ones, ``samdemo.build.attack_options``, and
  ``--attack-option``), "defenses":
  [{"label", "method", "ref", "digest"}]}, "limit", "images", "instances", "skipped" (names),
  "ci": {"method", "level", "resamples", "seed"}, "asr_threshold", "versions", "created"},
  "records": [{"model", "defense", "method", "mode", "attack", "crafted_with", "evaluated_with",
  "n" (instances), "images", "miou_gt", "miou_gt_ci", "miou_clean", "miou_clean_ci",
  "clean_miou_gt", "clean_miou_gt_ci", "asr", "asr_ci"}]}``; ``*_ci`` are ``[low, high]``;
  ``crafted_with`` is "none" for prompt-free attacks.
* ``results.csv`` (the records, ``*_ci`` split into ``*_lo`` / ``*_hi``), ``report.md``,
  ``bars.png`` (mIoU vs GT and ASR per attack and prompt type), ``transfer.png`` (heatmaps
  crafted-with x evaluated-with of the IoU vs the clean prediction).

Batches: ``--batch-images B`` crafts every attack for B images at once (one forward + backward over the batch per
step; :func:`evaluate_images`). Each image keeps its own seed, loss, best iterate and APGD state, so the records do
not depend on B (not a setting: a run may be resumed with another B); an image's ``seconds`` is its share of its
group's time.

Reproducibility: with the same settings and thread count, on a CPU with the same vector instructions, an image's
entry is the same bit for bit. Another thread count or instruction set (AVX2 / AVX512) rounds differently, and a
100-step sign-gradient attack amplifies that: attacked IoUs move by a few points on most objects, and on an image
where the attack is near a tipping point it can end elsewhere (``threads`` and ``cpu`` in each entry say what made
it; ``scripts/compare_defenses.py`` refuses to merge runs whose shared records differ).

Scale out: ``torchrun --nproc-per-node N -m samdemo evaluate ...`` (several nodes through torchrun's
rendezvous). The processes join a gloo group (barriers only; ``samdemo.distributed``), each runs on
``cuda:<local rank>`` (or ``--device``; the CPU without CUDA) and takes every N-th of the images still to do
(image i to rank i % N in a new run), appending to its own log; rank 0 waits for all, merges every log in
dataset order and writes the outputs above, the same as one process would (the per-image seeds do not depend
on which process evaluates an image; on CPUs, the same threads per process give the same bits). On several
nodes ``--out`` must be a folder they share. Not under torchrun (or with N = 1) nothing changes.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import platform
import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from samdemo import distributed
from samdemo.attacks.transfer import DEFAULT_ATTACKS, attack_rows, object_prompts
from samdemo.engine import SegmentEngine, image_to_tensor
from samdemo.metrics import ATTACK_SUCCESS_IOU, batch_iou
from samdemo.pipeline import AttackRequest, craft, predict_types
from samdemo.prompts import PROMPT_TYPES, Prompt, blocky_mask, mask_prompt
from samdemo.protocol import WORST_CASE, pooled_bootstrap, worst_case_gains, worst_case_rows

# "points": several positive clicks; "coarse-mask": a blocky copy of the ground truth as the mask prompt, which
# the decoder cannot copy back (the exact mask measures the prompt, not the model); "coarse-mask+point": with the
# centre-most point. Attacks are crafted with the first four kinds only.
DERIVED_TYPES = ("coarse-mask", "coarse-mask+point")
EVAL_PROMPT_TYPES = (PROMPT_TYPES[0], "points", *PROMPT_TYPES[1:], *DERIVED_TYPES)
GREY = 128  # the featureless image of the grey baseline
DEFAULT_PROMPTS = PROMPT_TYPES
CI_LEVEL, CI_RESAMPLES = 0.95, 1000
SAMPLED_POINTS = 3
LOG_FILE = "per_image.jsonl"
RANK_LOG_FILE = "per_image.rank{}.jsonl"  # process ``rank``'s records under torchrun


@dataclass
class Defense:
    """label: "none" or the adapter's name; method: "none" or the adapter's method; ref: as given."""

    label: str
    method: str
    engine: SegmentEngine
    ref: str | None = None
    digest: str | None = None  # sha256 of the adapter's config and weights (a changed adapter is a new run)


@dataclass
class Settings:
    """Everything that determines the numbers (a resumed run must match); eps in 1/255 units."""

    model: str
    adapters: list[str]
    data: str
    attacks: list[str]
    prompts: list[str]
    eps: float
    steps: int
    generator: str
    seed: int
    max_instances: int
    max_side: int
    restarts: int = 1
    # {attack: {keyword: value}}: the model's chosen options (samdemo.build.attack_options) and --attack-option
    attack_options: dict = field(default_factory=dict)

    def request(self, attack: str, seed: int | tuple[int, ...]) -> AttackRequest:
        """The attack ``attack`` under this run's threat model, seeded per image (a tuple: one seed per image
        of the batch)."""
        return AttackRequest(attack=attack, generator=self.generator, eps255=self.eps, steps=self.steps, seed=seed,
                             restarts=self.restarts, options=self.attack_options.get(attack, {}))

    def recorded(self) -> dict:
        """The settings as the logs' header holds them. ``attack_options`` only when there are any, so that the
        logs of runs from before the field existed (every attack at its class defaults) still match."""
        settings = _jsonable(asdict(self))
        if not settings["attack_options"]:
            del settings["attack_options"]
        return settings


# ------------------------------------------------------------------------------------------ CLI
def configure_parser(parser) -> None:
    from samdemo.attacks import GENERATORS
    from samdemo.attacks.base import DEFAULT_STEPS, EPS_MAX_255
    from samdemo.build import DEFAULT_MODEL
    from samdemo.datasets import DEFAULT_MAX_SIDE

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default {DEFAULT_MODEL})")
    parser.add_argument("--adapter", action="append", default=[], metavar="REF",
                        help="defense: adapter folder or Hub id owner/name; repeat for several")
    parser.add_argument("--data", default="scenes", help="scenes[:N] | DIR | coco:ANN.json[:IMAGES_DIR] | sa1b:DIR "
                                                          "(see samdemo/datasets.py); default scenes")
    parser.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS), help="comma-separated attacks")
    parser.add_argument("--prompts", default=",".join(DEFAULT_PROMPTS),
                        help=f"comma-separated prompt types among {', '.join(EVAL_PROMPT_TYPES)}")
    parser.add_argument("--eps", type=float, default=8.0, help=f"L-inf bound in 1/255 units (0..{EPS_MAX_255}), default 8")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="attack iterations, default 10")
    parser.add_argument("--generator", default="pgd", choices=list(GENERATORS),
                        help="noise generator; apgd = Auto-PGD (Croce & Hein 2020)")
    parser.add_argument("--restarts", type=int, default=1,
                        help="random starts per attack; each image keeps its best iterate over all, default 1")
    parser.add_argument("--attack-option", action="append", default=[], metavar="ATTACK:KEY=VALUE",
                        help="an attack's option over the model's chosen ones (samdemo/build.py; e.g. "
                             "cross-prompt:grid=4); repeat for several; recorded in the settings")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    parser.add_argument("--max-instances", type=int, default=8, help="largest instances per image, default 8")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help=f"downscale larger images to this longest side, default {DEFAULT_MAX_SIDE}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-images", type=int, default=1, metavar="B",
                        help="craft each attack for B images at once (one forward + backward over a batch per "
                             "step; images of one size); every image keeps its own seed, loss and best iterate, "
                             "so the results do not depend on B (see docs/METHOD.md); default 1")
    distributed.add_device_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")


def parse_settings(args) -> Settings:
    """Validate the arguments; ValueError with one clear message otherwise."""
    from samdemo.attacks.base import eps_from_255, validate_restarts, validate_steps
    from samdemo.build import attack_options, get_spec
    from samdemo.pipeline import parse_option

    get_spec(args.model)  # unknown model: a clear error before anything is loaded
    attacks = _split(args.attacks, "--attacks")
    attack_rows(attacks)  # unknown attack names
    options = {attack: attack_options(args.model, attack) for attack in attacks}
    for text in args.attack_option:
        attack, key, value = parse_option(text)
        if attack not in attacks:
            raise ValueError(f"--attack-option {text!r}: {attack} is not among --attacks.")
        options[attack][key] = value
    prompts = _split(args.prompts, "--prompts")
    unknown = [p for p in prompts if p not in EVAL_PROMPT_TYPES]
    if unknown:
        raise ValueError(f"Unknown prompt type {unknown[0]!r} in --prompts; choose among {', '.join(EVAL_PROMPT_TYPES)}.")
    eps_from_255(args.eps)
    validate_steps(args.steps)
    validate_restarts(args.restarts)
    for name in ("limit", "max_instances", "max_side", "batch_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {value}.")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0; got {args.seed}.")
    if len(set(args.adapter)) < len(args.adapter):
        raise ValueError("The same --adapter is given twice.")
    return Settings(args.model, list(args.adapter), args.data, attacks, prompts, float(args.eps), args.steps,
                    args.generator, args.seed, args.max_instances, args.max_side, args.restarts,
                    {attack: chosen for attack, chosen in options.items() if chosen})


def _split(value: str, option: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items or len(set(items)) < len(items):
        raise ValueError(f"{option} must be a comma-separated list without repeats; got {value!r}.")
    return items


def run(args) -> int:
    from samdemo.datasets import open_dataset
    from samdemo.factory import load_engine

    settings = parse_settings(args)
    distributed.setup(args.device, backend="gloo")  # torchrun: join the other processes (barriers only)
    try:
        device = distributed.local_device(args.device)
        if device.startswith("cuda") and ":" in device:
            torch.cuda.set_device(torch.device(device))
        base = load_engine(settings.model, device=device, frozen=True)
        dataset = open_dataset(settings.data, scene_size=base.image_size, max_side=settings.max_side)
        defenses = load_defenses(base, settings.adapters)
        results = evaluate(defenses, dataset, settings, args.out, limit=args.limit, batch_images=args.batch_images)
    finally:
        distributed.teardown()
    if results is None:  # another process than rank 0: its records are in its log, rank 0 wrote the results
        return 0
    header = results["header"]
    print(f"{header['images']} images, {header['instances']} instances, {len(results['records'])} records "
          f"-> {args.out / 'report.md'}")
    return 0


# ------------------------------------------------------------------------------------------ defenses
def load_defenses(base: SegmentEngine, refs: list[str]) -> list[Defense]:
    """``none`` (``base`` itself) and, per ref, an adapter loaded onto a copy of the base model."""
    from samdemo.factory import robust_copy
    from samdemo.hub import resolve_adapter

    base.model.requires_grad_(False)  # attacks need gradients to the pixels only
    defenses = [Defense("none", "none", base)]
    for ref in refs:
        folder = resolve_adapter(ref)
        engine, adapter = robust_copy(base, folder, merge=False)
        label = Path(ref).expanduser().resolve().name if Path(ref).expanduser().is_dir() else ref
        if label in [d.label for d in defenses]:
            raise ValueError(f"Two defenses would both be called {label!r}; rename one adapter folder.")
        defenses.append(Defense(label, adapter.method, engine, ref, _folder_digest(folder)))
    return defenses


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted([folder / "adapter_config.json", *folder.glob("*.safetensors")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ one image
def image_seed(seed: int, name: str) -> int:
    """Per-image seed: independent of the image order, so a resumed run draws the same."""
    return zlib.crc32(f"{seed}/{name}".encode())


def largest_instances(masks: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest N x H x W masks, in their original order."""
    order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")[:k]
    return masks[np.sort(order)]


def sampled_points(mask: np.ndarray, rng: np.random.Generator, k: int = SAMPLED_POINTS) -> Prompt:
    """``k`` positive points drawn uniformly from the pixels of an H x W mask (x, y in pixels)."""
    ys, xs = np.nonzero(mask)
    pick = rng.choice(len(xs), size=k, replace=len(xs) < k)
    return Prompt(points=np.stack([xs[pick], ys[pick]], 1).astype(np.float32), labels=np.ones(k, np.int64))


@dataclass
class _Image:
    """One image of a group in :func:`evaluate_images`: its objects, 1 x 3 x H x W tensor, N x H x W ground truth,
    attack seed, clean masks per defense and type, and its log entry."""

    objects: list[dict[str, Prompt]]
    x: torch.Tensor
    gt: torch.Tensor
    seed: int
    clean: dict[str, dict[str, torch.Tensor]]
    entry: dict


def evaluate_images(defenses: list[Defense], samples: list[tuple[np.ndarray, np.ndarray, int]],
                    settings: Settings) -> list[dict]:
    """Raw per-instance IoUs of a group of images, one entry per ``(H x W x 3 uint8 image, N x H x W ground-truth
    masks (N >= 1), attack seed)``.

    Each attack row is crafted once for the whole group: one batch per image size (``craft`` with one seed per
    image), so an attack step is one forward + backward over the batch. The attacks keep every image's randomness,
    loss and best iterate its own (``samdemo.attacks.base``): an image's entry is the one it gets in a group of one,
    as far as the model gives an image the same bits in a batch as alone."""
    images = [_setup_image(defenses, *sample, settings) for sample in samples]
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.x.shape), []).append(i)
    types = settings.prompts
    rows = attack_rows(settings.attacks, [t for t in types if t not in DERIVED_TYPES])
    for crafter in defenses:
        # the original model's attacks are evaluated on every defense (transfer): crafted once
        targets = defenses if crafter is defenses[0] else [crafter]
        for _, attack, craft_type in rows:
            adversarial = {}
            for batch in by_size.values():
                result = craft(settings.request(attack, tuple(images[i].seed for i in batch)), crafter.engine,
                               torch.cat([images[i].x for i in batch]),
                               [[o[craft_type] for o in images[i].objects] for i in batch] if craft_type else None)
                adversarial |= {i: result.adv_images[j:j + 1] for j, i in enumerate(batch)}
            for i, image in enumerate(images):
                for target in targets:
                    mode = "white-box" if target is defenses[0] else "transfer" if crafter is defenses[0] else "adaptive"
                    adv = predict_types(target.engine, adversarial[i], image.objects, types)
                    image.entry["attacked"] += [
                        {"defense": target.label, "mode": mode, "attack": attack, "crafted_with": craft_type or "none",
                         "evaluated_with": t, "iou_gt": _ious(adv[t], image.gt),
                         "iou_clean": _ious(adv[t], image.clean[target.label][t])} for t in types]
    return [image.entry for image in images]


def _setup_image(defenses: list[Defense], image: np.ndarray, masks: np.ndarray, seed: int,
                 settings: Settings) -> _Image:
    """An image's objects and prompts of every type, and its entry with the clean and grey IoUs (no attack yet)."""
    objects, masks = object_prompts(defenses[0].engine, image, largest_instances(masks, settings.max_instances))
    if "points" in settings.prompts:
        rng = np.random.default_rng(seed)
        for prompts, mask in zip(objects, masks):
            prompts["points"] = sampled_points(mask, rng)
    for prompts, mask in zip(objects, masks):
        coarse = blocky_mask(mask)
        prompts["coarse-mask"] = mask_prompt(coarse)
        prompts["coarse-mask+point"] = Prompt(points=prompts["point"].points, labels=prompts["point"].labels,
                                              mask=coarse)
    types = settings.prompts
    x, gt = image_to_tensor(image), torch.as_tensor(masks)
    grey = torch.full_like(x, GREY / 255)
    clean = {d.label: predict_types(d.engine, x, objects, types) for d in defenses}
    entry = {"instances": len(objects),
             "clean": {d.label: {t: _ious(clean[d.label][t], gt) for t in types} for d in defenses},
             # the same prompts on a uniform grey image: what the model answers without the image
             "grey": {d.label: {t: _ious(m, gt) for t, m in predict_types(d.engine, grey, objects, types).items()}
                      for d in defenses},
             "attacked": []}
    return _Image(objects, x, gt, seed, clean, entry)


def _ious(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    return [round(v, 6) for v in batch_iou(pred, target).tolist()]


# ------------------------------------------------------------------------------------------ the run
def evaluate(defenses: list[Defense], dataset, settings: Settings, out: Path, limit: int | None = None,
             batch_images: int = 1) -> dict | None:
    """Evaluate the first ``limit`` samples of ``dataset`` (resuming from the per-image logs in ``out``), then
    write results.json, results.csv, report.md and the plots. Returns the results.json content.

    ``batch_images``: images whose attacks are crafted together (:func:`evaluate_images`), in the order they are
    evaluated; their records are written when their group is done. Not a setting: the records do not depend on it,
    and a run may be resumed with another value.

    In a process group (torchrun, :func:`samdemo.distributed.setup`) the images still to do are dealt out
    round-robin (the i-th to rank i % world size), each rank appends to its own log, and rank 0 waits for all,
    merges every log in dataset order and writes the outputs; the other ranks return None."""
    from tqdm import tqdm

    rank, world = distributed.group()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = {"settings": settings.recorded() | {"defenses": [
        {"label": d.label, "method": d.method, "ref": d.ref, "digest": d.digest} for d in defenses]}}
    had_logs = bool(log_files(out))
    done = read_logs(out, recorded)
    distributed.barrier()  # every process has read the logs before any writes to one: they agree on what is left
    names = dataset.names[:limit]
    todo = [i for i, name in enumerate(names) if name not in done]
    mine = todo[rank::world]
    own = out / (LOG_FILE if world == 1 else RANK_LOG_FILE.format(rank))
    if mine or own.exists() or (rank == 0 and not had_logs):  # a new run records its settings, even with nothing to do
        _prepare_log(own, recorded)
    progress = (dict(desc="evaluate", initial=len(names) - len(todo), total=len(names)) if world == 1 else
                dict(desc=f"evaluate (rank 0 of {world})", total=len(mine)))
    with (open(own, "a", encoding="utf-8") if mine else contextlib.nullcontext() as log,
          tqdm(unit="image", disable=rank != 0, **progress) as bar):
        for first in range(0, len(mine), batch_images):
            samples = [dataset[index] for index in mine[first:first + batch_images]]
            start = time.perf_counter()
            measured = iter(evaluate_images(defenses, [(s.image, s.masks, image_seed(settings.seed, s.name))
                                                       for s in samples if len(s.masks)], settings))
            seconds = round((time.perf_counter() - start) / len(samples), 3)  # each image's share of its group
            for sample in samples:
                entry = next(measured) if len(sample.masks) else {"instances": 0, "skipped": "no instance"}
                # the thread count and the CPU's vector instructions change float rounding, which the attacks'
                # sign steps can amplify: a rerun reproduces an image bit for bit only with the same of both
                entry = {"name": sample.name} | entry | {"seconds": seconds, "threads": torch.get_num_threads(),
                                                         "cpu": torch.backends.cpu.get_cpu_capability()}
                log.write(json.dumps(entry) + "\n")
                done[sample.name] = entry
            log.flush()
            bar.update(len(samples))
    distributed.barrier()  # every process's records are written
    if rank != 0:
        return None
    if world > 1:
        done = read_logs(out, recorded)
    missing = [name for name in names if name not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no record in {out} after the run (e.g. {missing[0]!r}); "
                           "under torchrun on several nodes --out must be a folder every process shares.")
    entries = [done[name] for name in names]
    records = aggregate(entries, defenses, settings)
    results = {"header": {**recorded, "limit": limit, "images": sum(1 for e in entries if e["instances"]),
                          "instances": sum(e["instances"] for e in entries),
                          "skipped": [e["name"] for e in entries if not e["instances"]],
                          "ci": {"method": "percentile bootstrap over images", "level": CI_LEVEL,
                                 "resamples": CI_RESAMPLES, "seed": settings.seed},
                          "asr_threshold": ATTACK_SUCCESS_IOU, "versions": _versions(),
                          "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
               "records": records, "gains": worst_case_gains(entries, "none", settings.seed)}
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    write_csv(records, out / "results.csv")
    write_report(results, out)
    return results


def log_files(out: Path) -> list[Path]:
    """The per-image logs in ``out``: a single process's, then one per rank of distributed runs (any number of
    processes: a run may be resumed with another)."""
    ranks = sorted((int(m.group(1)), path) for path in out.glob(RANK_LOG_FILE.format("*"))
                   if (m := re.fullmatch(r"per_image\.rank(\d+)\.jsonl", path.name)))
    single = out / LOG_FILE
    return ([single] if single.exists() else []) + [path for _, path in ranks]


def read_logs(out: Path, recorded: dict) -> dict[str, dict]:
    """Entries already in the logs of ``out`` (by image name; the first record of an image counts). Reads only:
    a partial last line (an interrupted write) is left out, and the file is repaired by its writer."""
    done: dict[str, dict] = {}
    for path in log_files(out):
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            continue
        lines = text.splitlines()
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            raise ValueError(f"{path}: the first line is not the settings header; use another --out.") from None
        if header != recorded:
            old, new = header.get("settings", {}), recorded["settings"]
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise ValueError(f"{path.parent} holds results of other settings (differing: {', '.join(changed)}); "
                             f"use another --out or delete {path}.")
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{path}: line {number} is not valid JSON; delete the file to start over.") from None
                break  # an interrupted write: that image is evaluated again
            done.setdefault(entry["name"], entry)
    return done


def _prepare_log(path: Path, recorded: dict) -> None:
    """Make ``path`` ready for appending: a new log starts with the settings line; an interrupted last line is
    dropped (or, when complete but unterminated, ended). Replaced atomically: other processes may be reading."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = old.splitlines()
    if not old.strip():
        lines = [json.dumps(recorded)]
    elif len(lines) > 1:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    text = "\n".join(lines) + "\n"
    if text == old:
        return
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _jsonable(value):
    return json.loads(json.dumps(value))


def _versions() -> dict:
    import samdemo

    return {"samdemo": samdemo.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__}


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(entries: list[dict], defenses: list[Defense], settings: Settings) -> list[dict]:
    """Records pooled over the instances of all evaluated images, with bootstrap intervals over images."""
    entries = [e for e in entries if e["instances"]]
    if not entries:
        return []
    method = {d.label: d.method for d in defenses}
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        for row in worst_case_rows(entry) + entry["attacked"]:  # the headline first
            key = (row["defense"], row["mode"], row["attack"], row["crafted_with"], row["evaluated_with"])
            grey = entry.get("grey", {}).get(row["defense"], {}).get(row["evaluated_with"])
            groups.setdefault(key, []).append(row | {"clean": entry["clean"][row["defense"]][row["evaluated_with"]],
                                                     "grey": grey})
    records = []
    for (defense, mode, attack, crafted, evaluated), rows in groups.items():
        metrics = {"miou_gt": [r["iou_gt"] for r in rows], "miou_clean": [r["iou_clean"] for r in rows],
                   "clean_miou_gt": [r["clean"] for r in rows],
                   "asr": [[float(v < ATTACK_SUCCESS_IOU) for v in r["iou_clean"]] for r in rows]}
        if all(r["grey"] is not None for r in rows):  # logs written before the grey baseline have none
            metrics["grey_miou_gt"] = [r["grey"] for r in rows]
        record = {"model": settings.model, "defense": defense, "method": method.get(defense, "?"), "mode": mode,
                  "attack": attack, "crafted_with": crafted, "evaluated_with": evaluated,
                  "n": sum(len(v) for v in metrics["miou_gt"]), "images": len(rows)}
        for name, per_image in metrics.items():
            mean, low, high = pooled_mean_ci(per_image, settings.seed)
            record |= {name: round(mean, 6), f"{name}_ci": [round(low, 6), round(high, 6)]}
        records.append(record)
    return records


def pooled_mean_ci(per_image: list[list[float]], seed: int, level: float = CI_LEVEL,
                   resamples: int = CI_RESAMPLES) -> tuple[float, float, float]:
    """Mean over all instances, and its percentile-bootstrap interval resampling whole images
    (instances of one image are correlated: they share the perturbation)."""
    return pooled_bootstrap(np.array([np.sum(v) for v in per_image]), np.array([len(v) for v in per_image]),
                            seed, level, resamples)


# ------------------------------------------------------------------------------------------ outputs
def attack_label(record: dict) -> str:
    if record["attack"] == WORST_CASE or record["crafted_with"] == "none":
        return record["attack"]
    return f"{record['attack']}@{record['crafted_with']}"


def write_csv(records: list[dict], path: Path) -> None:
    """The records, each ``<metric>_ci`` as ``<metric>_lo``, ``<metric>_hi`` columns after its metric."""
    rows = []
    for record in records:
        row = {}
        for key, value in record.items():
            if key.endswith("_ci"):
                row[f"{key[:-3]}_lo"], row[f"{key[:-3]}_hi"] = value
            else:
                row[key] = value
        rows.append(row)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)


def _panels(records: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["defense"], r["mode"]) for r in records))


def write_report(results: dict, out: Path) -> None:
    """report.md with a table per defense and mode, bars.png and transfer.png."""
    header, records = results["header"], results["records"]
    s = header["settings"]
    skipped = f"; {len(header['skipped'])} images without instances skipped" if header["skipped"] else ""
    lines = [f"# Robustness evaluation: {s['model']}", "",
             f"Data `{s['data']}`: {header['images']} images, {header['instances']} instances "
             f"(at most {s['max_instances']} per image{skipped}). "
             f"eps {s['eps']:g}/255, {s['steps']} {s['generator']} steps x {s.get('restarts', 1)} random start(s), "
             f"best iterate per image, seed {s['seed']}. "
             f"Defenses: {', '.join(d['label'] + ' (' + d['method'] + ')' for d in s['defenses'])}.", "",
             f"mIoU pooled over instances; ASR: fraction of instances whose IoU with the same model's clean "
             f"prediction falls below {ATTACK_SUCCESS_IOU}. Brackets: {CI_LEVEL:.0%} bootstrap intervals over images.", ""]
    lines += [f"Headline: **{WORST_CASE}** mIoU, per object the lowest IoU over every attack row evaluated on "
              "that defense (white-box for none; transfer and adaptive for an adapter), as AutoAttack's per-sample "
              "worst case. Per-attack rows follow it.", ""]
    if results.get("gains"):
        lines += ["## Worst-case gains over the original model (paired bootstrap over images)", "",
                  "| defense | evaluated with | gain in worst-case mIoU (GT) |", "| --- | --- | --- |"]
        lines += [f"| {g['defense']} | {g['evaluated_with']} | {g['gain']:+.3f} [{g['gain_ci'][0]:+.3f}, "
                  f"{g['gain_ci'][1]:+.3f}] |" for g in results["gains"]]
        lines.append("")
    if records:
        write_plots(records, out)
        lines += ["![mIoU and ASR per attack](bars.png)", "", "![transfer matrices](transfer.png)", ""]
    for defense, mode in _panels(records):
        lines += [f"## {defense}, {mode}", "",
                  "| attack | evaluated with | clean mIoU (GT) | attacked mIoU (GT) | mIoU vs clean | ASR |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in records:
            if (r["defense"], r["mode"]) == (defense, mode):
                cells = [f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]"
                         for k in ("clean_miou_gt", "miou_gt", "miou_clean", "asr")]
                lines.append(f"| {attack_label(r)} | {r['evaluated_with']} | " + " | ".join(cells) + " |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def write_plots(records: list[dict], out: Path) -> None:
    from matplotlib.figure import Figure

    panels = _panels(records)
    types = list(dict.fromkeys(r["evaluated_with"] for r in records))
    labels = list(dict.fromkeys(attack_label(r) for r in records))
    find = {(r["defense"], r["mode"], attack_label(r), r["evaluated_with"]): r for r in records}

    figure = Figure(figsize=(max(5.0, 0.9 * len(labels) + 1.5) * len(panels), 7.0), layout="constrained")
    axes = figure.subplots(2, len(panels), squeeze=False)
    width = 0.8 / len(types)
    for col, (defense, mode) in enumerate(panels):
        for row, (metric, groups) in enumerate((("miou_gt", ["clean", *labels]), ("asr", labels))):
            ax = axes[row, col]
            for k, t in enumerate(types):
                values, errors = [], []
                for group in groups:
                    # clean_miou_gt is the same in every record of a defense and type: take the first attack's
                    r = find.get((defense, mode, labels[0] if group == "clean" else group, t))
                    key = "clean_miou_gt" if group == "clean" else metric
                    value = r[key] if r else np.nan
                    values.append(value)
                    errors.append([value - r[key + "_ci"][0], r[key + "_ci"][1] - value] if r else [0, 0])
                x = np.arange(len(groups)) + (k - (len(types) - 1) / 2) * width
                ax.bar(x, values, width, yerr=np.array(errors).T, capsize=2, label=t)
            ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_ylabel("mIoU vs ground truth" if metric == "miou_gt" else f"ASR (IoU vs clean < {ATTACK_SUCCESS_IOU})")
            ax.set_title(f"{defense}, {mode}", fontsize=10)
            ax.grid(axis="y", alpha=0.3, lw=0.4)
    figure.legend(*axes[0, 0].get_legend_handles_labels(), title="evaluated with", loc="outside upper center",
                  ncols=len(types), fontsize=8)
    figure.savefig(out / "bars.png", dpi=100)

    figure = Figure(figsize=(1.0 * len(types) * len(panels) + 2.5 * len(panels), 0.45 * len(labels) + 1.8),
                    layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (defense, mode) in zip(axes, panels):
        matrix = np.array([[find[(defense, mode, label, t)]["miou_clean"] if (defense, mode, label, t) in find
                            else np.nan for t in types] for label in labels])
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(types)), types)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0] else [""] * len(labels))
        ax.set_xlabel("evaluated with")
        ax.set_title(f"{defense}, {mode}", fontsize=10)
    axes[0].set_ylabel("crafted with")
    figure.colorbar(image, ax=list(axes), label="IoU vs clean prediction", shrink=0.8)
    figure.savefig(out / "transfer.png", dpi=100)
