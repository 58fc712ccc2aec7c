"""Helpers shared by the benchmarks (and the tests that start the app in a subprocess)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path


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
