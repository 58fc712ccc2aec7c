import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
import torch

import samdemo  # noqa: F401  (installs the torchvision shim before anything imports torchvision)
from samdemo.build import CONFIG_DIR, build_architecture
from samdemo.engine import SegmentEngine


def tiny_engine(family: str, seed: int = 0) -> SegmentEngine:
    """A random-init 64-px SAM or SAM 2 built from the real classes."""
    torch.manual_seed(seed)
    model, fam = build_architecture(CONFIG_DIR / f"{family}_tiny_test.yaml")
    return SegmentEngine(model.eval(), fam, name=f"tiny-{family}")


@pytest.fixture(params=["sam", "sam2"])
def engine(request) -> SegmentEngine:
    return tiny_engine(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
