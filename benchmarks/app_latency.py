"""End-to-end latency of the web app, through its HTTP API (gradio_client), as a user feels it.

* click -> mask: one positive click on an example whose embedding is cached (the usual case:
  the image was loaded before the clicks), from the request to the overlay PNG on disk;
  also the first click on a freshly loaded image (it includes the image embedding);
* a 10-step attack with all four panels (original / robust x clean / adversarial), the table,
  the perturbation picture and the PNG.

The app is the real one (``app.build_demo``) served on 127.0.0.1 from this process, with the
embedded model and its shipped adapter. Timing does not depend on the weights, so when
``checkpoints/`` lacks them, random weights and a temporary adapter of the same shape are used
(recorded in the JSON).

    OMP_NUM_THREADS=1 python benchmarks/app_latency.py --device cpu   # -> benchmarks/results/app_latency.json
    python benchmarks/app_latency.py --model sam2-small --clicks 10 --attacks 2 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import app  # noqa: E402
from benchmarks._common import clock, free_port, parse_args, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402
from samdemo.app.handlers import Lab  # noqa: E402
from samdemo.app.models import ModelManager  # noqa: E402
from samdemo.app.session import MODE_POSITIVE  # noqa: E402
from samdemo.build import CHECKPOINT_DIR, ModelUnavailableError, get_spec, load_model, locate_weights  # noqa: E402
from samdemo.engine import EmbeddingCache, SegmentEngine  # noqa: E402
from samdemo.factory import load_engine  # noqa: E402

TARGET_CLICK_MS = 300
TARGET_ATTACK_S = 3.0
CLICKS = [(128, 100), (60, 60), (200, 180), (90, 200), (180, 70), (40, 150), (150, 140), (220, 30)]


def make_lab(model: str, device: str) -> tuple[Lab, str, str]:
    """The app's Lab on ``device`` with the real weights and shipped adapter, or random weights + a temporary
    adapter."""
    cache = EmbeddingCache(256 * 2**20)
    try:
        locate_weights(get_spec(model))
        weights = "trained"
        factory = None
    except ModelUnavailableError:
        weights = "random init (no trained weights in checkpoints/; timing does not depend on them)"

        def factory(name: str) -> SegmentEngine:
            torch.manual_seed(0)
            return SegmentEngine(load_model(name, device=device, random_init=True), get_spec(name).family, name,
                                 cache=cache)
    adapter_root = CHECKPOINT_DIR
    adapter = f"shipped (checkpoints/{model}-adapter)"
    if not (CHECKPOINT_DIR / f"{model}-adapter").is_dir() or factory is not None:
        from samdemo.defense import apply_adapter, remove_adapter, save_adapter

        adapter_root = Path(tempfile.mkdtemp(prefix="samdemo-bench-"))
        engine = factory(model) if factory else load_engine(model, device=device)
        svd = apply_adapter(engine)
        svd.set_singular_values({k: s * 0.9 for k, (_, s) in svd.singular_values().items()})
        save_adapter(svd, adapter_root / f"{model}-adapter")
        remove_adapter(engine)
        adapter = "temporary adapter of the shipped shape (no shipped adapter found)"
    manager = ModelManager(factory, cache=cache, adapter_root=adapter_root, device=device)
    return Lab(manager), weights, adapter


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 4), "mean": round(statistics.fmean(ordered), 4),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4), "min": round(ordered[0], 4),
            "max": round(ordered[-1], 4), "n": len(ordered)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam-small")
    parser.add_argument("--clicks", type=int, default=30, help="timed clicks on a cached image")
    parser.add_argument("--fresh", type=int, default=7, help="timed first clicks on freshly loaded examples (<= 7)")
    parser.add_argument("--attacks", type=int, default=5, help="timed 10-step attacks")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app_latency.json")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)

    from gradio_client import Client

    load_start = os.getloadavg()
    lab, weights, adapter = make_lab(args.model, args.device)
    lab.preload(args.model, examples=False)  # so that the first click on an example includes its embedding
    demo = app.build_demo(lab, args.model)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    try:
        model = args.model
        client.predict(model, "shipped", "", "", api_name="/load_model")

        # first click on a freshly loaded image: includes the image embedding
        fresh = []
        for i in range(args.fresh):
            client.predict(model, 1 + i % 7, api_name="/load_example")  # 7 examples not yet embedded
            start = clock(args.device)
            client.predict(MODE_POSITIVE, model, *CLICKS[i % len(CLICKS)], api_name="/click")
            fresh.append(clock(args.device) - start)

        # clicks on a cached image: the decoder, the overlay and the round trip
        client.predict(model, 0, api_name="/load_example")
        client.predict(MODE_POSITIVE, model, *CLICKS[0], api_name="/click")  # warm-up
        clicks, handler = [], []
        for i in range(args.clicks):
            client.predict(model, api_name="/clear")
            start = clock(args.device)
            _, status = client.predict(MODE_POSITIVE, model, *CLICKS[i % len(CLICKS)], api_name="/click")
            clicks.append(clock(args.device) - start)
            assert "Clean mask" in status, status
            handler.append(float(status.split(" ms.")[0].rsplit(", ", 1)[1]) / 1000)  # model time, from the status

        # 10-step attacks with all four panels
        client.predict(MODE_POSITIVE, model, *CLICKS[0], api_name="/click")
        client.predict(model, "shipped", "", "", "mask", "pgd", 8, 2, 0, "original", api_name="/attack")  # warm-up
        attacks, attack_only = [], []
        for i in range(args.attacks):
            start = clock(args.device)
            outputs = client.predict(model, "shipped", "", "", "mask", "pgd", 8, 10, i, "original",
                                     api_name="/attack")
            attacks.append(clock(args.device) - start)
            panels = outputs[:4]
            assert all(p["value"] and "IoU" in p["label"] for p in panels), panels
            attack_only.append(float(outputs[-1].split("attack ")[1].split(" s")[0]))
    finally:
        demo.close()

    click_ms = summary([1000 * v for v in clicks])
    attack_s = summary(attacks)
    result = {
        "benchmark": "app_latency",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": args.model,
        "weights": weights,
        "adapter": adapter,
        "device": args.device,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "note": ("End to end through the HTTP API with gradio_client on 127.0.0.1 (request, queue, handler, "
                 "PNG encoding, download of the result files). The CPU was shared: other jobs of the project "
                 f"(training, evaluation, tests) ran at the same time; load average {load_start[0]:.1f} at the start, "
                 f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores."),
        "click_to_mask_ms": click_ms,
        "click_model_time_ms": summary([1000 * v for v in handler]),
        "first_click_on_new_image_ms": summary([1000 * v for v in fresh]) if fresh else None,
        "attack_10_steps_four_panels_s": attack_s,
        "attack_loop_only_s": summary(attack_only),
        "targets": {"click_to_mask_ms": TARGET_CLICK_MS, "attack_10_steps_four_panels_s": TARGET_ATTACK_S,
                    "click_met": click_ms["median"] <= TARGET_CLICK_MS,
                    "attack_met": attack_s["median"] <= TARGET_ATTACK_S},
    }
    write_json(args.out, result, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
