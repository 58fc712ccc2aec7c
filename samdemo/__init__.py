"""samdemo: an adversarial-robustness lab for Segment Anything (SAM and SAM 2)."""

from samdemo.torchvision_compat import ensure_torchvision_ops

ensure_torchvision_ops()

__version__ = "0.1.0"
