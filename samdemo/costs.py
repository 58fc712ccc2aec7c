"""Predicted cost of one attack step for every registry model, before anyone downloads a weight.

One attack step = image encoder forward + backward to the pixels (the weights take no gradient)
plus the mask decoder forward + backward for P prompts (default 32, half points, half boxes).
Everything is counted on the ``meta`` device (shapes only, no memory, no compute):

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention).
* Saved activations: the bytes autograd keeps for the backward pass, summed through
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage counted once).
* Peak memory (fp32) = weights + saved activations + the largest single intermediate
  (twice: the backward holds a gradient of the same size beside it) + the input and its
  gradient. The bf16-autocast estimate halves the saved activations (matmul inputs are saved
  in bf16; norms and softmax statistics stay fp32, so this is an optimistic bound).
* Time: FLOPs / (peak throughput x utilisation). Peak: H100/H200 SXM dense bf16 989 TFLOP/s,
  TF32 495 TFLOP/s; utilisation ``GPU_UTILISATION`` (0.35: what ViT training typically reaches,
  windowed attention and small decoder kernels included). A CPU prediction uses a measured
  matmul rate instead (:func:`cpu_matmul_gflops`), which is how the table is checked on CPU.

The cost of activation checkpointing (``checkpointing=True``): the encoder blocks' activations
are recomputed, so saved bytes drop to the block inputs and FLOPs grow by one encoder forward.
"""

from __future__ import annotations

import contextlib
import time

import torch

GPU_PEAK_TFLOPS = {"bf16": 989.0, "tf32": 495.0}  # H100/H200 SXM, dense
GPU_UTILISATION = 0.35
GPU_NAME = "H100/H200 SXM"


@contextlib.contextmanager
def _meta_mode():
    """Settings under which SAM / SAM 2 run on the meta device: boolean indexing assumed all
    non-zero (prompt encoder), autocast disabled (not defined for "meta")."""
    import torch.fx.experimental._config as fx_config

    previous = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    autocast, linspace = torch.autocast, torch.linspace
    torch.autocast = lambda *args, **kwargs: contextlib.nullcontext()
    # Hiera reads its drop-path schedule with .item(): that small tensor is made on the CPU
    torch.linspace = lambda *args, **kwargs: linspace(*args, **{**kwargs, "device": "cpu"})
    try:
        yield
    finally:
        torch.autocast, torch.linspace = autocast, linspace
        fx_config.meta_nonzero_assume_all_nonzero = previous


def mixed_prompts(n: int, size: int):
    """n prompts, half single points, half boxes, inside a size x size image."""
    from samdemo.prompts import box_prompt, point_prompt

    points = [point_prompt(size * (0.2 + 0.6 * i / max(n, 1)), size * 0.4) for i in range((n + 1) // 2)]
    boxes = [box_prompt(size * 0.1, size * 0.1, size * (0.5 + 0.4 * i / max(n, 1)), size * 0.8) for i in range(n // 2)]
    return points + boxes


class _SavedBytes:
    """Bytes autograd saves for backward (each storage once) and the largest tensor seen."""

    def __init__(self):
        self.storages: dict[int, int] = {}
        self.largest = 0

    def pack(self, tensor: torch.Tensor):
        nbytes = tensor.untyped_storage().nbytes() if tensor.device.type != "meta" else tensor.numel() * tensor.element_size()
        key = id(tensor.untyped_storage()) if tensor.device.type != "meta" else id(tensor)
        self.storages[key] = max(self.storages.get(key, 0), nbytes)
        self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def step_profile(name: str, prompts: int = 32, checkpointing: bool = False, image_size: int | None = None) -> dict:
    """Parameter count, FLOPs, saved-activation bytes and predicted peak memory of one attack
    step of registry model ``name`` (meta device: instant, no weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    from samdemo.build import build_architecture, get_spec
    from samdemo.efficiency import enable_activation_checkpointing
    from samdemo.efficiency import encoder_blocks as blocks_of
    from samdemo.engine import SegmentEngine

    spec = get_spec(name)
    with _meta_mode():
        with torch.device("meta"):
            model, family = build_architecture(spec.config)
        model.eval().requires_grad_(False)
        if checkpointing:
            enable_activation_checkpointing(model)
        engine = SegmentEngine(model, family, name)
        size = image_size or engine.image_size
        x = torch.zeros(1, 3, size, size, device="meta", requires_grad=True)
        saved = _SavedBytes()
        with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            features = engine.embed(x)
            if prompts:
                loss = engine.decode(features, mixed_prompts(prompts, size), validate=False).low_res_all.mean()
            else:  # encoder only (the key-channel loss without the decoder)
                loss = features.image_embed.square().mean()
            torch.autograd.grad(loss, x)
        flops = counter.get_total_flops()
    params = sum(p.numel() for p in model.parameters())
    encoder_params = sum(p.numel() for p in model.image_encoder.parameters())
    weights = params * 4
    io = 2 * x.numel() * 4
    fp32 = weights + saved.total + 2 * saved.largest + io
    bf16 = weights + saved.total // 2 + saved.largest + io
    if checkpointing:  # the backward recomputes one block at a time: one block's activations on top
        full = step_profile(name, prompts, False, image_size)["saved_activations_mb"] * 2**20
        block = int((full - saved.total) / len(blocks_of(model)))
        fp32, bf16 = fp32 + block, bf16 + block // 2
    return {
        "model": name, "family": family, "image_size": size, "prompts": prompts, "checkpointing": checkpointing,
        "params_m": params / 1e6, "encoder_params_m": encoder_params / 1e6,
        "gflop_per_step": flops / 1e9, "weights_mb": weights / 2**20, "saved_activations_mb": saved.total / 2**20,
        "largest_tensor_mb": saved.largest / 2**20,
        "peak_memory_gb_fp32": fp32 / 2**30, "peak_memory_gb_bf16": bf16 / 2**30,
        "gpu_ms_per_step_bf16": flops / (GPU_PEAK_TFLOPS["bf16"] * 1e12 * GPU_UTILISATION) * 1e3,
        "gpu_ms_per_step_tf32": flops / (GPU_PEAK_TFLOPS["tf32"] * 1e12 * GPU_UTILISATION) * 1e3,
    }


def cpu_matmul_gflops(n: int = 512, repeats: int = 20) -> float:
    """This CPU's fp32 matmul rate (GFLOP/s), best of ``repeats``: the throughput a CPU
    prediction divides FLOPs by."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`step_profile` rows."""
    head = ("| model | px | params (M) | GFLOP / step | saved act. (GB) | peak fp32 (GB) | peak bf16 (GB) "
            "| ms / step bf16 | ms / step TF32 | 10-step attack bf16 (s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        tag = r["model"] + (" + ckpt" if r["checkpointing"] else "")
        lines.append(f"| {tag} | {r['image_size']} | {r['params_m']:.1f} | {r['gflop_per_step']:.0f} "
                     f"| {r['saved_activations_mb'] / 1024:.2f} | {r['peak_memory_gb_fp32']:.2f} "
                     f"| {r['peak_memory_gb_bf16']:.2f} | {r['gpu_ms_per_step_bf16']:.1f} "
                     f"| {r['gpu_ms_per_step_tf32']:.1f} | {r['gpu_ms_per_step_bf16'] * 10 / 1e3:.2f} |")
    return "\n".join(lines)
