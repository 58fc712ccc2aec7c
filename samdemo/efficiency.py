"""GPU-efficiency switches that do not change results: activation checkpointing of the image
encoder's blocks, TF32 matmuls, and the autocast dtype a ``--bf16`` flag stands for.

Activation checkpointing keeps only each encoder block's input during the forward pass and
recomputes the block in the backward pass: the memory of the saved activations drops to about
one block's worth, for about one more encoder forward per step (+~33 % FLOPs of an attack step).
It matters for ViT-L/H at 1024 px, whose saved activations are several GB per image
(``samdemo.costs``). The gradients are the same up to floating-point reassociation.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint


def encoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a SAM (ViT) or SAM 2 (Hiera) image encoder."""
    encoder = model.image_encoder
    if hasattr(encoder, "blocks"):  # segment_anything ImageEncoderViT
        return encoder.blocks
    return encoder.trunk.blocks  # sam2 Hiera trunk


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Recompute every encoder block in the backward pass instead of saving its activations.
    Idempotent; returns the number of blocks wrapped. Under ``torch.no_grad`` nothing changes."""
    blocks = encoder_blocks(model)
    for block in blocks:
        if getattr(block, "_samdemo_checkpointed", False):
            continue
        forward = block.forward

        @functools.wraps(forward)
        def checkpointed(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = checkpointed
        block._samdemo_checkpointed = True
    return len(blocks)


def disable_activation_checkpointing(model: torch.nn.Module) -> None:
    for block in encoder_blocks(model):
        if getattr(block, "_samdemo_checkpointed", False):
            del block.forward  # the instance attribute; the class's forward shows through again
            block._samdemo_checkpointed = False


def enable_tf32() -> None:
    """TF32 for fp32 matmuls and convolutions on Ampere+ GPUs (no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(bf16: bool) -> torch.dtype | None:
    return torch.bfloat16 if bf16 else None
