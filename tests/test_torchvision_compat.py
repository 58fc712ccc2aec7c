import subprocess
import sys
import textwrap

import torch

from samdemo.torchvision_compat import nms_reference


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_nms_keeps_highest_and_drops_overlaps():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) suppresses 0 (IoU 0.9) and 1 (IoU ~0.66 > 0.5); box 2 is disjoint
    assert nms_reference(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms_reference(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]
    assert nms_reference(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_nms_matches_brute_force_definition():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=gen) * 30], 1)
    scores = torch.rand(200, generator=gen)
    keep = nms_reference(boxes, scores, 0.4).tolist()
    # brute force: walk by score, keep a box unless it overlaps a kept one by IoU > 0.4
    def iou(a, b):
        tl, br = torch.maximum(a[:2], b[:2]), torch.minimum(a[2:], b[2:])
        inter = (br - tl).clamp(min=0).prod()
        return inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter)
    expected = []
    for i in torch.argsort(scores, descending=True).tolist():
        if all(iou(boxes[i], boxes[j]) <= 0.4 for j in expected):
            expected.append(i)
    assert keep == expected


def test_segment_anything_and_sam2_import_and_use_nms_in_a_fresh_process():
    out = run_python("""
        import samdemo, torch
        from samdemo.torchvision_compat import STATE, native_extension_loads
        import segment_anything, sam2.automatic_mask_generator
        from torchvision.ops import batched_nms
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10.0]])
        keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), 0.5)
        print(STATE["mode"], keep.tolist())
    """)
    mode, keep = out.split(" ", 1)
    assert mode in ("native", "pure-torch")
    assert keep == "[0, 2]"


def test_native_branch_changes_nothing_when_the_extension_loads():
    # Simulate a torchvision whose compiled ops load: the shim must not define any op.
    out = run_python("""
        import torch
        torch.ops.load_library = lambda path: None
        from samdemo.torchvision_compat import STATE, ensure_torchvision_ops
        print(ensure_torchvision_ops(), hasattr(torch.ops.torchvision, "nms"))
    """)
    assert out == "native False"


def test_pure_torch_branch_is_what_runs_here_when_the_extension_cannot_load():
    out = run_python("""
        from samdemo.torchvision_compat import native_extension_loads
        import samdemo
        from samdemo.torchvision_compat import STATE
        print(native_extension_loads(), STATE["mode"])
    """)
    loads, mode = out.split()
    assert mode == ("native" if loads == "True" else "pure-torch")


def test_automatic_mask_generator_runs_on_a_tiny_sam():
    import numpy as np
    from segment_anything import SamAutomaticMaskGenerator

    from tests.conftest import tiny_engine

    engine = tiny_engine("sam")
    generator = SamAutomaticMaskGenerator(engine.model, points_per_side=4, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0, box_nms_thresh=0.7)
    masks = generator.generate((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    assert isinstance(masks, list)  # nms ran through batched_nms without the compiled extension
