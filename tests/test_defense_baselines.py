"""Defense baselines (LoRA, full weights) on the SVD adapter's layers: counts, exactness, files, training."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from samdemo import hub
from samdemo.defense import (CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, AdapterConfig, AdapterError, apply_adapter,
                             default_target_modules, get_adapter, load_adapter_folder, read_adapter_folder,
                             save_adapter)
from samdemo.build import CHECKPOINT_DIR, CONFIG_DIR, build_architecture
from samdemo.plots import singular_value_plot
from tests.test_adapter import _edit_config, _neck, _train_cfg, images, max_diff, outputs, tiny_engine

BASELINES = ["lora", "full"]


def perturb(adapter, scale: float = 0.3, seed: int = 1) -> None:
    """Random values in every trainable tensor, ``scale`` x its natural size (its learning-rate scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in adapter.param_groups(scale):
            p = group["params"][0]
            p.copy_(torch.randn(p.shape, generator=g) * group["lr"])
    adapter.refresh_tag()


def expected_count(method: str, rows: int, cols: int, rank: int | None = None) -> int:
    """Trainable values of one layer; ``rank``: LoRA's (default 1) or the SVD's trained values (default all)."""
    return {"svd": min(rows, cols, rank or rows), "lora": (rank or 1) * (rows + cols), "full": rows * cols}[method]


# ---------------------------------------------------------------------- counts
@pytest.mark.parametrize("config, counts", [
    # sam-small neck: 128 x 192 (1x1) and 128 x 1152 (3x3): LoRA rank 1 (128 + 192) + (128 + 1152),
    # full 128 x 192 + 128 x 1152. sam2-small: 128 x 384 and 128 x 192 (1x1): (128 + 384) + (128 + 192),
    # 128 x 384 + 128 x 192 (the biases stay frozen).
    ("sam_small.yaml", {"svd": 256, "lora": 1600, "full": 172032}),
    ("sam2_small.yaml", {"svd": 256, "lora": 832, "full": 73728}),
])
def test_counts_on_embedded_small_architectures(config, counts):
    torch.manual_seed(0)
    model, family = build_architecture(CONFIG_DIR / config)
    for method, count in counts.items():
        adapter = apply_adapter(model, AdapterConfig(method=method), family=family)
        assert adapter.num_trainable == count == adapter.config.num_trainable
        assert sum(p.numel() for p in adapter.parameters()) == count
        assert [n for n, p in model.named_parameters() if p.requires_grad] == []
        adapter.remove()


@pytest.mark.parametrize("kind, channels, family", [("sam", [768], "sam"), ("sam2", [768, 384, 192, 96], "sam2")])
def test_counts_on_meta_necks(kind, channels, family):
    # ViT-B: 256 x 768 and 256 x 2304; Hiera-T/S: 256 x 768 and 256 x 384
    model = _neck(channels, kind)
    modules = dict(model.named_modules())
    shapes = [(modules[n].weight.shape[0], modules[n].weight[0].numel()) for n in default_target_modules(family)]
    for method, rank in (("svd", None), ("svd", 100), ("lora", 1), ("lora", 4), ("full", None)):
        adapter = apply_adapter(model, AdapterConfig(method=method), family=family, rank=rank)
        assert adapter.num_trainable == sum(expected_count(method, r, c, rank) for r, c in shapes)
        adapter.remove()
    if kind == "sam":
        assert sum(expected_count("lora", r, c) for r, c in shapes) == 3584
        assert sum(expected_count("full", r, c) for r, c in shapes) == 786432


def test_lora_rank_is_checked():
    engine = tiny_engine("sam")
    with pytest.raises(AdapterError, match="LoRA rank 33 does not fit its 32x32 matrix"):
        apply_adapter(engine, AdapterConfig(method="lora"), rank=33)
    assert get_adapter(engine) is None
    with pytest.raises(AdapterError, match="Unknown adapter method 'dora'"):
        apply_adapter(engine, AdapterConfig(method="dora"))


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_identity_at_init_and_only_the_update_trainable(method, family):
    engine = tiny_engine(family)
    x = images()
    base = outputs(engine, x)
    adapter = apply_adapter(engine, AdapterConfig(method=method), rank=2)
    assert adapter.is_identity() and engine.adapter_tag.startswith(f"{method}:")
    assert max_diff(outputs(engine, x), base) == 0.0  # W + 0: bit-exact, unlike the SVD reconstruction
    names = {n for n, _ in adapter.named_parameters()}
    per_layer = {"lora": {"lora_A", "lora_B"}, "full": {"weight_delta"}}[method]
    assert names == {f"layers.{i}.{p}" for i in range(2) for p in per_layer}
    assert [n for n, p in engine.model.named_parameters() if p.requires_grad] == []
    engine.embed(x).image_embed.square().mean().backward()
    for layer in adapter.layers:
        update = getattr(layer, layer.zero_param)
        assert update.grad is not None and update.grad.abs().sum() > 0
    if method == "lora":  # B = 0, so A's gradient is exactly zero at the first step (as in LoRA)
        assert all(layer.lora_A.grad is not None and not layer.lora_A.grad.any() for layer in adapter.layers)
    assert all(p.grad is None for p in engine.model.parameters())
    adapter.remove()
    assert max_diff(outputs(engine, x), base) == 0.0


@pytest.mark.parametrize("method", BASELINES)
def test_merge_matches_unmerged_and_unmerge_is_bit_exact(method):
    engine = tiny_engine("sam2")
    x = images(1)
    base = outputs(engine, x)
    adapter = apply_adapter(engine, AdapterConfig(method=method))
    originals = [(layer.module.weight.data_ptr(), layer.module.weight.detach().clone()) for layer in adapter.layers]
    perturb(adapter)
    adapted = outputs(engine, x)
    assert max_diff(adapted, base) > 1e-3 and not adapter.is_identity()
    spectra = adapter.singular_values()
    adapter.merge()
    assert "forward" not in vars(adapter.layers[0].module)  # plain module forward: zero overhead
    assert max_diff(outputs(engine, x), adapted) < 1e-5
    for name, (s, s_adapted) in adapter.singular_values().items():  # W and W' are still known while merged
        assert torch.allclose(s, spectra[name][0]) and torch.allclose(s_adapted, spectra[name][1], rtol=1e-5)
    adapter.unmerge()
    for layer, (ptr, weight) in zip(adapter.layers, originals):
        assert layer.module.weight.data_ptr() == ptr and torch.equal(layer.module.weight, weight)
    assert max_diff(outputs(engine, x), adapted) == 0.0
    adapter.merge()
    adapter.remove()
    assert max_diff(outputs(engine, x), base) == 0.0


@pytest.mark.parametrize("method", ["svd", "lora", "full"])
def test_learning_rates_make_one_adam_step_a_relative_change_of_w(method):
    # Adam moves every coordinate by about its learning rate: model that by +-lr per coordinate.
    engine = tiny_engine("sam")
    adapter = apply_adapter(engine, AdapterConfig(method=method))
    lr, g = 0.01, torch.Generator().manual_seed(0)
    with torch.no_grad():
        for group in adapter.param_groups(lr):
            p = group["params"][0]
            p.add_(group["lr"] * torch.randn(p.shape, generator=g).sign())
    for layer in adapter.layers:
        w = layer.base_weight.detach()
        change = float((layer.effective_weight().detach() - w).norm() / w.norm())
        low = {"svd": 0.5, "lora": 0.9, "full": 0.999}[method]  # svd: lr x mean(s) sqrt(r) <= lr x ||W||_F
        assert low * lr < change < 1.1 * lr, (layer.name, change)


# ---------------------------------------------------------------------- files
@pytest.fixture(params=BASELINES)
def saved(request, tmp_path):
    """(method, engine, adapter folder, reference outputs of the adapted model, input)."""
    engine = tiny_engine("sam")
    x = images(2)
    adapter = apply_adapter(engine, AdapterConfig(method=request.param), rank=2)
    perturb(adapter)
    reference = outputs(engine, x)
    save_adapter(adapter, tmp_path / "adapter", training={"steps": 3}, figure=singular_value_plot(adapter))
    adapter.remove()
    return request.param, engine, tmp_path / "adapter", reference, x


def test_save_load_round_trip(saved, tmp_path):
    method, engine, folder, reference, x = saved
    fresh = tiny_engine("sam")
    for load in (load_adapter_folder, hub.load_adapter_from_hub):
        adapter = load(fresh, folder)
        assert adapter.method == method and fresh.adapter_tag.startswith(f"{method}:")
        assert max_diff(outputs(fresh, x), reference) < 1e-6
        adapter.remove()
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["method"] == method and config["format_version"] == 2
    rank = {"lora": 2, "full": 32}[method]  # full: the update's rank is the matrix's
    assert [info["rank"] for info in config["layers"].values()] == [rank, rank]
    shapes = {k: tuple(v.shape) for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
    assert shapes == ({"image_encoder.neck.0.lora_A": (2, 32), "image_encoder.neck.0.lora_B": (32, 2),
                       "image_encoder.neck.2.lora_A": (2, 288), "image_encoder.neck.2.lora_B": (32, 2)}
                      if method == "lora" else
                      {"image_encoder.neck.0.weight_delta": (32, 32, 1, 1),
                       "image_encoder.neck.2.weight_delta": (32, 32, 3, 3)})
    assert config["num_trainable"] == sum(math.prod(s) for s in shapes.values())
    card = (folder / CARD_FILE).read_text()
    assert {"lora": "# LoRA robustness adapter (baseline)", "full": "# Full-weight robustness adapter"}[method] in card
    assert f"(method `{method}`:" in card and "svd" not in card.split("---")[1]  # the tags name the method
    assert (folder / "singular_values.png").stat().st_size > 10_000  # spectra of W and W'
    title = singular_value_plot(load_adapter_folder(fresh, folder)).get_suptitle()  # the app's plot too
    assert title.endswith("robustness adapter (baseline): singular values of W, W'") and "SVD" not in title
    with pytest.raises(AdapterError, match="not singular values"):
        read_adapter_folder(folder).values()


def test_refusals(saved):
    method, _, folder, _, x = saved
    other = tiny_engine("sam", seed=1)  # same architecture, other weights
    before = outputs(other, x)
    with pytest.raises(AdapterError, match="fingerprint .* different weights"):
        load_adapter_folder(other, folder)
    assert get_adapter(other) is None and max_diff(outputs(other, x), before) == 0.0
    adapter = load_adapter_folder(tiny_engine("sam"), folder)
    with pytest.raises(AdapterError, match="already has a"):
        load_adapter_folder(adapter.engine, folder)
    with pytest.raises(AdapterError, match="needs an SVD adapter"):
        adapter.set_singular_values({})
    adapter.remove()
    original = (folder / CONFIG_FILE).read_text()
    neck0 = "image_encoder.neck.0"
    cases = [(lambda d: d["layers"][neck0].update(rank=0), "has rank 0 but its 32x32 matrix " + (
                 "allows lora rank 1 to 32" if method == "lora" else "has 32 singular values")),
             (lambda d: d.update(method="svd"), r"num_trainable is \d+ but the layers hold \d+"),
             (lambda d: d.update(method="dora"), "unknown method 'dora'")]
    if method == "lora":  # a valid rank that the file does not hold
        cases.append((lambda d: d["layers"][neck0].update(rank=3), "num_trainable is 768 but the layers hold 832"))
    for change, message in cases:
        _edit_config(folder, change)
        with pytest.raises(AdapterError, match=message):
            read_adapter_folder(folder)
        (folder / CONFIG_FILE).write_text(original)


def test_version_1_svd_files_still_load(tmp_path):
    engine = tiny_engine("sam")
    x = images(3)
    adapter = apply_adapter(engine)
    perturb(adapter, scale=0.01)
    reference = outputs(engine, x)
    save_adapter(adapter, tmp_path / "v1")
    adapter.remove()

    def as_version_1(data):
        data.pop("method")
        data["format_version"] = 1

    _edit_config(tmp_path / "v1", as_version_1)
    adapter = load_adapter_folder(engine, tmp_path / "v1")
    assert adapter.method == "svd" and adapter.config.format_version == 2
    assert max_diff(outputs(engine, x), reference) < 1e-6
    for shipped in sorted(CHECKPOINT_DIR.glob("*-adapter")):  # the shipped defenses: singular values, <= 512
        files = read_adapter_folder(shipped)
        assert files.config.method == "svd" and 0 < files.config.num_trainable <= 512


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("method", BASELINES)
def test_train_adapter_two_steps_writes_a_loadable_adapter(method, tmp_path):
    from samdemo.train_adapter import build_engine, train_adapter

    cfg = _train_cfg(method=method, lora_rank=1, steps=2, attacks="feature", attack_steps=1)
    engine = build_engine(cfg)
    log = train_adapter(cfg, tmp_path / "run", tmp_path / "out", engine=engine)
    assert log["method"] == method and len(log["train"]) == 2
    assert get_adapter(engine) is None
    adapter = load_adapter_folder(engine, tmp_path / "out")
    assert adapter.method == method and not adapter.is_identity()
    config = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert config["method"] == method and config["num_trainable"] == log["num_trainable"] == adapter.num_trainable
    assert config["num_trainable"] == {"lora": (32 + 32) + (32 + 288), "full": 32 * 32 + 32 * 288}[method]
    assert config["training"]["method"] == method and config["training"]["num_trainable"] == config["num_trainable"]
    names = {"lora": ("lora_A", "lora_B"), "full": ("weight_delta",)}[method]
    assert set(config["training"]["lr_per_tensor"]) == {f"image_encoder.neck.{i}.{n}" for i in (0, 2) for n in names}
    adapter.remove()
    other = _train_cfg(method="svd" if method != "svd" else "full", steps=2)  # the run dir belongs to `method`
    with pytest.raises(RuntimeError, match="another model, method, target layers, rank"):
        train_adapter(other, tmp_path / "run", None, engine=engine)


def test_cli_method_and_default_folders():
    import argparse

    from samdemo.train_adapter import AdapterTrainConfig, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--method", "lora", "--lora-rank", "4"])
    assert args.method == "lora" and args.lora_rank == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "dora"])
    assert [AdapterTrainConfig(method=m, lora_rank=4, svd_rank=s).variant() for m, s in (("svd", 0), ("svd", 14), ("lora", 0), ("full", 14))] == [
        "", "-top14", "-lora-r4", "-full"]
