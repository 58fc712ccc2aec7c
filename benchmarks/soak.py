"""Soak test of the web app: concurrent users through the HTTP API, checking that nobody sees another's data.

Each of ``--sessions`` gradio_client sessions (one thread each) repeats, for ``--rounds`` rounds:
upload its own image (a coloured disc on noise; the disc's place depends on the session and the
round, the image's height on the session), click the disc, paint ``--paints`` masks over it (the
paint editor's path: an RGBA layer PNG at the editor's display size, alternately a mask prompt and
a ground truth), and run a short attack (every round, or every ``--attack-every`` rounds). Every
answer is checked against that session's own image: the canvas and the adversarial PNG have its
size, the PNG lies within ε of its pixels, the painted pixel count is its own, and the clean masks
(on the canvas and the original-clean panel) sit on its disc, not on another session's. After each
round the server's resident memory (RSS) is recorded, with the latency of every call.

The server is the real app (``python app.py --device DEVICE``, the embedded sam-small and its
shipped adapter) in a subprocess on 127.0.0.1; nothing else is contacted. ``--device`` is the app's
(default cuda when there is one); the RSS is the server's host memory, whatever the device.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/soak.py --paints 8 --attack-every 4 --rounds 200 \
        --max-seconds 1080 --cache-mb 32 --figure docs/images/soak_memory.png \
        --compare benchmarks/results/soak.json benchmarks/results/soak_glibc_default_arenas.json
                                                          # -> benchmarks/results/soak_paint.json
    python benchmarks/soak.py --paints 0 --rounds 40 --cache-mb 32 --out benchmarks/results/soak.json
    python benchmarks/soak.py --sessions 8 --rounds 3 --out /tmp/soak.json

Reading the RSS: it grows over the first rounds and then levels off. Most of the growth is the
shared embedding cache filling up to its bound (``SAMDEMO_EMBEDDING_CACHE_MB``, 256 MB by default;
a round with attacks adds about 32 embeddings of 0.25 MB with sam-small: 16 new images, original and
robust model; one without, 8), the rest allocator warm-up. ``--cache-mb`` sets a small bound so that the cache is full after
a few rounds and what follows shows whether anything else grows: the JSON reports the slope of a
line fitted to the RSS of the second half of the rounds (MB per round).

Measured (2 cores, 8 sessions, ``--cache-mb 32``, 0 failures):

- attacks (``--paints 0``, 40 rounds): with glibc's default malloc arenas (8 per core;
  ``MALLOC_ARENA_MAX=16`` reproduces it here, ``results/soak_glibc_default_arenas.json``) RSS rose
  684 -> 1193 MB, still +8 MB per round at the end, while Python's own allocations (tracemalloc)
  stayed flat: the request threads' arenas fragment. The app now caps them at 2
  (``limits.limit_malloc_arenas``): 703 -> 817 MB, +0.8 MB per round over the second half
  (``results/soak.json``).
- mostly paints (``--paints 8 --attack-every 4``, 34 rounds in 18 minutes, 2,792 requests of which
  2,176 paints and 72 attacks; the cores shared with a training job and another evaluation, load
  average 5-9): 638 MB after the first round, 663 MB after 1,400 requests, then 670-691 MB to the
  end (686 MB), +0.56 MB per round over the second half and +0.18 over the last third
  (``results/soak_paint.json``, ``docs/images/soak_memory.png``).

tests/test_reliability.py runs a short version (8 sessions x 2 rounds, 2 paints each in the second)
in-process with the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import free_port, parse_args, stop, write_json  # noqa: E402
from samdemo import distributed  # noqa: E402

SLOTS = [(40 + 58 * (k % 4), 56 + 112 * (k // 4)) for k in range(8)]  # disc centres (x, y), far apart
COLOURS = [(230, 50, 50), (50, 200, 50), (220, 60, 220), (235, 235, 235)]  # red, green, magenta, white
RADIUS = 22
EPS, STEPS = 8, 2
PAINTS = 8  # paint requests per session and round (default of --paints): mask prompts and ground truths
REQUESTS = ("set_image", "click", "attack", "paint")  # the kinds of request a round makes
MASK_RGB_MIN_CHANGE = 40  # a pixel the overlay changed by more than this (tint, contour, marker)


def scene(session: int, round_: int) -> tuple[np.ndarray, int]:
    """Session ``session``'s image in round ``round_`` (H x W x 3 uint8) and the slot of its disc."""
    slot = (session + round_) % len(SLOTS)
    h, w = 224 + 8 * session, 256
    rng = np.random.default_rng(1000 * session + round_)
    image = rng.normal(110, 12, (h, w, 3)).clip(0, 255).astype(np.uint8)
    cx, cy = SLOTS[slot]
    yy, xx = np.mgrid[:h, :w]
    image[(xx - cx) ** 2 + (yy - cy) ** 2 < RADIUS**2] = COLOURS[slot % len(COLOURS)]
    return image, slot


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def mask_slot(picture: np.ndarray, image: np.ndarray, scale: int, click: tuple[float, float]) -> tuple[int, float]:
    """Where the overlay of ``picture`` (``image`` shown at ``scale``, a mask drawn on it) lies: the nearest
    disc slot to the median changed pixel, and its distance (image pixels). The click's marker and the
    bottom strip (where panels write their IoU) are left out, so that only the mask counts."""
    shown = cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    changed = np.abs(picture[:shown.shape[0], :shown.shape[1]].astype(int) - shown.astype(int)).max(axis=2)
    changed = changed > MASK_RGB_MIN_CHANGE
    changed[-max(30, shown.shape[0] // 8):] = False
    yy, xx = np.mgrid[:shown.shape[0], :shown.shape[1]]
    changed[(xx / scale - click[0]) ** 2 + (yy / scale - click[1]) ** 2 < 12**2] = False
    ys, xs = np.nonzero(changed)
    if not len(xs):
        return -1, float("inf")
    x, y = np.median(xs) / scale, np.median(ys) / scale
    distances = [np.hypot(x - sx, y - sy) for sx, sy in SLOTS]
    return int(np.argmin(distances)), float(min(distances))


def session_round(client, session: int, round_: int, folder: Path, model: str = "sam-small",
                  paints: int = 0, attack: bool = True) -> dict[str, list[float]]:
    """One session's round through the API: upload, click, attack (if ``attack``), then ``paints`` paint
    requests; returns the latencies (s) of each kind of request. Raises AssertionError on any mix-up."""
    from gradio_client import handle_file

    from samdemo.app.session import MODE_POSITIVE, display_scale

    image, slot = scene(session, round_)
    path = folder / f"s{session}-r{round_}.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    scale = display_scale(image.shape[:2])
    where = f"session {session}, round {round_}"
    times = {}

    start = time.perf_counter()
    canvas, _, status = client.predict(handle_file(str(path)), model, api_name="/set_image")
    times["set_image"] = time.perf_counter() - start
    shown = read_rgb(canvas)
    assert shown.shape == (image.shape[0] * scale, image.shape[1] * scale, 3), (where, shown.shape, status)
    assert np.array_equal(shown[::scale, ::scale], image), f"{where}: the canvas shows another image"

    click = SLOTS[slot]
    start = time.perf_counter()
    canvas, status = client.predict(MODE_POSITIVE, model, *click, api_name="/click")
    times["click"] = time.perf_counter() - start
    assert "Clean mask" in status and "1 positive point" in status, (where, status)
    found, distance = mask_slot(read_rgb(canvas), image, scale, click)
    assert found == slot and distance < 25, f"{where}: the canvas mask is at slot {found}, not {slot}"
    times = {key: [value] for key, value in times.items()}
    times["paint"] = session_paints(client, session, round_, folder, image, slot, paints, model)
    if not attack:
        return times | {"attack": []}

    start = time.perf_counter()
    outputs = client.predict(model, "shipped", "", "", "mask", "pgd", EPS, STEPS, session, "original",
                             api_name="/attack")
    times["attack"] = [time.perf_counter() - start]
    panels, adv_png, timings = outputs[:4], outputs[7], outputs[-1]  # positions of app.py's /attack outputs
    adv = read_rgb(adv_png)
    assert adv.shape == image.shape, (where, adv.shape, image.shape)
    linf = int(np.abs(adv.astype(int) - image.astype(int)).max())
    assert linf <= EPS, f"{where}: the adversarial PNG is {linf}/255 from this session's image"
    found, distance = mask_slot(read_rgb(panels[0]["value"]), image, scale, click)
    assert found == slot and distance < 25, f"{where}: the clean panel's mask is at slot {found}, not {slot}"
    assert f"{STEPS} steps" in timings, (where, timings)
    return times


def painted_layer(image: np.ndarray, slot: int, k: int) -> np.ndarray:
    """What the paint editor sends for stroke set ``k``: an RGBA layer at the editor's display size (the image
    shown at ``display_scale``), opaque on a disc over ``slot``'s disc (radius 10-17 image px), clear elsewhere."""
    from samdemo.app.session import display_scale

    scale = display_scale(image.shape[:2])
    h, w = image.shape[0] * scale, image.shape[1] * scale
    cx, cy = SLOTS[slot]
    radius = (10 + k % 8) * scale
    yy, xx = np.mgrid[:h, :w]
    layer = np.zeros((h, w, 4), np.uint8)
    layer[(xx - cx * scale) ** 2 + (yy - cy * scale) ** 2 < radius**2] = (0, 229, 229, 255)
    return layer


def session_paints(client, session: int, round_: int, folder: Path, image: np.ndarray, slot: int, paints: int,
                   model: str = "sam-small") -> list[float]:
    """``paints`` paint requests through the paint-layer path (the editor's layer uploaded as a PNG), alternately
    a mask prompt and a ground truth; returns their latencies (s). Each answer must count this session's own
    painted pixels (its image's size, its disc), and a mask prompt's canvas mask must lie on its disc."""
    from gradio_client import handle_file

    from samdemo.app.session import display_scale, painted_mask

    scale = display_scale(image.shape[:2])
    seconds = []
    for k in range(paints):
        where = f"session {session}, round {round_}, paint {k}"
        layer = painted_layer(image, slot, k)
        expected = int(painted_mask({"layers": [layer]}, image.shape[:2]).sum())
        path = folder / f"s{session}-r{round_}-p{k}.png"
        cv2.imwrite(str(path), cv2.cvtColor(layer, cv2.COLOR_RGBA2BGRA))
        editor = {"background": None, "layers": [handle_file(str(path))], "composite": None, "id": None}
        as_prompt = k % 2 == 0
        start = time.perf_counter()
        canvas, status = client.predict(editor, model, api_name="/paint_prompt" if as_prompt else "/paint_ground_truth")
        seconds.append(time.perf_counter() - start)
        path.unlink()
        what = "mask prompt" if as_prompt else "ground truth"
        assert f"Painted {what}" in status and f"set: {expected} px." in status, (where, expected, status)
        if as_prompt:
            found, distance = mask_slot(read_rgb(canvas), image, scale, SLOTS[slot])
            assert found == slot and distance < 25, f"{where}: the canvas mask is at slot {found}, not {slot}"
    return seconds


def run_round(url: str, round_: int, sessions: int, folder: Path, clients: dict | None = None,
              paints: int = 0, attack: bool = True) -> dict:
    """All sessions at once, one thread each (each its upload, click, ``paints`` paints and, if ``attack``,
    an attack); returns
    {"latency_s": {kind: [s, ...]}, "failures": [...], "seconds": s}. ``clients`` (session ->
    gradio_client.Client) keeps the sessions across rounds."""
    from gradio_client import Client

    clients = clients if clients is not None else {}
    results, failures = {}, []

    def work(i: int) -> None:
        try:
            if i not in clients:
                clients[i] = Client(url, verbose=False)
            results[i] = session_round(clients[i], i, round_, folder, paints=paints, attack=attack)
        except Exception as error:  # reported, not raised: the other sessions go on
            failures.append(f"{type(error).__name__}: {error}")

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,), name=f"soak-{i}") for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    latency = {key: [t for r in results.values() for t in r[key]] for key in REQUESTS}
    return {"latency_s": latency, "failures": failures, "seconds": time.perf_counter() - start}


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process (Linux /proc), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {"median": round(statistics.median(ordered), 4), "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 4),
            "max": round(ordered[-1], 4), "n": len(ordered)}


def rss_slope(values: list[float]) -> float | None:
    """Least-squares slope of ``values`` against their index (MB per round); None for fewer than 3."""
    if len(values) < 3:
        return None
    return round(float(np.polyfit(np.arange(len(values)), values, 1)[0]), 3)


def start_app(port: int, log_path: Path, device: str, cache_mb: float | None = None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), GRADIO_ANALYTICS_ENABLED="False")
    if cache_mb:
        env["SAMDEMO_EMBEDDING_CACHE_MB"] = str(cache_mb)
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port),
                                "--device", device], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the app did not start; see {log_path}")


def run_label(name: str, result: dict) -> str:
    """A soak result's line in the figure: its file name and what each session did per round."""
    paints, every = result.get("paints_per_session_round", 0), result.get("attack_every", 1)
    attack = "an attack" if every == 1 else f"an attack every {every} rounds"
    return f"{name}: {result['sessions']} sessions; upload, click, {paints} paints, {attack}"


def plot_rss(runs: dict[str, dict], path: Path) -> Path:
    """The server's RSS after each round against the requests answered so far, one line per soak result
    (label -> the JSON this script writes; the count is the sum of the rounds' latency counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for label, result in runs.items():
        served = np.cumsum([0] + [sum(kind["n"] for kind in r["latency_s"].values()) for r in result["rounds"]])
        rss = [result["rss_mb_before_first_round"], *result["rss_mb_per_round"]]
        ax.plot(served, rss, marker=".", markersize=3, label=label)
    ax.set_xlabel("requests served (all sessions)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("Soak: server memory under sustained load (embedded sam-small)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--paints", type=int, default=PAINTS, help="paint requests per session and round")
    parser.add_argument("--attack-every", type=int, default=1, help="attack in every N-th round (from the first)")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop after the round that passes this")
    parser.add_argument("--cache-mb", type=float, default=None,
                        help="the server's embedding cache bound (SAMDEMO_EMBEDDING_CACHE_MB; default: the app's)")
    parser.add_argument("--note", default="", help="what else ran on the machine (kept in the JSON)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak_paint.json")
    parser.add_argument("--figure", type=Path, default=None,
                        help="also draw the RSS against the requests served (PNG), with the --compare runs")
    parser.add_argument("--compare", type=Path, nargs="*", default=[], help="earlier soak JSONs to draw too")
    distributed.add_device_argument(parser)
    args = parse_args(parser, argv)

    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="samdemo-soak-"))
    process = start_app(port, folder / "app.log", args.device, args.cache_mb)
    url = f"http://127.0.0.1:{port}/"
    rounds, clients, start, load_before = [], {}, time.perf_counter(), os.getloadavg()
    try:
        rss_start = rss_mb(process.pid)
        for r in range(args.rounds):
            result = run_round(url, r, args.sessions, folder, clients, args.paints, r % args.attack_every == 0)
            rounds.append({"round": r, "rss_mb": round(rss_mb(process.pid), 1), "seconds": round(result["seconds"], 2),
                           "failures": result["failures"],
                           "latency_s": {k: summary(v) for k, v in result["latency_s"].items()}})
            print(f"round {r}: RSS {rounds[-1]['rss_mb']:.0f} MB, {result['seconds']:.1f} s, "
                  f"{len(result['failures'])} failures", flush=True)
            if time.perf_counter() - start > args.max_seconds:
                break
    finally:
        stop(process)
    every = {key: [r["latency_s"][key]["median"] for r in rounds if r["latency_s"][key]["n"]] for key in REQUESTS}
    rss = [r["rss_mb"] for r in rounds]
    result = {
        "benchmark": "soak",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sessions": args.sessions, "rounds_run": len(rounds), "paints_per_session_round": args.paints,
        "attack_every": args.attack_every,
        "attack": f"mask, PGD, eps {EPS}/255, {STEPS} steps, every {args.attack_every} round(s)",
        "paints": "alternately a mask prompt and a ground truth, an RGBA layer PNG at the editor's display size",
        "model": "sam-small (embedded) + shipped adapter", "server": "python app.py, subprocess on 127.0.0.1",
        "device": args.device,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "note": args.note},
        "rss_mb_before_first_round": round(rss_start, 1),
        "embedding_cache_mb": args.cache_mb or float(os.environ.get("SAMDEMO_EMBEDDING_CACHE_MB", 256)),
        "rss_mb_per_round": rss,
        "rss_slope_mb_per_round_second_half": rss_slope(rss[len(rss) // 2:]),
        "failures": sum(len(r["failures"]) for r in rounds),
        "median_of_round_medians_s": {k: round(statistics.median(v), 4) if v else None for k, v in every.items()},
        "rounds": rounds,
    }
    write_json(args.out, result, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    if args.figure:
        runs = {run_label(args.out.name, result): result}
        for path in args.compare:
            earlier = json.loads(path.read_text())
            runs[run_label(path.name, earlier)] = earlier
        print(f"figure: {plot_rss(runs, args.figure)}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
