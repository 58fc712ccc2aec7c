"""Quality, image dependence and speed of the embedded models.

    python benchmarks/model_quality.py --scenes 500 --device cpu --out benchmarks/results/model_quality.json

For each model, mIoU against ground truth per prompt type (center-most point with SAM's pick,
best of its three masks, tight box, the mask itself):

* ``miou``: on the test split of the procedural scenes (never trained on, never used to choose);
  ``--split validation`` measures on the validation split instead, the one to choose weights on
  (e.g. a training run's candidate given with ``--weights sam2-small=runs/x/model.safetensors``);
* ``image_dependence``: the same prompts on a uniform grey image and on the image with the
  objects' pixels shuffled among themselves (``quality.image_variant``): a model that segments
  what it sees falls towards 0 on grey;
* ``independent``: on ``--shapes`` scenes of the independent evaluation generator
  (``samdemo.shapes_eval``), clean and grey;
* ``photos``: box and point IoU on the bundled photos against their reference masks
  (``assets/make_reference_masks.py``);

and the median time of an image embedding and of prompt -> mask on ``--device`` (default cuda when
there is one), at ``--threads`` CPU threads.
With ``--figure`` also draws test predictions per prompt type. ``--update`` measures only ``--models``
and keeps the other models' entries of an existing ``--out`` taken with the same settings (after
retraining one model).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import clock, parse_args  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.build import CHECKPOINT_DIR, get_spec  # noqa: E402
from samdemo.engine import SegmentEngine, image_to_tensor  # noqa: E402
from samdemo.factory import load_engine  # noqa: E402
from samdemo.prompts import prompts_from_mask  # noqa: E402
from samdemo.quality import image_dependence, photo_quality  # noqa: E402
from samdemo.scenes import SPLITS, test_scenes  # noqa: E402
from samdemo.shapes_eval import independent_scenes  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock(device)
        fn()
        times.append((clock(device) - start) * 1000)
    return round(statistics.median(times), 2)


@torch.no_grad()
def timings(engine: SegmentEngine, scene, repeats: int) -> dict:
    image = image_to_tensor(scene.image)
    features = engine.embed(image)
    prompt = [prompts_from_mask(scene.masks[0])["point"]]
    return {"embed_ms": median_ms(lambda: engine.embed(image), repeats, engine.device),
            "prompt_to_mask_ms": median_ms(lambda: engine.decode(features, prompt), repeats, engine.device)}


def overlay_figure(engines: dict[str, SegmentEngine], scenes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("point", "box", "mask")
    fig, axes = plt.subplots(len(scenes) * len(engines), 4, figsize=(12, 3 * len(scenes) * len(engines)))
    row = 0
    for name, engine in engines.items():
        for scene in scenes:
            gt = scene.masks[int(np.argmax(scene.masks.sum((1, 2))))]
            prompts = prompts_from_mask(gt)
            axes[row, 0].imshow(scene.image)
            axes[row, 0].contour(gt, levels=[0.5], colors="lime", linewidths=1)
            axes[row, 0].set_title(f"{name}: ground truth", fontsize=9)
            for col, kind in enumerate(kinds, start=1):
                mask = engine.predict(scene.image, [prompts[kind]]).masks[0].cpu().numpy()
                iou = (mask & gt).sum() / max((mask | gt).sum(), 1)
                ax = axes[row, col]
                ax.imshow(scene.image)
                ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.5)
                prompt = prompts[kind]
                if kind == "point":
                    ax.plot(*prompt.points[0], "c*", markersize=12)
                if kind == "box":
                    x0, y0, x1, y1 = prompt.box
                    ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "c-")
                ax.set_title(f"{kind} prompt: IoU {iou:.2f}", fontsize=9)
            for ax in axes[row]:
                ax.axis("off")
            row += 1
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)


def rounded(quality: dict) -> dict:
    return {k: round(v, 4) for k, v in quality.items() if k != "instances"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sam-small,sam2-small")
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--shapes", type=int, default=200, help="scenes of the independent generator")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_quality.json"))
    parser.add_argument("--figure", type=Path, default=None, help="PNG of held-out predictions per prompt type")
    parser.add_argument("--split", choices=sorted(SPLITS), default="test",
                        help="procedural scenes to measure on: test (reported) or validation (to choose weights on)")
    parser.add_argument("--update", action="store_true",
                        help="keep the entries of models not measured now from an existing --out of the same settings")
    parser.add_argument("--weights", action="append", default=[], metavar="MODEL=PATH",
                        help="measure these weights (safetensors) for MODEL instead of its shipped ones; repeatable")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)
    try:
        other_weights = dict(item.split("=", 1) for item in args.weights)
    except ValueError:
        parser.error("--weights takes MODEL=PATH")
    for path in other_weights.values():
        if not Path(path).is_file():
            parser.error(f"--weights: no file {path}")
    torch.set_num_threads(args.threads)
    results = {"command": " ".join(["python", "benchmarks/model_quality.py"] + (argv or sys.argv[1:])),
               "scenes": args.scenes, "split": args.split, "shapes": args.shapes, "threads": args.threads, "device": args.device, "machine": platform.processor() or platform.machine(),
               "torch": torch.__version__, "models": {}}
    engines = {}
    if args.update and args.out.exists():
        previous = json.loads(args.out.read_text())
        same = ("scenes", "split", "shapes", "threads")
        if any(previous.get(key, "test" if key == "split" else None) != results[key] for key in same):
            parser.error(f"--update: {args.out} was measured with other settings ({', '.join(same)})")
        measured = args.models.split(",")
        results["models"] = {name: entry for name, entry in previous["models"].items() if name not in measured}
        for entry in results["models"].values():
            entry.setdefault("command", previous["command"])
        engines = {name: load_engine(name, device=args.device) for name in results["models"]}  # for the figure
    for name in args.models.split(","):
        weights = Path(other_weights.get(name) or CHECKPOINT_DIR / get_spec(name).local_file)
        engine = load_engine(name, weights=weights if name in other_weights else None, device=args.device)
        engines[name] = engine
        scenes = SPLITS[args.split](args.scenes, size=engine.image_size)
        start = clock(args.device)
        variants = image_dependence(engine, scenes)
        independent = image_dependence(engine, independent_scenes(args.shapes, size=engine.image_size),
                                       variants=("image", "grey"))
        results["models"][name] = {
            "miou": rounded(variants["image"]), "instances": variants["image"]["instances"],
            "image_dependence": {variant: rounded(variants[variant]) for variant in ("grey", "shuffled")},
            "independent": {variant: rounded(quality) for variant, quality in independent.items()}
            | {"instances": independent["image"]["instances"]},
            "photos": photo_quality(engine, ASSETS),
            "eval_seconds": round(clock(args.device) - start, 1),
            "parameters": sum(p.numel() for p in engine.model.parameters()),
            "weights": str(weights.relative_to(CHECKPOINT_DIR.parent) if weights.is_relative_to(CHECKPOINT_DIR.parent)
                           else weights),
            "weights_mb": round(weights.stat().st_size / 2**20, 1),
            **timings(engine, scenes[0], args.repeats), "command": results["command"]}
        print(name, json.dumps(results["models"][name]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    if args.figure:
        overlay_figure(engines, test_scenes(3, size=256), args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
