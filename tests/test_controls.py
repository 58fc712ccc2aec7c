"""samdemo.controls: the shuffled control of an SVD adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samdemo.defense import AdapterError, read_adapter_folder
from samdemo.controls import make_control, shuffled_values

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "sam2-small-adapter"


def test_shuffled_values_permute_the_trained_relative_changes_only():
    base = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])
    adapted = torch.tensor([8.8, 3.0, 2.5, 1.0, 0.5])  # three trained values, two untouched
    out = shuffled_values({"layer": (base, adapted)}, {"layer": [0, 1, 2]}, seed=1)["layer"]
    ratios = out[:3] / base[:3]
    assert sorted(ratios.tolist()) == pytest.approx(sorted((adapted[:3] / base[:3]).tolist()))
    assert torch.equal(out[3:], adapted[3:])
    seeds = {tuple(shuffled_values({"layer": (base, adapted)}, {"layer": [0, 1, 2]}, seed=s)["layer"].tolist())
             for s in range(6)}
    assert len(seeds) > 1  # the seed chooses the permutation


def test_shuffled_values_of_a_random_selection_stay_on_its_positions():
    base = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])
    adapted = torch.tensor([8.0, 5.0, 2.0, 0.5, 0.5])  # trained at positions 1 and 3
    out = shuffled_values({"layer": (base, adapted)}, {"layer": [1, 3]}, seed=0)["layer"]
    assert torch.equal(out[[0, 2, 4]], base[[0, 2, 4]])
    assert sorted((out[[1, 3]] / base[[1, 3]]).tolist()) == pytest.approx([0.5, 1.25])


@pytest.mark.skipif(not (SHIPPED / "adapter_config.json").exists(), reason="no shipped sam2-small adapter")
def test_control_of_the_shipped_adapter_loads_and_keeps_each_layers_changes(tmp_path):
    out = make_control(SHIPPED, tmp_path / "shuffled", seed=0)
    original, control = read_adapter_folder(SHIPPED), read_adapter_folder(out)
    assert control.config.training["control"] == "shuffled" and control.config.fingerprint == original.config.fingerprint
    assert "This is a control, not a defense" in (out / "README.md").read_text()
    assert "This is a control" not in (SHIPPED / "README.md").read_text()
    moved = 0
    for name, s in original.singular_values.items():
        base = original.base_singular_values[name]
        a, b = s / base, control.singular_values[name] / base
        assert torch.allclose(a.sort().values, b.sort().values, atol=1e-5)
        moved += int(not torch.allclose(a, b))
    assert moved >= len(original.singular_values) // 2  # the directions changed in most layers
    with pytest.raises(ValueError, match="Unknown control"):
        make_control(SHIPPED, tmp_path / "x", kind="nope")


def test_a_folder_that_is_not_an_adapter_is_refused(tmp_path):
    with pytest.raises(AdapterError):
        make_control(tmp_path, tmp_path / "out")
