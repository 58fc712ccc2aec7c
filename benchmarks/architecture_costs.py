"""What finer image embeddings cost: candidate architectures for the embedded models, measured.

    OMP_NUM_THREADS=2 python benchmarks/architecture_costs.py --threads 2    # -> benchmarks/results/architecture_costs.json

The embedded models see a 256-px image as a 16 x 16 embedding (one token per 16 x 16 pixels),
which limits how well a mask can follow a boundary. Each candidate here is the shipped YAML of
``samdemo/configs`` with a few keys changed (a finer patch, a larger input, windowed attention),
built from the real ``segment_anything`` / ``sam2`` classes with random weights (cost does not
depend on the weights). For each: parameters and weight size, the image embedding's side, the
median embedding time and prompt-to-mask time (one point) at ``--threads`` threads, and the time
of one training step of the base model (``train_base.training_step_loss`` forward + backward on
``--batch`` generated scenes), the cost that decides how much data fits into a CPU-hour. The
limits of the embedded-models issue are 40 MB, 60 ms and 20 ms on 2 threads.

Timings are medians of ``--repeats`` runs in one process; other jobs on the machine slow every
candidate alike, so compare ratios within one run (``machine_load`` records the load average).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import clock, write_json  # noqa: E402
from samdemo.build import CONFIG_DIR, build_architecture  # noqa: E402
from samdemo.engine import SegmentEngine, image_to_tensor  # noqa: E402
from samdemo.prompts import prompts_from_mask  # noqa: E402
from samdemo.scenes import train_scene  # noqa: E402
from samdemo.train_base import training_step_loss  # noqa: E402

LIMITS = {"weights_mb": 40.0, "embed_ms": 60.0, "prompt_to_mask_ms": 20.0}

# name -> (base YAML, {dotted key: value}); the first of each family is the shipped architecture
CANDIDATES: dict[str, tuple[str, dict]] = {
    "sam-small (shipped: patch 16, 256 px, global attention)": ("sam_small.yaml", {}),
    "sam-small, patch 8 (32 x 32 embedding), global attention": ("sam_small.yaml", {"encoder.patch_size": 8}),
    "sam-small, patch 8, windows of 8 + 2 global blocks": (
        "sam_small.yaml", {"encoder.patch_size": 8, "encoder.window_size": 8, "encoder.global_attn_indexes": [2, 5]}),
    "sam-small, 384 px (24 x 24 embedding), global attention": ("sam_small.yaml", {"image_size": 384}),
    "sam-small, patch 8, half width (96), windows of 8 + 1 global block": (
        "sam_small.yaml", {"encoder.patch_size": 8, "encoder.embed_dim": 96, "encoder.num_heads": 3,
                           "encoder.window_size": 8, "encoder.global_attn_indexes": [5]}),
    "sam2-small (shipped: 256 px, high-res features 64 / 32)": ("sam2_small.yaml", {}),
    "sam2-small, 384 px": ("sam2_small.yaml", {"model.image_size": 384}),
    "sam2-small, 512 px": ("sam2_small.yaml", {"model.image_size": 512}),
}


def build_candidate(base: str, changes: dict, path: Path) -> SegmentEngine:
    """The model of ``base`` with ``changes`` applied, written to ``path`` and built with random weights."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG_DIR / base)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, path)
    torch.manual_seed(0)
    model, family = build_architecture(path)
    return SegmentEngine(model, family, name=path.stem)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock("cpu")
        fn()
        times.append((clock("cpu") - start) * 1000)
    return round(statistics.median(times), 2)


def measure(engine: SegmentEngine, repeats: int, batch: int, step_repeats: int) -> dict:
    size = engine.image_size
    scenes = [train_scene(i, size) for i in range(batch)]
    image = image_to_tensor(scenes[0].image)
    prompt = [prompts_from_mask(scenes[0].masks[0])["point"]]
    engine.model.eval()
    with torch.no_grad():
        features = engine.embed(image)
        result = {"embedding_side": int(features.image_embed.shape[-1]),
                  "embed_ms": median_ms(lambda: engine.embed(image), repeats),
                  "prompt_to_mask_ms": median_ms(lambda: engine.decode(features, prompt), repeats)}
    engine.model.train()
    images = np.stack([s.image for s in scenes])
    masks = [np.asarray(s.masks) for s in scenes]

    def step():
        rngs = [np.random.default_rng(i) for i in range(batch)]
        training_step_loss(engine, images, masks, 3, rngs).backward()
        engine.model.zero_grad(set_to_none=True)

    result["train_step_ms"] = median_ms(step, step_repeats)
    engine.model.eval()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4, help="scenes per training step")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated indices into CANDIDATES (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "architecture_costs.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = {name: c for i, (name, c) in enumerate(CANDIDATES.items())
              if not args.only or str(i) in args.only.split(",")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, (base, changes)) in enumerate(chosen.items()):
            engine = build_candidate(base, changes, Path(folder) / f"candidate{index}.yaml")
            parameters = sum(p.numel() for p in engine.model.parameters())
            row = {"candidate": name, "base": base, "changes": changes, "parameters": parameters,
                   "weights_mb": round(parameters * 4 / 2**20, 1),
                   **measure(engine, args.repeats, args.batch, args.step_repeats)}
            row["within_limits"] = all(row[key] <= limit for key, limit in LIMITS.items())
            rows.append(row)
            print(f"{name}: {row['embedding_side']}^2 embedding, {row['weights_mb']} MB, embed {row['embed_ms']} ms, "
                  f"prompt {row['prompt_to_mask_ms']} ms, train step {row['train_step_ms']} ms", flush=True)
    shipped = {r["base"]: r for r in rows if not r["changes"]}
    for row in rows:
        if row["base"] in shipped:
            row["train_step_vs_shipped"] = round(row["train_step_ms"] / shipped[row["base"]]["train_step_ms"], 2)
    write_json(args.out, {"command": "python benchmarks/architecture_costs.py " + " ".join(sys.argv[1:] if argv is None else argv),
                          "threads": args.threads, "batch": args.batch, "limits": LIMITS,
                          "machine_load": os.getloadavg()[0], "torch": torch.__version__, "rows": rows})
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
