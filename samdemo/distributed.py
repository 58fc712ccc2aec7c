"""torch.distributed for samdemo's commands, started with ``torchrun`` (one process per device or
CPU share) or as one plain process, where every function here is a no-op.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous for several nodes); the
process group uses NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE_HELP = ("cpu | cuda | cuda:N; default cuda when there is one, else cpu (under torchrun --device cuda: each "
               "process on its local rank's GPU)")


def add_device_argument(parser, default: str = "") -> None:
    """``--device`` of every command that runs a model; :func:`check_device` reads it."""
    parser.add_argument("--device", default=default, help=DEVICE_HELP)


def check_device(device: str) -> str:
    """``device`` ("" = :func:`default_device`) if this machine has it; ValueError with one line otherwise.

    "cuda" stays unindexed, so that :func:`local_device` gives each torchrun process its own GPU."""
    device = (device or default_device()).strip()
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N.") from None
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise ValueError(f"--device {device}: samdemo runs on cpu or cuda[:N].")
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"--device {device}: CUDA is not available on this machine ({why}); use --device cpu.")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"--device {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}.")
    return device


def local_device(device: str = "") -> str:
    """``device`` ("" = cuda when there is one), with this process's GPU index under torchrun."""
    device = device or default_device()
    if device == "cuda" and world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def setup(device: str = "", backend: str | None = None) -> int:
    """Join the process group when started by torchrun; returns this process's rank.

    ``backend``: NCCL for a CUDA ``device`` and gloo otherwise unless given (evaluate only needs barriers
    between processes, which gloo does on any device)."""
    if world_size() > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if (device or default_device()).startswith("cuda") else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_device("cuda"))
        dist.init_process_group(backend)
    return rank()


def group() -> tuple[int, int]:
    """(rank, world size) in the joined process group; (0, 1) outside one (a plain process, or
    torchrun's variables without :func:`setup`)."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, device: torch.device, unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when there are several processes.

    ``unused_parameters``: some parameters take no part in the forward pass (SAM 2's memory
    modules, on single images), which DDP must then look for at every step."""
    if not dist.is_initialized():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused_parameters)


def _collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def mean(value: torch.Tensor) -> float:
    """The mean of a scalar over all processes."""
    if not dist.is_initialized():
        return float(value)
    total = value.detach().float().reshape(1).to(_collective_device())
    dist.all_reduce(total)
    return float(total) / world_size()


def agree(flag: bool) -> bool:
    """Process 0's ``flag``, on every process (e.g. "the time budget is spent")."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def total(value: torch.Tensor) -> float:
    """The sum of a scalar over all processes."""
    if not dist.is_initialized():
        return float(value.detach())
    summed = value.detach().float().reshape(1).to(_collective_device())
    dist.all_reduce(summed)
    return float(summed)


def sum_gradients(parameters) -> None:
    """Replace each parameter's gradient by its sum over all processes, in one all-reduce.

    For a few parameters trained through hooks inside a frozen model (an adapter), where a
    DistributedDataParallel wrapper would also fire during the attacks' backward passes. Each
    process's loss must be its share of the global loss (its sum over the global count), so the
    summed gradient is the gradient of the global loss. A missing gradient counts as zeros, so
    every process takes part in the same collective."""
    if not dist.is_initialized():
        return
    parameters = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_collective_device())
    dist.all_reduce(flat)
    for p, chunk in zip(parameters, flat.split([g.numel() for g in grads])):
        p.grad = chunk.view_as(p).to(p.device, p.dtype)
