"""Controls for a defense: the same trained parameters with their adversarial meaning taken away.

    python -m samdemo control --adapter checkpoints/sam2-small-adapter --out checkpoints/sam2-small-adapter-shuffled

**Shuffled** (``--kind shuffled``): in every adapted layer, the trained relative changes
``r_i = s_i / s_base_i`` of the k trained singular values are permuted among those k directions
(``s'_i = s_base_i * r_perm(i)``). The control changes the weights by as much as the adapter, with
the same distribution of changes per layer, but in directions that adversarial training did not
choose. A transfer gain that the shuffled control also shows is model mismatch (the attack was
crafted on other weights), not robustness; only the gain above it counts (docs/METHOD.md).

The other controls are trainings with the adapter's recipe: clean-only fine-tuning of the same
parameters is ``train-adapter --adv-weight 0``; the same budget on k singular values per layer drawn at
random instead of the k largest is ``train-adapter --svd-select random`` (only where the adapter
trains fewer than all of a layer's values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from samdemo import distributed

CONTROL_KINDS = ("shuffled",)


def shuffled_values(values: dict[str, tuple[torch.Tensor, torch.Tensor]], trained: dict[str, Sequence[int]],
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """name -> adapted spectrum (r,) with the relative changes of the trained values permuted among them.

    ``values``: name -> (s_base, s) as ``Adapter.singular_values()`` gives them (r,) each; ``trained``:
    name -> the positions of its trained values (``SVDLayer.trained_indices``)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, (base, adapted) in values.items():
        index = torch.as_tensor(list(trained[name]), dtype=torch.long)
        ratio = adapted[index] / base[index].clamp_min(torch.finfo(base.dtype).tiny)
        shuffled = adapted.clone()
        shuffled[index] = base[index] * ratio[torch.randperm(len(index), generator=generator)]
        out[name] = shuffled
    return out


def make_control(adapter_folder: str | Path, out: str | Path, kind: str = "shuffled", seed: int = 0,
                 device: str | None = None) -> Path:
    """Write the ``kind`` control of the SVD adapter in ``adapter_folder`` to ``out`` (an adapter folder that
    loads like any other, its config saying what it is)."""
    from samdemo.defense import AdapterError, load_adapter_folder, read_adapter_folder, save_adapter
    from samdemo.factory import load_engine
    from samdemo.plots import singular_value_plot

    if kind not in CONTROL_KINDS:
        raise ValueError(f"Unknown control {kind!r}; choose among {', '.join(CONTROL_KINDS)}.")
    files = read_adapter_folder(adapter_folder)
    if files.config.method != "svd":
        raise AdapterError(f"{adapter_folder} is not an SVD adapter; the shuffled control permutes singular values.")
    engine = load_engine(files.config.base_model, device=device)
    adapter = load_adapter_folder(engine, adapter_folder)
    trained = {layer.name: layer.trained_indices.tolist() for layer in adapter.layers}
    adapter.set_singular_values(shuffled_values(adapter.singular_values(), trained, seed))
    training = {"control": kind, "seed": seed, "source": Path(adapter_folder).name,
                "how": "relative changes s/s_base of the trained singular values permuted within each layer",
                "num_trainable": adapter.num_trainable}
    return save_adapter(adapter, out, training=training, metrics={}, figure=singular_value_plot(adapter))


def configure_parser(parser) -> None:
    parser.add_argument("--adapter", type=Path, required=True, help="the SVD adapter folder to control")
    parser.add_argument("--out", type=Path, required=True, help="the control's adapter folder")
    parser.add_argument("--kind", default="shuffled", choices=CONTROL_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    distributed.add_device_argument(parser)


def run(args) -> int:
    print(f"-> {make_control(args.adapter, args.out, args.kind, args.seed, args.device)}")
    return 0
