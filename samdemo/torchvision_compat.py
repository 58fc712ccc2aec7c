"""Make ``torchvision`` (hence ``segment_anything`` and ``sam2``) importable on CPU-only torch.

The torchvision wheel pinned to torch 2.13.0 is a CUDA build. On a CPU torch its compiled
extension ``torchvision/_C.so`` fails to load, and ``import torchvision`` then dies with
``RuntimeError: operator torchvision::nms does not exist`` because its meta registrations
assume the operator is defined.

:func:`ensure_torchvision_ops` must run before torchvision is first imported. If the real
extension loads, it changes nothing. Otherwise it defines ``torchvision::nms`` (the only
compiled op SAM and SAM 2 use, through ``batched_nms`` in their automatic mask generators) with
a pure-torch implementation, and tells torchvision that its ops are available. Nothing in
site-packages is modified.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

_LIBRARY: torch.library.Library | None = None  # kept alive: dropping it unregisters the op
STATE = {"mode": "unset"}  # "native" | "pure-torch": which branch ran, for tests and the UI


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, torchvision's semantics.

    boxes: N x 4 (x0, y0, x1, y1); scores: N. Returns int64 indices of kept boxes, by
    decreasing score. A box is dropped when its IoU with a kept, higher-scored box is
    strictly greater than ``iou_threshold``.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    order = torch.argsort(scores.float(), descending=True, stable=True)
    boxes = boxes[order]
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(boxes)):  # greedy by construction; N is a few hundred masks in SAM's AMG
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def _quantized_nms_unsupported(dets, scores, iou_threshold):
    raise NotImplementedError("quantized nms needs torchvision's compiled extension")


def _extension_path() -> str | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")) + glob.glob(
        os.path.join(spec.submodule_search_locations[0], "_C*.pyd")
    )
    return found[0] if found else None


def native_extension_loads() -> bool:
    """True when torchvision's compiled ops load on this torch (loading them is idempotent)."""
    path = _extension_path()
    if path is None:
        return False
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError, ImportError):
        return False
    return True


def ensure_torchvision_ops() -> str:
    """Install the pure-torch fallback if needed; returns ``"native"`` or ``"pure-torch"``."""
    global _LIBRARY
    if STATE["mode"] != "unset":
        return STATE["mode"]
    if "torchvision" in sys.modules or native_extension_loads():
        STATE["mode"] = "native"
        return "native"
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", nms_reference, "CompositeExplicitAutograd")
    # torchvision registers a fake kernel for qnms at import, so the schema must exist too.
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("qnms", _quantized_nms_unsupported, "CompositeExplicitAutograd")
    import torchvision.extension

    # torchvision's Python wrappers check _has_ops() before calling torch.ops.torchvision.*;
    # nms now exists, and the other compiled ops (roi_align, deform_conv2d...) are unused by SAM.
    torchvision.extension._has_ops = lambda: True
    STATE["mode"] = "pure-torch"
    return "pure-torch"
