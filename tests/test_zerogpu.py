"""ZeroGPU (Hugging Face Spaces): with the real ``spaces`` package installed (pinned in requirements-test.txt),
importing the app wraps the heavy handlers with ``spaces.GPU``, which outside a ZeroGPU Space hands the
function back unchanged; the attack handler then runs as anywhere else, and nothing initialises CUDA at
import (ZeroGPU forbids it in the main process). Without ``spaces`` the wrapper is a no-op of our own. Each
case runs in a fresh interpreter, so that what was imported and initialised is this import's alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from samdemo.build import REPO_ROOT

SCRIPT = r"""
import sys
from types import SimpleNamespace
if {hide_spaces}:
    sys.modules["spaces"] = None  # import spaces -> ImportError, as where it is not installed
import torch
import app
from samdemo.app import handlers
from samdemo.app.session import MODE_POSITIVE
from tests.test_app import scene_session, tiny_lab, write_tiny_adapters

assert not torch.cuda.is_initialized(), "CUDA initialised at import"
assert hasattr(handlers, "spaces") == (not {hide_spaces}), "spaces import"
def fn():
    pass
assert handlers.gpu(60)(fn) is fn, "outside a ZeroGPU Space the wrapper passes the function through"
import tempfile, pathlib
lab = tiny_lab(write_tiny_adapters(pathlib.Path(tempfile.mkdtemp())))
assert lab.on_attack == type(lab).on_attack.__get__(lab), "the decorator must hand the handler back unchanged"
session = scene_session(lab, 0, "sam-small")
session, _, _ = lab.on_click(session, MODE_POSITIVE, "sam-small", 128, 100)
outputs = lab.on_attack(session, "sam-small", "shipped", "", "", "mask", "pgd", 8, 2, 0, "original",
                        SimpleNamespace(session_hash="z"), lambda *a, **k: None)
panels, table = outputs[:4], outputs[4]
assert all(panel.value is not None for panel in panels) and len(table) == 4
assert not torch.cuda.is_initialized(), "CUDA initialised by a CPU attack"
print("ok", sys.modules["spaces"].__name__ if not {hide_spaces} else "no spaces")
"""


@pytest.mark.parametrize("hide_spaces", [False, True], ids=["spaces", "without-spaces"])
def test_app_imports_and_attacks_with_and_without_spaces(hide_spaces):
    if not hide_spaces:
        pytest.importorskip("spaces", reason="spaces is pinned in requirements-test.txt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPACES_", "ZERO"))}  # not on a ZeroGPU Space
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(hide_spaces=hide_spaces)], capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT, env=env | {"PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == ("ok no spaces" if hide_spaces else "ok spaces")
