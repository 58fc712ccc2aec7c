"""Adapted layers, the maths of the defense: W' for one ``nn.Linear`` / ``nn.Conv2d`` per method.

An adapted layer replaces the weight W of its base module (a conv weight ``out x in x k x k`` is
read as the ``out x (in k k)`` matrix it multiplies with) by a trainable W' that equals W at
initialisation; the base module stays frozen. One class per ``method`` (:data:`LAYER_TYPES`):

* ``"svd"`` (:class:`SVDLayer`, the Robust SAM defense): ``W = U diag(s_base) V^T`` (thin SVD,
  float64 then float32, so a layer holds ``r = min(out, in k k)`` singular values; U ``out x r``,
  V^T ``r x (in k k)``, s_base ``(r,)``); U and V are frozen buffers **recomputed from the base
  weights** whenever an adapter is applied or loaded, never stored. ``W' = U diag(s_base + delta)
  V^T`` with ``delta`` (zero-initialised) the only trainable tensor, so W' = W up to the float32
  rounding of the reconstruction (~1e-7 relative). By default every singular value is trained;
  with a rank k only the k largest are (``delta`` has shape ``(k,)``), the rest keep their base
  values: a fixed budget spread over many layers (or k at random positions, the control that tests
  whether the largest matter; the config then lists the layer's ``indices``). Files store the k adapted values ``s``
  themselves (and their ``s_base``, for the load-time check and the plots).
* ``"lora"`` (:class:`LoRALayer`, baseline): ``W' = W + B A`` on the matrix view, A
  ``rank x (in k k)`` (PEFT's init, seeded), B ``out x rank`` zero-initialised (PEFT's
  ``alpha / rank`` scale is 1: with Adam and the learning-rate rule below a scale changes nothing).
  ``rank x (out + in k k)`` trainable values per layer.
* ``"full"`` (:class:`FullLayer`, baseline): ``W' = W + Delta``, Delta in the weight's shape, the
  whole weight trainable (biases stay frozen, as in the other two methods; SAM's neck convs have
  none); files store Delta.

W' = W exactly at initialisation for the two baselines (their update is zero). Training uses a
learning rate per trainable tensor (``lr_scales``) such that one Adam step, which moves every
coordinate by about its learning rate, changes W by about ``lr x ||W||_F`` (Frobenius): a
*relative* step, the same for every method, layer and model size.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from samdemo.defense.fileformat import S_BASE_KEY, S_KEY
from samdemo.errors import AdapterError

SUPPORTED_MODULES = (nn.Linear, nn.Conv2d)
LAYER_ATTR = "_samdemo_svd_adapter_layer"  # attribute on an adapted base module: its AdapterLayer
# Loading tolerates this relative difference between the stored s_base and the recomputed one
# (different BLAS / devices); a different base model differs by orders of magnitude more.
BASE_S_RTOL = 1e-3


def attached_layer(module: nn.Module) -> "AdapterLayer | None":
    """The AdapterLayer currently attached to a base module (None: not adapted)."""
    return getattr(module, LAYER_ATTR, None)


class AdapterLayer(nn.Module):
    """One adapted layer: the frozen base module and a trainable update of its weight.

    A subclass per method defines W' (``_effective``: any shape with the weight's numel), the
    parameter that is zero at initialisation (``zero_param``: W' = W), the per-parameter
    learning-rate scales and the tensors of its files (``file_shapes``, ``state``, ``load_state``);
    its model card's texts are in :mod:`samdemo.defense.card`. Subclasses are built as
    ``cls(name, module, rank, generator)``; only LoRA uses ``rank`` (the others' is the matrix's)
    and ``generator`` (its A).
    """

    method = ""
    noun = ""  # for messages: "an SVD adapter"
    zero_param = ""
    formula = ""  # the parametrisation, for the card and the docs
    lr_rule = ""  # the learning-rate rule of ``lr_scales``, recorded in the training recipe

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        if not isinstance(module, SUPPORTED_MODULES):
            raise AdapterError(f"{name} is a {type(module).__name__}; only Linear and Conv2d can be adapted.")
        self.name = name
        self.weight_shape = tuple(module.weight.shape)
        self.kind = type(module).__name__
        self.compute_dtype = torch.promote_types(module.weight.dtype, torch.float32)
        # Plain attributes, not submodules: the adapter must not own (or re-register) base modules.
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "original_weight", None)  # set while merged

    # ------------------------------------------------------------------ shapes and counts
    @staticmethod
    def ranks(rows: int, cols: int) -> range:
        """Allowed ``rank`` (of the update) for an ``rows x cols`` matrix: full rank."""
        return range(min(rows, cols), min(rows, cols) + 1)

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape in ``adapter.safetensors`` for a layer described by ``info``."""
        raise NotImplementedError

    @classmethod
    def count(cls, info: dict) -> int:
        """Trainable values of a layer described by ``info`` (the file's tensors, by default)."""
        return sum(math.prod(shape) for shape in cls.file_shapes(info).values())

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.weight_shape[0], math.prod(self.weight_shape[1:])

    @property
    def rank(self) -> int:
        return min(self.matrix_shape)

    def describe(self) -> dict:
        return {"type": self.kind, "weight_shape": list(self.weight_shape), "matrix_shape": list(self.matrix_shape),
                "rank": self.rank}

    # ------------------------------------------------------------------ weights
    @property
    def base_weight(self) -> torch.Tensor:
        return self.original_weight if self.original_weight is not None else self.module.weight

    def _effective(self) -> torch.Tensor:
        raise NotImplementedError

    def effective_weight(self) -> torch.Tensor:
        """W' in the weight's shape and dtype (differentiable in the trainable parameters)."""
        device = self.module.weight.device
        if next(self.parameters()).device != device:  # the model was moved after the adapter was applied
            self.to(device)
        return self._effective().reshape(self.weight_shape).to(self.module.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the adapted module's forward (unmerged)
        module = self.module
        if isinstance(module, nn.Linear):
            return F.linear(x, self.effective_weight(), module.bias)
        return module._conv_forward(x, self.effective_weight(), module.bias)

    @torch.no_grad()
    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Singular values of W and of W' (matrix view, descending), float32 CPU."""
        rows = self.weight_shape[0]
        return tuple(torch.linalg.svdvals(w.detach().reshape(rows, -1).to("cpu", torch.float64)).float()
                     for w in (self.base_weight, self.effective_weight()))

    def is_identity(self) -> bool:
        return bool((getattr(self, self.zero_param) == 0).all())

    def structure_key(self) -> bytes:
        """What, besides the parameters, decides W' (part of the adapter's cache tag): nothing by default."""
        return b""

    @torch.no_grad()
    def reset(self) -> None:
        getattr(self, self.zero_param).zero_()

    def lr_scales(self) -> dict[str, float]:
        """Parameter name -> learning-rate multiplier (see the module docstring and ``lr_rule``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ files
    def state(self) -> dict[str, torch.Tensor]:
        """The layer's tensors in ``adapter.safetensors`` (float32 CPU): its parameters, by default."""
        return {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in self.named_parameters()}

    @torch.no_grad()
    def load_state(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        """Set the parameters from validated file tensors (``state``'s inverse)."""
        for name, p in self.named_parameters():
            p.copy_(tensors[name].to(p))


class SVDLayer(AdapterLayer):
    """Robust SAM's layer: frozen U, V^T, s_base buffers and the trainable ``delta`` (s = s_base + delta)."""

    method, noun, zero_param = "svd", "an SVD adapter", "delta"
    formula = "W' = U diag(s_base + delta) V^T"
    lr_rule = "lr x mean(s_base) for delta"

    def __init__(self, name: str, module: nn.Module, rank: int | None = None, generator=None,
                 indices=None, select: str = "largest"):
        super().__init__(name, module)
        weight = module.weight.detach()
        matrix = weight.reshape(weight.shape[0], -1).to("cpu", torch.float64)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        self.register_buffer("U", u.to(weight.device, self.compute_dtype), persistent=False)
        self.register_buffer("Vh", vh.to(weight.device, self.compute_dtype), persistent=False)
        self.register_buffer("s_base", s.to(weight.device, self.compute_dtype), persistent=False)
        if indices is None:
            indices = self.select_indices(s.numel(), rank, select, generator)
        self.register_buffer("trained_indices", torch.as_tensor(list(indices), dtype=torch.long, device=weight.device),
                             persistent=False)
        self.delta = nn.Parameter(torch.zeros(len(indices), device=weight.device, dtype=self.compute_dtype))

    @staticmethod
    def select_indices(total: int, rank: int | None, select: str, generator=None) -> list[int]:
        """Positions (in the base's descending order) of the trained singular values: the k largest (``select``
        "largest", the defense) or k drawn at random (``"random"``: the control that asks whether choosing the
        largest matters); every one of them when ``rank`` is None, all a narrow layer has when it is larger."""
        trained = total if rank is None else min(rank, total)
        if trained < 1:
            raise AdapterError(f"An SVD adapter trains at least one singular value (rank {rank!r}).")
        if select == "largest":
            return list(range(trained))
        if select == "random":
            return sorted(torch.randperm(total, generator=generator)[:trained].tolist())
        raise AdapterError(f"Unknown singular-value selection {select!r}; expected one of {', '.join(SVD_SELECTIONS)}.")

    def describe(self) -> dict:
        info = super().describe()
        if not self.trains_largest:
            info["indices"] = self.trained_indices.tolist()
        return info

    def structure_key(self) -> bytes:
        return b"" if self.trains_largest else self.trained_indices.cpu().numpy().tobytes()

    @property
    def trains_largest(self) -> bool:
        """Whether the trained values are the k largest (positions 0..k-1), the defense's choice."""
        return self.trained_indices.tolist() == list(range(self.rank))

    @staticmethod
    def ranks(rows: int, cols: int) -> range:
        """Trained singular values of an ``rows x cols`` matrix: k of them, 1 <= k <= min(rows, cols)."""
        return range(1, min(rows, cols) + 1)

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        return {S_KEY: (info["rank"],), S_BASE_KEY: (info["rank"],)}

    @classmethod
    def count(cls, info: dict) -> int:
        return info["rank"]

    @property
    def rank(self) -> int:
        """k: the number of singular values trained; min(out, in k k) unless limited."""
        return self.delta.numel()

    @property
    def singular_values(self) -> torch.Tensor:
        """The whole adapted spectrum (r,): s_base + delta at the trained positions, s_base elsewhere."""
        return self.s_base.index_add(0, self.trained_indices, self.delta.to(self.s_base.dtype))

    def _effective(self) -> torch.Tensor:
        return (self.U * self.singular_values) @ self.Vh

    def spectrum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_base, s_base + delta): the adapted values in the base's order (not re-sorted)."""
        return self.s_base.detach().float().cpu(), self.singular_values.detach().float().cpu()

    def lr_scales(self) -> dict[str, float]:
        return {"delta": float(self.s_base.mean())}

    def state(self) -> dict[str, torch.Tensor]:
        index, (base, adapted) = self.trained_indices.cpu(), self.spectrum()
        return {S_KEY: adapted[index].contiguous(), S_BASE_KEY: base[index].contiguous()}

    @torch.no_grad()
    def load_state(self, tensors: Mapping[str, torch.Tensor], source: str) -> None:
        base = self.s_base[self.trained_indices]
        stored, recomputed = tensors[S_BASE_KEY].float(), base.detach().float().cpu()
        error = float((stored - recomputed).abs().max() / recomputed.abs().max().clamp(min=1e-12))
        if error > BASE_S_RTOL:
            raise AdapterError(f"{source}: the base singular values stored for {self.name} differ from this "
                               f"model's by {error:.2e} (relative); the adapter belongs to other weights.")
        self.delta.copy_(tensors[S_KEY].to(self.s_base) - base)


class LoRALayer(AdapterLayer):
    """Baseline: W' = W + B A on the matrix view; A ``rank x (in k k)``, B ``out x rank`` (zero at init)."""

    method, noun, zero_param = "lora", "a LoRA adapter", "lora_B"
    formula = "W' = W + B A"
    lr_rule = "lr x rms(A) for A, lr x ||W||_F / (sqrt(out) ||A||_F) for B"

    def __init__(self, name: str, module: nn.Module, rank: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(name, module)
        rank = 1 if rank is None else rank
        rows, cols = self.matrix_shape
        if rank not in self.ranks(rows, cols):
            raise AdapterError(f"{name}: LoRA rank {rank!r} does not fit its {rows}x{cols} matrix "
                               f"(1 to {min(rows, cols)}).")
        device = module.weight.device
        # PEFT's kaiming_uniform_(a=sqrt(5)) on A: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from a seeded generator.
        a = (torch.rand(rank, cols, generator=generator, dtype=torch.float64) * 2 - 1) / math.sqrt(cols)
        self.lora_A = nn.Parameter(a.to(device, self.compute_dtype))
        self.lora_B = nn.Parameter(torch.zeros(rows, rank, device=device, dtype=self.compute_dtype))

    @staticmethod
    def ranks(rows: int, cols: int) -> range:
        return range(1, min(rows, cols) + 1)

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        (rows, cols), rank = info["matrix_shape"], info["rank"]
        return {"lora_A": (rank, cols), "lora_B": (rows, rank)}

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def _effective(self) -> torch.Tensor:
        return self.base_weight.reshape(self.weight_shape[0], -1) + self.lora_B @ self.lora_A

    def lr_scales(self) -> dict[str, float]:
        # A step of B by lr_B per entry changes W by lr_B sqrt(out) ||A||_F (A's rows nearly orthogonal):
        # lr x ||W||_F needs lr_B as below. A moves relative to its own scale.
        a, w = self.lora_A.detach().float(), self.base_weight.detach().float()
        return {"lora_A": float(a.square().mean().sqrt()),
                "lora_B": float(w.norm() / (math.sqrt(self.weight_shape[0]) * a.norm()))}


class FullLayer(AdapterLayer):
    """Baseline: the whole weight trainable, W' = W + Delta (Delta zero at init; the bias stays frozen)."""

    method, noun, zero_param = "full", "a full-weight adapter", "weight_delta"
    formula = "W' = W + Delta"
    lr_rule = "lr x rms(W) for Delta"

    def __init__(self, name: str, module: nn.Module, rank: int | None = None, generator=None):
        super().__init__(name, module)
        self.weight_delta = nn.Parameter(torch.zeros(self.weight_shape, device=module.weight.device,
                                                     dtype=self.compute_dtype))

    @classmethod
    def file_shapes(cls, info: dict) -> dict[str, tuple[int, ...]]:
        return {"weight_delta": tuple(info["weight_shape"])}

    def _effective(self) -> torch.Tensor:
        return self.base_weight + self.weight_delta

    def lr_scales(self) -> dict[str, float]:
        return {"weight_delta": float(self.base_weight.detach().float().square().mean().sqrt())}


SVD_SELECTIONS = ("largest", "random")
LAYER_TYPES: dict[str, type[AdapterLayer]] = {cls.method: cls for cls in (SVDLayer, LoRALayer, FullLayer)}
METHODS = tuple(LAYER_TYPES)
