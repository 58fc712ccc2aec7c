"""``python -m tests.tiny_evaluate <command> ...``: ``python -m samdemo`` with every registry model replaced by
the tiny random-init SAM v1 test architecture (``samdemo/configs/sam_tiny_test.yaml``, 64 px, seed 0), for
tests that start the CLI in subprocesses (e.g. under torchrun) and must run in seconds."""

from __future__ import annotations

import sys

import samdemo.factory as factory
from samdemo.build import CONFIG_DIR


def tiny_engine(name, weights=None, device=None, cache=None, frozen=False):
    engine = factory.random_engine(CONFIG_DIR / "sam_tiny_test.yaml", seed=0)
    engine.model.to(device or "cpu")
    if frozen:
        engine.model.requires_grad_(False)
    return engine


def install() -> None:
    factory.load_engine = tiny_engine


if __name__ == "__main__":
    from samdemo.__main__ import main

    install()
    sys.exit(main())
