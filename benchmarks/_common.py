"""Helpers shared by the benchmarks (and the tests that start the app in a subprocess)."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with its ``--device`` (``distributed.add_device_argument``) checked and resolved
    ("" = cuda when there is one): an unknown or unavailable device is one ``error:`` line and exit code 2, as in
    ``python -m samdemo``, before any model is loaded."""
    # samdemo is imported here, not above: training_speed.py times other checkouts' samdemo with this module's clock
    from samdemo import distributed

    args = parser.parse_args(argv)
    try:
        args.device = distributed.check_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args


def clock(device: str | torch.device) -> float:
    """``time.perf_counter()`` in seconds, read once the work queued on ``device`` has finished.

    CUDA kernels run asynchronously: without the synchronize, a clock read after a GPU call times
    the launch of its kernels, not their work. On the CPU this is plain ``perf_counter``."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def write_json(path: Path, result: dict, indent: int = 1) -> Path:
    """Write a benchmark's result to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
    return path


def free_port() -> int:
    """A loopback port nothing listens on (until someone binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, seconds: float = 20) -> None:
    """Terminate ``process``; kill it if it has not exited after ``seconds``."""
    process.terminate()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
