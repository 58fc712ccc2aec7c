"""SVD singular-value adapter: exactness, trainable set, merge/unmerge, files, fingerprint, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from samdemo.defense import (CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, AdapterConfig, AdapterError, apply_adapter,
                             count_trainable, default_target_modules, get_adapter, load_adapter_folder,
                             read_adapter_folder, remove_adapter, resolve_targets, save_adapter)
from samdemo.build import CONFIG_DIR, build_architecture
from samdemo.engine import SegmentEngine
from samdemo.prompts import box_prompt, mask_prompt, point_prompt


def tiny_engine(family: str = "sam", seed: int = 0) -> SegmentEngine:
    torch.manual_seed(seed)
    model, fam = build_architecture(CONFIG_DIR / f"{family}_tiny_test.yaml")
    return SegmentEngine(model.eval(), fam, name=f"tiny-{family}")


def images(seed: int = 0, size: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def outputs(engine: SegmentEngine, x: torch.Tensor):
    """Image embedding, high-res features and mask logits for three prompt types."""
    h, w = x.shape[-2:]
    mask = np.zeros((h, w), bool)
    mask[10:30, 12:40] = True
    with torch.no_grad():
        features = engine.embed(x)
        prediction = engine.decode(features, [point_prompt(20, 20), box_prompt(5, 6, 40, 50), mask_prompt(mask)])
    return [features.image_embed, *features.high_res, prediction.logits, prediction.iou_all]


def perturb(adapter, scale: float = 0.1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.delta.copy_(torch.randn(layer.rank, generator=g) * scale * layer.s_base.mean())
    adapter.refresh_tag()


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# ---------------------------------------------------------------------- targets and counts
def test_default_targets_resolve_on_both_families():
    assert default_target_modules("sam") == ["image_encoder.neck.0", "image_encoder.neck.2"]
    assert default_target_modules("sam2") == ["image_encoder.neck.convs.0.conv", "image_encoder.neck.convs.1.conv"]
    for family in ("sam", "sam2"):
        engine = tiny_engine(family)
        assert resolve_targets(engine.model, default_target_modules(family)) == default_target_modules(family)
    engine = tiny_engine("sam2")
    assert resolve_targets(engine.model, ["image_encoder.neck.convs.*.conv"]) == [
        f"image_encoder.neck.convs.{i}.conv" for i in range(4)]
    with pytest.raises(AdapterError, match="matches no module"):
        resolve_targets(engine.model, ["image_encoder.nothing.*"])
    with pytest.raises(AdapterError, match="only Linear and Conv2d"):
        resolve_targets(tiny_engine("sam").model, ["image_encoder.neck.1"])  # a LayerNorm2d
    with pytest.raises(AdapterError, match="Unknown model family"):
        default_target_modules("sam3")


def _neck(in_channels: list[int], kind: str) -> nn.Module:
    """Stand-ins for the necks of Meta's models (real widths), without the 90M-parameter trunks."""
    root = nn.Module()
    root.image_encoder = nn.Module()
    if kind == "sam":  # ViT neck: 1x1 embed_dim -> 256, LayerNorm, 3x3 256 -> 256, LayerNorm
        root.image_encoder.neck = nn.Sequential(nn.Conv2d(in_channels[0], 256, 1, bias=False), nn.Identity(),
                                                nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.Identity())
    else:  # Hiera FPN: one lateral 1x1 conv per level, lowest resolution first
        root.image_encoder.neck = nn.Module()
        root.image_encoder.neck.convs = nn.ModuleList()
        for c in in_channels:
            level = nn.Sequential()
            level.add_module("conv", nn.Conv2d(c, 256, 1))
            root.image_encoder.neck.convs.append(level)
    return root


@pytest.mark.parametrize("kind, channels, family, expected", [
    ("sam", [768], "sam", 512),  # ViT-B (L: 1024, H: 1280 give 512 too)
    ("sam", [1280], "sam", 512),  # ViT-H
    ("sam2", [768, 384, 192, 96], "sam2", 512),  # Hiera-T / S
    ("sam2", [1152, 576, 288, 144], "sam2", 512),  # Hiera-L
])
def test_paper_count_512_on_meta_architectures(kind, channels, family, expected):
    adapter = apply_adapter(_neck(channels, kind), family=family)
    assert adapter.num_trainable == expected == adapter.config.num_trainable


@pytest.mark.parametrize("config", ["sam_small.yaml", "sam2_small.yaml"])
def test_count_on_embedded_small_architectures(config):
    # One value per singular value of each default layer's out x (in k k) matrix: min(out, in k k).
    # With the embedded models' width 128: sam-small neck.0 128 x 192 -> 128, neck.2 128 x 1152 -> 128;
    # sam2-small convs.0 128 x 384 -> 128, convs.1 128 x 192 -> 128; 256 in all (512 at width 256).
    torch.manual_seed(0)
    model, family = build_architecture(CONFIG_DIR / config)
    modules = dict(model.named_modules())
    expected = sum(min(modules[n].weight.shape[0], modules[n].weight[0].numel())
                   for n in default_target_modules(family))
    adapter = apply_adapter(model, family=family)
    assert adapter.num_trainable == expected == count_trainable(model) == adapter.config.num_trainable
    assert sum(p.numel() for p in adapter.parameters()) == expected
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
    width = modules[default_target_modules(family)[0]].weight.shape[0]
    if width == 128:  # the current embedded configs
        assert expected == 256


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_identity_at_init_and_only_s_trainable(family):
    engine = tiny_engine(family)
    x = images()
    base = outputs(engine, x)
    trainable_before = {n for n, p in engine.model.named_parameters() if p.requires_grad}
    adapter = apply_adapter(engine)
    assert adapter.is_identity()
    assert max_diff(outputs(engine, x), base) < 1e-5
    # the deltas are the only trainable tensors, and they get gradients
    assert [n for n, p in engine.model.named_parameters() if p.requires_grad] == []
    params = list(adapter.parameters())
    assert len(params) == 2 and all(p.requires_grad for p in params)
    assert sum(p.numel() for p in params) == adapter.num_trainable
    engine.embed(x).image_embed.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in engine.model.parameters())
    remove_adapter(engine)
    assert get_adapter(engine) is None and engine.adapter_tag == ""
    assert {n for n, p in engine.model.named_parameters() if p.requires_grad} == trainable_before
    assert max_diff(outputs(engine, x), base) == 0.0


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_merge_matches_unmerged_and_unmerge_is_bit_exact(family):
    engine = tiny_engine(family)
    x = images(1)
    base = outputs(engine, x)
    adapter = apply_adapter(engine)
    originals = [(layer.module.weight.data_ptr(), layer.module.weight.detach().clone()) for layer in adapter.layers]
    perturb(adapter)
    adapted = outputs(engine, x)
    assert max_diff(adapted, base) > 1e-3  # the perturbation matters
    adapter.merge()
    assert "forward" not in vars(adapter.layers[0].module)  # plain module forward: zero overhead
    assert max_diff(outputs(engine, x), adapted) < 1e-5
    adapter.unmerge()
    for layer, (ptr, weight) in zip(adapter.layers, originals):
        assert layer.module.weight.data_ptr() == ptr and torch.equal(layer.module.weight, weight)
    assert max_diff(outputs(engine, x), adapted) == 0.0
    adapter.merge()
    adapter.remove()  # removing a merged adapter restores the originals too
    for layer, (ptr, weight) in zip(adapter.layers, originals):
        assert layer.module.weight.data_ptr() == ptr and torch.equal(layer.module.weight, weight)
    assert max_diff(outputs(engine, x), base) == 0.0


def test_engine_tag_follows_singular_values():
    engine = tiny_engine("sam")
    adapter = apply_adapter(engine)
    identity_tag = engine.adapter_tag
    assert identity_tag.startswith("svd:") and engine.identity.endswith(identity_tag)
    perturb(adapter)
    assert engine.adapter_tag != identity_tag
    with pytest.raises(AdapterError, match="already has an SVD adapter"):
        apply_adapter(engine)
    adapter.remove()
    assert engine.adapter_tag == ""


def test_rank_trains_only_the_largest_singular_values(tmp_path):
    engine = tiny_engine("sam2")
    x = images(1)
    full = apply_adapter(engine, AdapterConfig(target_modules=["image_encoder.*"]))
    full_count, widths = full.num_trainable, [layer.s_base.numel() for layer in full.layers]
    full.remove()
    adapter = apply_adapter(engine, AdapterConfig(target_modules=["image_encoder.*"]), rank=5)
    assert [layer.rank for layer in adapter.layers] == [min(5, w) for w in widths]
    assert adapter.num_trainable == adapter.config.num_trainable == sum(min(5, w) for w in widths) < full_count
    perturb(adapter)
    for layer in adapter.layers:  # W' - W = U[:, :k] diag(delta) V^T[:k]: rank k, and the tail of s untouched
        base, adapted = layer.spectrum()
        assert torch.equal(adapted[layer.rank:], base[layer.rank:]) and not torch.equal(adapted, base)
        update = (layer.effective_weight() - layer.module.weight).reshape(layer.matrix_shape[0], -1).double()
        assert int(torch.linalg.matrix_rank(update, rtol=1e-4)) == layer.rank
    adapted = outputs(engine, x)
    save_adapter(adapter, tmp_path / "top5")
    values = adapter.singular_values()
    name = adapter.names[-1]
    changed_tail = {k: s.clone() for k, (_, s) in values.items()}
    changed_tail[name][-1] += 1.0
    with pytest.raises(AdapterError, match="only its 5 largest singular values are trainable"):
        adapter.set_singular_values(changed_tail)
    adapter.remove()
    files = read_adapter_folder(tmp_path / "top5")
    assert all(s.shape == (min(5, w),) for s, w in zip(files.singular_values.values(), widths))
    loaded = load_adapter_folder(engine, tmp_path / "top5", merge=True)
    assert max_diff(outputs(engine, x), adapted) < 1e-5 and loaded.num_trainable == adapter.num_trainable


def test_random_selection_trains_k_values_at_seeded_positions_and_files_keep_them(tmp_path):
    engine = tiny_engine("sam2")
    x = images(1)
    config = AdapterConfig(target_modules=["image_encoder.*"])
    largest = apply_adapter(engine, config, rank=5)
    largest_values = largest.num_trainable
    assert all("indices" not in info for info in largest.config.layers.values())  # the defense's files stay as they were
    largest.remove()
    adapter = apply_adapter(engine, config, rank=5, seed=3, select="random")
    assert adapter.num_trainable == largest_values
    chosen = {layer.name: layer.trained_indices.tolist() for layer in adapter.layers}
    wide = [layer for layer in adapter.layers if layer.s_base.numel() > 5]
    assert wide and any(chosen[layer.name] != list(range(5)) for layer in wide)
    assert all(len(set(i)) == len(i) == min(5, layer.s_base.numel()) for layer, i in zip(adapter.layers, chosen.values()))
    assert max_diff(outputs(engine, x), outputs(engine, x)) == 0 and adapter.is_identity()
    perturb(adapter)
    for layer in wide:  # only the chosen positions of the spectrum move
        base, adapted = layer.spectrum()
        moved = (adapted != base).nonzero().flatten().tolist()
        assert moved and set(moved) <= set(chosen[layer.name])
    adapted_outputs = outputs(engine, x)
    save_adapter(adapter, tmp_path / "random5")
    adapter.remove()
    files = read_adapter_folder(tmp_path / "random5")
    assert {name: info.get("indices", list(range(info["rank"]))) for name, info in files.config.layers.items()} == chosen
    assert "at the positions `indices`" in (tmp_path / "random5" / CARD_FILE).read_text()
    loaded = load_adapter_folder(engine, tmp_path / "random5", merge=True)
    assert {layer.name: layer.trained_indices.tolist() for layer in loaded.layers} == chosen
    assert max_diff(outputs(engine, x), adapted_outputs) < 1e-5
    loaded.remove()
    again = apply_adapter(engine, config, rank=5, seed=3, select="random")
    assert {layer.name: layer.trained_indices.tolist() for layer in again.layers} == chosen  # seeded
    perturb(again)
    tag = again.tag
    again.remove()
    other = apply_adapter(engine, config, rank=5, seed=4, select="random")
    perturb(other)  # the same values at other positions: other weights, so another cache tag
    assert other.tag != tag
    other.remove()
    with pytest.raises(AdapterError, match="needs an SVD adapter"):
        apply_adapter(engine, AdapterConfig(method="lora"), select="random")


# ---------------------------------------------------------------------- files
@pytest.fixture
def saved(tmp_path):
    """(engine, adapter folder, reference outputs of the adapted model, input)."""
    engine = tiny_engine("sam")
    x = images(2)
    adapter = apply_adapter(engine)
    perturb(adapter)
    reference = outputs(engine, x)
    save_adapter(adapter, tmp_path / "adapter", training={"steps": 3}, metrics={"table": [
        {"condition": "clean, adapted", "point": 0.5, "box": 0.6, "mask": 0.7}]})
    adapter.remove()
    return engine, tmp_path / "adapter", reference, x


def test_save_load_round_trip(saved, tmp_path):
    engine, folder, reference, x = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted([CARD_FILE, CONFIG_FILE, WEIGHTS_FILE])
    fresh = tiny_engine("sam")  # same seed: same weights, another object
    adapter = load_adapter_folder(fresh, folder)
    assert max_diff(outputs(fresh, x), reference) < 1e-6
    assert adapter.config.base_model == "tiny-sam" and adapter.config.training == {"steps": 3}
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["num_trainable"] == 64 and config["fingerprint"].startswith("sha256:")
    assert set(load_file(str(folder / WEIGHTS_FILE))) == {f"image_encoder.neck.{i}.{k}" for i in (0, 2)
                                                         for k in ("singular_values", "base_singular_values")}
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / CARD_FILE)
    assert card.data.library_name == "samdemo" and "adversarial-robustness" in card.data.tags
    assert "| clean, adapted | 0.500 | 0.600 | 0.700 |" in card.text
    # saving the loaded adapter again gives the same values
    save_adapter(adapter, tmp_path / "again")
    again = read_adapter_folder(tmp_path / "again")
    for name, (base, s) in read_adapter_folder(folder).values().items():
        assert torch.allclose(again.singular_values[name], s, atol=1e-6)


def test_fingerprint_mismatch_is_refused(saved):
    _, folder, _, x = saved
    other = tiny_engine("sam", seed=1)  # same architecture, other weights
    before = outputs(other, x)
    with pytest.raises(AdapterError, match="fingerprint .* different weights"):
        load_adapter_folder(other, folder)
    assert get_adapter(other) is None and max_diff(outputs(other, x), before) == 0.0
    with pytest.raises(AdapterError, match="for a 'sam' model .* 'sam2' model"):
        load_adapter_folder(tiny_engine("sam2"), folder)


def _edit_config(folder: Path, change) -> None:
    data = json.loads((folder / CONFIG_FILE).read_text())
    change(data)
    (folder / CONFIG_FILE).write_text(json.dumps(data))


def _edit_tensors(folder: Path, change) -> None:
    tensors = load_file(str(folder / WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(folder / WEIGHTS_FILE))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


S0 = "image_encoder.neck.0.singular_values"
MALFORMED = {
    "no folder": (lambda f: __import__("shutil").rmtree(f), "does not exist"),
    "no config": (lambda f: (f / CONFIG_FILE).unlink(), "lacks adapter_config.json"),
    "no weights": (lambda f: (f / WEIGHTS_FILE).unlink(), "lacks adapter.safetensors"),
    "truncated config": (lambda f: _truncate(f / CONFIG_FILE, 0.5), "not valid JSON .* truncated or corrupt"),
    "binary config": (lambda f: (f / CONFIG_FILE).write_bytes(b"\xff\xfe\x00garbage"), "not UTF-8"),
    "config not an object": (lambda f: (f / CONFIG_FILE).write_text("[1, 2]"), "must hold a JSON object"),
    "other format": (lambda f: _edit_config(f, lambda d: d.update(format="peft")), "not a samdemo SVD adapter"),
    "future version": (lambda f: _edit_config(f, lambda d: d.update(format_version=99)), "format_version 99"),
    "unknown key": (lambda f: _edit_config(f, lambda d: d.update(lora_rank=8)), "unknown keys \\['lora_rank'\\]"),
    "missing key": (lambda f: _edit_config(f, lambda d: d.pop("fingerprint")), "missing 'fingerprint'"),
    "wrong type": (lambda f: _edit_config(f, lambda d: d.update(num_trainable="64")), "'num_trainable' should be int"),
    "wrong count": (lambda f: _edit_config(f, lambda d: d.update(num_trainable=512)),
                    "num_trainable is 512 but the layers hold 64"),
    "bad fingerprint": (lambda f: _edit_config(f, lambda d: d.update(fingerprint="md5:abc")), "not 'sha256:'"),
    "wrong rank": (lambda f: _edit_config(f, lambda d: d["layers"]["image_encoder.neck.0"].update(rank=33)),
                   "has rank 33 but its 32x32 matrix allows svd rank 1 to 32"),
    "rank not the file's": (lambda f: _edit_config(f, lambda d: (d["layers"]["image_encoder.neck.0"].update(rank=16),
                                                                 d.update(num_trainable=48))),
                            "has shape \\(32,\\), but layer image_encoder.neck.0 \\(32x32\\) has 16 singular values"),
    "repeated indices": (lambda f: _edit_config(f, lambda d: d["layers"]["image_encoder.neck.0"].update(
        indices=[0] * 32)), "has indices .* 32 distinct positions from 0 to 31"),
    "index out of range": (lambda f: _edit_config(f, lambda d: d["layers"]["image_encoder.neck.0"].update(
        indices=list(range(1, 33)))), "32 distinct positions from 0 to 31"),
    "bad family": (lambda f: _edit_config(f, lambda d: d.update(family="sam3")), "unknown family 'sam3'"),
    "other parametrization": (lambda f: _edit_config(f, lambda d: d.update(parametrization="log")),
                              "parametrization 'log' is not supported"),
    "empty weights": (lambda f: (f / WEIGHTS_FILE).write_bytes(b""), "cannot be read as safetensors"),
    "truncated weights": (lambda f: _truncate(f / WEIGHTS_FILE, 0.8), "truncated or corrupt"),
    "garbage weights": (lambda f: (f / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}!!"),
                        "cannot be read as safetensors"),
    "unknown tensor": (lambda f: _edit_tensors(f, lambda t: t.update(extra=torch.zeros(3))), "unknown tensors \\['extra'\\]"),
    "missing tensor": (lambda f: _edit_tensors(f, lambda t: t.pop(S0)), f"missing tensors \\['{S0}'\\]"),
    "wrong shape": (lambda f: _edit_tensors(f, lambda t: t.update({S0: torch.ones(31)})),
                    "has shape \\(31,\\), but layer image_encoder.neck.0 \\(32x32\\) has 32"),
    "nan values": (lambda f: _edit_tensors(f, lambda t: t[S0].__setitem__(3, math.nan)), "NaN or infinite"),
    "integer values": (lambda f: _edit_tensors(f, lambda t: t.update({S0: torch.ones(32, dtype=torch.int32)})),
                       "dtype torch.int32, expected float"),
    "layer not in model": (lambda f: _edit_config(f, lambda d: d.update(layers={
        "image_encoder.neck.9" if k == "image_encoder.neck.0" else k: v for k, v in d["layers"].items()})),
                           "unknown tensors"),  # the tensors name the real layer
    "other weight shape": (lambda f: _edit_config(f, lambda d: d["layers"]["image_encoder.neck.0"].update(
        weight_shape=[32, 8, 2, 2])), "weight shape \\[32, 32, 1, 1\\] in the model, \\[32, 8, 2, 2\\] in the adapter"),
    "tampered base values": (lambda f: _edit_tensors(f, lambda t: t["image_encoder.neck.2.base_singular_values"].mul_(2)),
                             "base singular values stored for image_encoder.neck.2 differ"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_adapter_files_are_refused_clearly(saved, case):
    engine, folder, _, x = saved
    damage, message = MALFORMED[case]
    damage(folder)
    before = outputs(engine, x)
    with pytest.raises(AdapterError, match=message):
        load_adapter_folder(engine, folder)
    assert get_adapter(engine) is None and max_diff(outputs(engine, x), before) == 0.0


def test_layer_missing_from_model_is_named(saved):
    engine, folder, _, _ = saved

    def rename(d):
        d["layers"]["image_encoder.neck.9"] = d["layers"].pop("image_encoder.neck.0")

    _edit_config(folder, rename)
    _edit_tensors(folder, lambda t: t.update({k.replace("neck.0", "neck.9"): t.pop(k) for k in list(t) if "neck.0" in k}))
    with pytest.raises(AdapterError, match="image_encoder.neck.9: no such module in this model"):
        load_adapter_folder(engine, folder)


def test_singular_value_plot(saved):
    from matplotlib.figure import Figure

    from samdemo.plots import singular_value_plot

    _, folder, _, _ = saved
    figure = singular_value_plot(folder)
    assert isinstance(figure, Figure) and len(figure.axes) == 4  # 2 layers x (values, ratio)
    assert figure.axes[0].get_yscale() == "log"
    engine = tiny_engine("sam")
    adapter = load_adapter_folder(engine, folder)
    assert len(singular_value_plot(adapter).axes) == 4
    save_adapter(adapter, folder / "with_plot", figure=singular_value_plot(adapter))  # shown in its model card
    assert (folder / "with_plot" / "singular_values.png").stat().st_size > 10_000
    assert "](singular_values.png)" in (folder / "with_plot" / CARD_FILE).read_text()
    with pytest.raises(ValueError):
        singular_value_plot({})
    # an adapter over many layers: one strip of every value's change, titled with the trained count
    remove_adapter(engine)
    spread = apply_adapter(engine, AdapterConfig(target_modules=["image_encoder.*"]), rank=3)
    assert len(spread.layers) > 6
    perturb(spread)
    strip = singular_value_plot(spread)
    assert len(strip.axes) == 1 and len(strip.axes[0].get_xticklabels()) == len(spread.layers)
    assert strip.get_suptitle() == f"SVD adapter: {spread.num_trainable} singular values trained in {len(spread.layers)} layers"


# ---------------------------------------------------------------------- training
def _train_cfg(**kw):
    from samdemo.train_adapter import AdapterTrainConfig

    base = dict(arch=str(CONFIG_DIR / "sam_tiny_test.yaml"), steps=16, batch=2, instances=2, lr=0.1, warmup=1,
                attack_steps=2, attacks="feature,mask,cross-prompt", train_pool=2, eval_every=0, checkpoint_every=2)
    return AdapterTrainConfig(**(base | kw))


def _fixed_batch_loss(engine, cfg):
    from samdemo.attacks import ATTACKS
    from samdemo.engine import image_to_tensor
    from samdemo.train_adapter import SceneData, instance_prompts, prompted_losses

    data = SceneData(engine.image_size)
    rng = np.random.default_rng(123)
    samples = [data.train(i) for i in range(2)]
    prompts, targets = zip(*(instance_prompts(s.masks, 2, rng) for s in samples))
    x = torch.cat([image_to_tensor(s.image) for s in samples])
    adv = ATTACKS["feature"](engine, steps=2, seed=5).forward(x).adv_images
    with torch.no_grad():
        return float(prompted_losses(engine, adv, list(prompts), list(targets)).mean()
                     + prompted_losses(engine, x, list(prompts), list(targets)).mean())


def test_train_adapter_decreases_its_loss_and_writes_an_adapter(tmp_path):
    from samdemo.train_adapter import build_engine, train_adapter

    cfg = _train_cfg(eval_every=8, eval_scenes=2, eval_attack_steps=2)
    engine = build_engine(cfg)
    before = _fixed_batch_loss(engine, cfg)
    log = train_adapter(cfg, tmp_path / "run", tmp_path / "out", engine=engine)
    losses = [row[1] for row in log["train"]]
    assert len(losses) == 16 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert get_adapter(engine) is None  # training leaves the engine as it found it
    adapter = load_adapter_folder(engine, tmp_path / "out")
    assert not adapter.is_identity()
    assert _fixed_batch_loss(engine, cfg) < before
    config = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
    assert config["training"]["steps"] == 16 and config["training"]["attacks"] == "feature,mask,cross-prompt"
    assert [e["step"] for e in log["eval"]] == [0, 8, 16]
    assert {"point", "box", "mask"} <= set(log["eval"][-1]["attacked"]["cross-prompt"])
    rows = config["metrics"]["table"]
    assert rows[0]["condition"] == "clean, original" and len(rows) == 4
    assert (tmp_path / "out" / "training_log.json").exists()


def test_train_adapter_with_a_rank_spreads_the_budget(tmp_path):
    from samdemo.train_adapter import build_engine, train_adapter

    cfg = _train_cfg(targets="image_encoder.*", svd_rank=3, steps=2, attacks="feature", attack_steps=1)
    engine = build_engine(cfg)
    log = train_adapter(cfg, tmp_path / "run", tmp_path / "out", engine=engine)
    adapter = load_adapter_folder(engine, tmp_path / "out")
    assert len(adapter.layers) > 6 and {layer.rank for layer in adapter.layers} == {3}
    assert log["num_trainable"] == adapter.num_trainable == 3 * len(adapter.layers) and not adapter.is_identity()
    adapter.remove()
    with pytest.raises(RuntimeError, match="target layers, rank"):  # the run dir holds rank-3 values
        train_adapter(_train_cfg(targets="image_encoder.*", svd_rank=4, steps=3), tmp_path / "run", None,
                      engine=engine)
    with pytest.raises(RuntimeError, match="choice of singular values"):  # ... of the 3 largest, not 3 at random
        train_adapter(_train_cfg(targets="image_encoder.*", svd_rank=3, svd_select="random", steps=3),
                      tmp_path / "run", None, engine=engine)
    with pytest.raises(ValueError, match="needs --method svd and --svd-rank k"):
        train_adapter(_train_cfg(svd_select="random"), tmp_path / "other", None, engine=engine)


def test_train_adapter_resumes_to_the_same_result(tmp_path):
    from samdemo.train_adapter import build_engine, train_adapter

    cfg = _train_cfg(steps=6)
    train_adapter(cfg, tmp_path / "straight", tmp_path / "a", engine=build_engine(cfg))

    from samdemo import train_adapter as training

    real_craft = training.craft

    def crashing_at_step_5(request, *args, **kwargs):
        if request.seed == training.image_seed(cfg, 4, 0):  # step 5 of 6; the last checkpoint is step 4
            raise KeyboardInterrupt
        return real_craft(request, *args, **kwargs)

    engine = build_engine(cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "craft", crashing_at_step_5)
        with pytest.raises(KeyboardInterrupt):
            train_adapter(cfg, tmp_path / "resumed", tmp_path / "b", engine=engine)
    assert get_adapter(engine) is None
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["step"] == 4
    log = train_adapter(cfg, tmp_path / "resumed", tmp_path / "b", engine=engine)
    assert [row[0] for row in log["train"]] == [1, 2, 3, 4, 5, 6]
    a, b = read_adapter_folder(tmp_path / "a"), read_adapter_folder(tmp_path / "b")
    for name in a.singular_values:
        assert torch.equal(a.singular_values[name], b.singular_values[name])


def test_train_adapter_cli_parses():
    import argparse

    from samdemo.train_adapter import configure_parser, parse_eps

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--out", "x", "--eps", "4/255", "--attacks", "mask", "--steps", "5", "--svd-rank", "14"])
    assert args.eps == 4 and args.attacks == "mask" and args.steps == 5 and args.svd_rank == 14
    # 1/255 units, as `attack` and `evaluate` take it
    assert parse_eps("8") == 8 and parse_eps("8/255") == 8 and parse_eps("0") == 0
    for bad in ("eight", "40", "-1", "nan", "1/0"):
        with pytest.raises(ValueError, match="1/255 units"):
            parse_eps(bad)


def test_train_adapter_on_an_unlabelled_folder(tmp_path):
    from PIL import Image

    from samdemo.scenes import train_scene
    from samdemo.train_adapter import ImageData, build_engine, train_adapter

    for i in range(5):
        Image.fromarray(train_scene(i, size=80).image).save(tmp_path / f"img{i}.png")  # 80 px: cropped/resized to 64
    cfg = _train_cfg(data=str(tmp_path), steps=2, eval_every=2, eval_scenes=2, eval_attack_steps=1,
                     eval_attacks="feature")
    engine = build_engine(cfg)
    data = ImageData.from_folder(tmp_path, engine, 64, eval_images=2)
    assert len(data.train_samples) == 4 and len(data.eval_samples) == 1
    assert data.train(0).image.shape == (64, 64, 3) and data.train(0).masks.ndim == 3
    log = train_adapter(cfg, tmp_path / "run", tmp_path / "out", engine=engine)
    assert "original model's clean segments" in log["data"] and len(log["train"]) == 2
    with pytest.raises(ValueError, match="need at least 2 images"):
        ImageData.from_folder(tmp_path / "run", engine, 64, eval_images=2)


def test_train_adapter_on_images_in_memory_reports_progress(tmp_path):
    from samdemo.scenes import train_scene
    from samdemo.train_adapter import ImageData, build_engine, train_adapter

    images = [train_scene(i, size=96).image[:, 8:88] for i in range(3)]  # 96 x 80: centre-cropped, resized to 64
    cfg = _train_cfg(steps=3, eval_every=3, eval_scenes=1, eval_attack_steps=1, eval_attacks="feature")
    engine = build_engine(cfg)
    data = ImageData(images, engine, 64, eval_images=1, source="the test's arrays")
    assert len(data.train_samples) == 2 and data.eval_samples[0].image.shape == (64, 64, 3)
    assert data.train(0).masks.ndim == 3 and data.train(0).masks.shape[1:] == (64, 64)
    calls = []
    log = train_adapter(cfg, tmp_path / "run", tmp_path / "out", engine=engine, images=images,
                        images_source="the test's arrays", progress=lambda t, n, stage: calls.append((t, n, stage)))
    assert "3 images from the test's arrays (2 train, 1 held out)" in log["data"]
    assert [(t, n) for t, n, _ in calls] == [(0, 3), (1, 3), (2, 3), (3, 3), (3, 3)]
    assert calls[0][2] == "held-out check of the original model" and calls[-1][2] == "held-out check of the adapted model"
    assert calls[1][2].startswith("step 1/3, loss ")
    assert [e["step"] for e in log["eval"]] == [0, 3] and (tmp_path / "out" / CONFIG_FILE).exists()
    with pytest.raises(ValueError, match="need at least 2 images"):
        ImageData(images[:1], engine, 64, eval_images=1)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        ImageData([images[0], images[1].astype(np.float32)], engine, 64, eval_images=1)


def test_cancelling_training_stops_within_a_step_and_leaves_no_adapter(tmp_path):
    import threading

    from samdemo.errors import AttackCancelled
    from samdemo.train_adapter import build_engine, train_adapter

    cfg = _train_cfg(steps=50, attack_steps=50, attacks="feature")
    engine = build_engine(cfg)
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    cancel, iterations = threading.Event(), []
    from samdemo import train_adapter as training

    real_craft = training.craft

    def craft_that_cancels(request, *args, progress=None, **kwargs):
        def count(t, total):  # the user presses Cancel during the second step's attack, at its 3rd iteration
            iterations.append(t)
            if len(iterations) == 50 + 3:
                cancel.set()
        return real_craft(request, *args, progress=count, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "craft", craft_that_cancels)
        with pytest.raises(AttackCancelled):
            train_adapter(cfg, tmp_path / "run", tmp_path / "out", engine=engine, cancel=cancel)
    assert len(iterations) == 50 + 3  # the attack stopped after its current iteration: no fourth one
    assert get_adapter(engine) is None and not (tmp_path / "out").exists()
    after = engine.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
