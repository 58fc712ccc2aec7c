"""Attacks: threat model, quantisation, reproducibility, callbacks, batching, transfer, CLI, strength."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from samdemo.attacks import (ATTACKS, GENERATORS, AttackCancelled, CrossPromptAttack, MaskAttack, make_attack,
                             mask_loss, quantize_project, validate_eps)
from samdemo.attacks.base import StepInfo, background_bce
from samdemo.attacks.cross_prompt import (UniformPromptPool, channel_importance, clean_margin, flipped_mask_bce, key_channels,
                                          sample_prompt_pool)
from samdemo.attacks.generators import MIFGSM, segpgd_lambda, segpgd_weights
from samdemo.attacks.transfer import format_matrix, transfer_matrix
from samdemo.build import CHECKPOINT_DIR
from samdemo.engine import ImageFeatures
from samdemo.factory import load_engine
from samdemo.pipeline import AttackRequest
from samdemo.prompts import box_prompt, mask_prompt, point_prompt
from tests.conftest import tiny_engine

EPS = 8 / 255


def grid_images(batch=1, size=64, seed=0) -> torch.Tensor:
    """8-bit images (values k/255), as decoded from a PNG."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g).float() / 255


def user_prompts(size=64):
    mask = np.zeros((size, size), bool)
    mask[10:30, 12:40] = True
    return [point_prompt(20, 20), box_prompt(8, 8, 44, 36), mask_prompt(mask)]


def kwargs_for(name):
    return {"mix": 1.0, "prompts_per_step": 6} if name == "cross-prompt" else {}


FLOAT_TOL = 2e-7  # float32 cannot hold k/255 exactly: |float32(a/255) - float32(b/255)| may exceed |a-b|/255 by 6e-8


def levels(x: torch.Tensor) -> torch.Tensor:
    return (x.double() * 255).round().long()


def assert_in_threat_model(adv: torch.Tensor, clean: torch.Tensor, eps: float):
    """8-bit input: exact in the PNG's integers; in float up to float32's representation error."""
    assert adv.dtype == torch.float32 and adv.shape == clean.shape
    assert (levels(adv) - levels(clean)).abs().max().item() <= int(eps * 255 + 1e-6)
    assert (adv - clean).abs().max().item() <= eps + FLOAT_TOL
    assert adv.min() >= 0 and adv.max() <= 1
    assert on_grid(adv), "not on the 8-bit grid"


def on_grid(x: torch.Tensor) -> bool:
    """Every value is the float32 nearest to some k/255."""
    return torch.equal(x, ((x.double() * 255).round() / 255).float())


# ------------------------------------------------------------------------------------------ bound
@pytest.fixture(scope="module")
def sam():
    return tiny_engine("sam")


@pytest.fixture(scope="module")
def sam2():
    return tiny_engine("sam2")


@pytest.mark.parametrize("generator", list(GENERATORS))
@pytest.mark.parametrize("name", list(ATTACKS))
def test_bound_holds_after_quantisation(sam, name, generator):
    x = grid_images(batch=2)
    attack = make_attack(name, sam, eps=EPS, steps=2, generator=generator, seed=0, **kwargs_for(name))
    result = attack(x, user_prompts() if attack.uses_prompts else None)
    assert_in_threat_model(result.adv_images, x, EPS)
    assert torch.allclose(result.perturbation, result.adv_images - x)
    assert result.linf > 0, "the attack did not move"
    assert len(result.losses) == (0 if name == "random" else result.info["steps_run"])
    assert result.seconds > 0


@pytest.mark.parametrize("name", list(ATTACKS))
def test_bound_holds_on_sam2(sam2, name):
    x = grid_images()
    attack = make_attack(name, sam2, eps=EPS, steps=2, seed=0, **kwargs_for(name))
    result = attack(x, user_prompts() if attack.uses_prompts else None)
    assert_in_threat_model(result.adv_images, x, EPS)


@pytest.mark.parametrize("eps", [0.0, 0.3 / 255, 1 / 255, 2.5 / 255, 8 / 255, 32 / 255])
@pytest.mark.parametrize("grid_input", [True, False])
def test_quantize_project_exact(eps, grid_input):
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 256, (2, 3, 32, 32), generator=g).float() / 255 if grid_input \
        else torch.rand((2, 3, 32, 32), generator=g)
    clean[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # corners of the image box
    adv = clean + (torch.rand(clean.shape, generator=g) * 4 - 2) * max(eps, 1 / 255)
    out = quantize_project(adv, clean, eps)
    assert (out - clean).abs().max().item() <= eps + FLOAT_TOL
    assert out.min() >= 0 and out.max() <= 1
    if grid_input:  # exact in integers
        assert (levels(out) - levels(clean)).abs().max().item() <= int(eps * 255 + 1e-6)
        if eps >= 1 / 255:  # the whole budget is usable: some values sit exactly on the boundary
            assert (levels(out) - levels(clean)).abs().max().item() == int(eps * 255 + 1e-6)
    if grid_input or eps >= 1 / 255:  # otherwise the box may hold no 8-bit value: the clean value is kept
        assert on_grid(out)


def test_fgsm_is_one_step_of_eps(sam):
    x = torch.full((1, 3, 64, 64), 128 / 255)  # on the grid, away from 0 and 1
    result = make_attack("mask", sam, eps=EPS, steps=7, generator="fgsm", seed=0)(x, user_prompts()[:1])
    assert result.info["steps_run"] == 1 and len(result.losses) == 1
    moved = result.perturbation[result.perturbation != 0].abs()
    assert torch.allclose(moved, torch.full_like(moved, EPS), atol=1e-6)


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_attacks_move_in_the_right_direction(family):
    """mask: the masks' logits go down (to background); feature: the embedding moves away."""
    engine = tiny_engine(family)
    x = grid_images()
    prompts = user_prompts()[:2]
    with torch.no_grad():
        clean = engine.embed(x)
        before = engine.decode(clean, prompts).low_res_all.mean()
    mask_adv = make_attack("mask", engine, eps=16 / 255, steps=5, seed=0)(x, prompts).adv_images
    feature = make_attack("feature", engine, eps=16 / 255, steps=5, seed=0)
    feature_adv = feature(x).adv_images
    random_adv = make_attack("random", engine, eps=16 / 255, seed=0)(x).adv_images
    with torch.no_grad():
        after = engine.decode(engine.embed(mask_adv), prompts).low_res_all.mean()
        moved = (engine.embed(feature_adv).image_embed - clean.image_embed).square().mean()
        noise = (engine.embed(random_adv).image_embed - clean.image_embed).square().mean()
    assert after < before
    assert moved > 2 * noise


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("eps", [-1 / 255, 33 / 255, 8, 0.5, float("nan"), "8", None, True])
def test_eps_validation(sam, eps):
    with pytest.raises(ValueError, match="eps"):
        CrossPromptAttack(sam, eps=eps)


def test_eps_limits_and_defaults(sam):
    assert validate_eps(0) == 0 and validate_eps(32 / 255) == pytest.approx(32 / 255)
    with pytest.raises(ValueError, match="8/255"):
        validate_eps(8)  # the hint for a value given in 1/255 units
    attack = MaskAttack(sam)
    assert attack.eps == pytest.approx(8 / 255) and attack.steps == 10
    assert attack.step_size == pytest.approx(2.5 * attack.eps / attack.steps)
    for steps in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="steps"):
            MaskAttack(sam, steps=steps)
    with pytest.raises(ValueError, match="step_size"):
        MaskAttack(sam, step_size=-1)
    with pytest.raises(ValueError, match="generator"):
        MaskAttack(sam, generator="cw")
    with pytest.raises(ValueError, match="prompts"):
        MaskAttack(sam, steps=1)(grid_images())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MaskAttack(sam, steps=1)(grid_images() * 255, user_prompts())


def test_zero_eps_returns_the_image(sam):
    x = grid_images()
    result = make_attack("cross-prompt", sam, eps=0, steps=2, seed=0)(x)
    assert torch.equal(result.adv_images, x)


# ------------------------------------------------------------------------------------------ reproducibility
@pytest.mark.parametrize("name", ["cross-prompt", "mask", "random"])
def test_seeded_attack_is_bit_for_bit_reproducible(sam, name):
    x = grid_images()
    prompts = user_prompts() if ATTACKS[name].uses_prompts else None
    run = lambda seed: make_attack(name, sam, steps=3, seed=seed, **kwargs_for(name))(x, prompts)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.adv_images, b.adv_images) and a.losses == b.losses
    assert not torch.equal(a.adv_images, c.adv_images)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(run(g1).adv_images, run(g2).adv_images)


def test_cross_prompt_ignores_user_prompts(sam):
    x = grid_images()
    attack = make_attack("cross-prompt", sam, steps=2, seed=0, mix=1.0)
    assert torch.equal(attack(x).adv_images, attack(x, user_prompts()).adv_images)


# ------------------------------------------------------------------------------------------ callbacks
def test_progress_called_once_per_step(sam):
    calls = []
    attack = make_attack("cross-prompt", sam, steps=4, seed=0, progress=lambda t, n: calls.append((t, n)))
    attack(grid_images())
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_during_attack(sam):
    cancel = threading.Event()
    calls = []

    def progress(t, n):
        calls.append(t)
        if t == 2:
            cancel.set()

    attack = make_attack("mask", sam, steps=6, seed=0, progress=progress, cancel=cancel)
    with pytest.raises(AttackCancelled, match="2 of 6"):
        attack(grid_images(), user_prompts())
    assert calls == [1, 2]


def test_cancel_before_start(sam):
    cancel = threading.Event()
    cancel.set()
    for name in ATTACKS:
        with pytest.raises(AttackCancelled):
            make_attack(name, sam, steps=3, cancel=cancel)(grid_images(), user_prompts())


# ------------------------------------------------------------------------------------------ batching
@pytest.mark.parametrize("family", ["sam", "sam2"])
@pytest.mark.parametrize("pixel_weighting", [False, True])
def test_batched_prompts_equal_loop(family, pixel_weighting):
    engine = tiny_engine(family)
    x = grid_images().requires_grad_(True)
    prompts = [point_prompt(10, 12), point_prompt(40, 33), box_prompt(5, 6, 30, 50), box_prompt(20, 2, 60, 40),
               *user_prompts()[2:]]
    step = StepInfo(3, 10, pixel_weighting)
    batched = mask_loss(engine, engine.embed(x), prompts, step=step)
    (g_batched,) = torch.autograd.grad(batched, x)
    looped = sum(mask_loss(engine, engine.embed(x), [p], step=step) for p in prompts) / len(prompts)
    (g_looped,) = torch.autograd.grad(looped, x)
    assert torch.allclose(batched, looped, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g_batched, g_looped, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_channel_importance_batched_equals_loop(family):
    """The transformer-hook trick gives per-prompt gradients in one decoder call."""
    engine = tiny_engine(family)
    with torch.no_grad():
        features = engine.embed(grid_images())
    prompts = [point_prompt(10, 12), point_prompt(40, 33), point_prompt(50, 5)]
    batched = channel_importance(engine, features, prompts)
    per_prompt = []
    for p in prompts:
        embed = features.image_embed.clone().requires_grad_(True)
        feats = ImageFeatures(embed, features.high_res, features.orig_hw, features.input_hw)
        loss = clean_margin(engine.decode(feats, [p]).low_res_logits[:, 0]).sum()
        (grad,) = torch.autograd.grad(loss, embed)
        per_prompt.append((grad * embed.detach()).abs().mean(dim=(0, 2, 3)))
    assert torch.allclose(batched, torch.stack(per_prompt).mean(0), rtol=1e-4, atol=1e-9)


def test_key_channels_are_important_for_every_type():
    importance = {"point": torch.tensor([9.0, 8, 1, 7, 0]), "box": torch.tensor([0.0, 8, 9, 7, 1]),
                  "mask": torch.tensor([5.0, 6, 5, 9, 0])}
    assert key_channels(importance, 2).tolist() == [1, 3]  # 0 and 2 are top for one type only


def test_prompt_pool_has_every_type(sam):
    with torch.no_grad():
        features = sam.embed(grid_images())
    pool = sample_prompt_pool(sam, features, grid=4)
    assert len(pool.points) == 16 and len(pool.boxes) == len(pool.masks) == len(pool.segments) >= 1
    prompts = pool.sample(9, torch.Generator().manual_seed(0))
    assert [p.kind for p in prompts[:3]] == ["point", "box", "mask"]
    for p in prompts:
        p.validate((64, 64))


def test_prompt_pool_filters_leave_large_and_border_segments_out(sam):
    with torch.no_grad():
        features = sam.embed(grid_images())
    area = lambda pool: [float(s.mean()) for s in pool.segments]  # noqa: E731
    default = sample_prompt_pool(sam, features, grid=4)
    large = [s for s in default.segments if s.mean() > 0.1]
    touches_border = lambda s: bool(s[[0, -1]].any() or s[:, [0, -1]].any())  # noqa: E731
    assert large and touches_border(large[0])  # this model answers with a large segment on the image border
    assert max(area(sample_prompt_pool(sam, features, grid=4, max_area=0.1))) <= 0.1
    interior = sample_prompt_pool(sam, features, grid=4, interior_only=True)
    assert not any(np.array_equal(s, large[0]) for s in interior.segments)
    with pytest.raises(ValueError, match="max_area"):
        CrossPromptAttack(sam, max_area=0.0)


# ------------------------------------------------------------------------------------------ generators
def test_segpgd_schedule_and_weights():
    assert segpgd_lambda(1, 10) == 0 and segpgd_lambda(10, 10) == pytest.approx(0.45)
    fooled = torch.tensor([True, False])
    assert segpgd_weights(fooled, 1, 10).tolist() == [0.0, 1.0]
    assert segpgd_weights(fooled, 6, 10).tolist() == pytest.approx([0.25, 0.75])
    logits = torch.tensor([[-3.0, 2.0]])
    plain, weighted = background_bce(logits), background_bce(logits, StepInfo(1, 10, True))
    assert weighted.item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(2.0)).item() / 2)
    assert plain.item() > weighted.item()


def test_mifgsm_uses_l1_normalised_momentum():
    gen = MIFGSM().start(torch.zeros(2, 1, 1, 2), eps=1.0, step_size=0.1, steps=3)
    g1 = torch.tensor([[[[1.0, 0.0]]], [[[10.0, 0.0]]]])
    g2 = torch.tensor([[[[0.0, -4.0]]], [[[0.0, -4.0]]]])
    gen.step(torch.zeros(2, 1, 1, 2), g1, 1)
    delta = gen.step(torch.zeros(2, 1, 1, 2), g2, 2)
    # velocity = g1/|g1|_1 + g2/|g2|_1 = (1, -1) for both images despite the gradient scales
    assert delta.flatten().tolist() == pytest.approx([0.1, -0.1, 0.1, -0.1])


# ------------------------------------------------------------------------------------------ transfer
def test_transfer_matrix_structure(sam):
    image = (grid_images()[0].permute(1, 2, 0) * 255).byte().numpy()
    gt = np.zeros((2, 64, 64), bool)
    gt[0, 5:25, 5:30] = True
    gt[1, 35:60, 30:62] = True
    progress = []
    result = transfer_matrix(sam, image, gt, attacks=("cross-prompt", "mask", "random"),
                             request=AttackRequest(steps=2),
                             progress=lambda row, t, n: progress.append(row), keep_images=True)
    assert result.rows == ["cross-prompt", "mask@point", "mask@box", "mask@mask", "random"]
    assert result.cols == ["point", "box", "mask"]
    assert result.iou_vs_clean.shape == result.iou_vs_gt.shape == (5, 3)
    assert result.per_object_vs_gt.shape == (5, 3, 2) and result.clean_vs_gt.shape == (3,)
    assert ((0 <= result.iou_vs_clean) & (result.iou_vs_clean <= 1)).all()
    assert set(result.adv_images) == set(result.rows) and "mask@box" in progress
    assert "mask@mask" in format_matrix(result)
    no_gt = transfer_matrix(sam, image, attacks=("random",), request=AttackRequest(steps=1))  # centre-point object, no ground truth
    assert no_gt.iou_vs_gt is None and no_gt.iou_vs_clean.shape == (1, 3)


# ------------------------------------------------------------------------------------------ CLI
def run_cli(*argv):
    from samdemo.attacks.cli import main  # what `python -m samdemo attack` runs, without the other commands

    return main(list(map(str, argv)))


def test_cli_is_registered():
    from samdemo.__main__ import COMMANDS

    assert COMMANDS["attack"] == "samdemo.attacks.cli"


def test_cli_errors(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    cases = [(["--image", tmp_path / "missing.png", "--out", tmp_path / "a.png"], "does not exist"),
             (["--image", image, "--out", tmp_path / "a.png", "--eps", 40], "between 0 and 32"),
             (["--image", image, "--out", tmp_path / "a.jpg"], ".png"),
             (["--image", image, "--out", tmp_path / "a.png", "--weights", tmp_path / "w.pt"], "does not exist")]
    for argv, message in cases:
        assert run_cli(*argv) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_cli_end_to_end(tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import save_file

    from samdemo.build import CONFIG_DIR, build_architecture

    torch.manual_seed(0)
    model, _ = build_architecture(CONFIG_DIR / "sam_small.yaml")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    image = (grid_images(size=96)[0].permute(1, 2, 0) * 255).byte().numpy()
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "adv.png"
    assert run_cli("--image", tmp_path / "in.png", "--out", out, "--steps", 2, "--eps", 4, "--weights", weights,
                   "--point", 40, 50, "--attack", "mask") == 0
    adv = np.asarray(Image.open(out))
    assert adv.shape == image.shape and np.abs(adv.astype(int) - image.astype(int)).max() <= 4
    printed = capsys.readouterr().out
    assert "your prompt" in printed and "box" in printed


# ------------------------------------------------------------------------------------------ strength
TRAINED = CHECKPOINT_DIR / "sam-small" / "model.safetensors"


@pytest.mark.skipif(not TRAINED.exists(), reason=f"trained embedded model absent ({TRAINED}); "
                                                  "train it with `python -m samdemo train-base`")
def test_attacks_beat_random_control_on_trained_model():
    """On held-out scenes every attack changes the point and box masks far more than random noise of
    the same size (IoU against the clean prediction), and lowers the mIoU against ground truth."""
    from samdemo.engine import SegmentEngine
    from samdemo.scenes import validation_scenes

    engine = load_engine("sam-small", device="cpu")
    engine.model.requires_grad_(False)
    vs_clean: dict[str, list] = {}
    vs_gt: dict[str, list] = {}
    for scene in validation_scenes(3):
        result = transfer_matrix(engine, scene.image, scene.masks[:3], attacks=("cross-prompt", "mask", "feature",
                                                                               "random"), request=AttackRequest(steps=10),
                                 craft_types=("box",))
        for row, clean_values, gt_values in zip(result.rows, result.per_object_vs_clean,
                                                result.per_object_vs_gt):
            vs_clean.setdefault(row, []).append(clean_values[:2])  # point and box evaluation
            vs_gt.setdefault(row, []).append(gt_values[:2])
    clean_iou = {row: np.concatenate(v, axis=1).mean(1) for row, v in vs_clean.items()}
    gt_iou = {row: np.concatenate(v, axis=1).mean(1) for row, v in vs_gt.items()}
    assert (clean_iou["random"] > 0.85).all(), clean_iou
    for row in ("cross-prompt", "mask@box", "feature"):
        assert (clean_iou[row] < clean_iou["random"] - 0.3).all(), (row, clean_iou)
        assert (gt_iou[row] < gt_iou["random"]).all(), (row, gt_iou)


def test_uniform_prompt_pool_covers_the_image_and_is_seeded():
    pool = UniformPromptPool((48, 64))
    prompts = pool.sample(200, torch.Generator().manual_seed(0), ("point", "box"))
    points = np.array([p.points[0] for p in prompts[0::2]])
    boxes = np.array([p.box for p in prompts[1::2]])
    assert points[:, 0].min() < 8 and points[:, 0].max() > 56 and points[:, 1].min() < 6 and points[:, 1].max() > 42
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 63).all() and (boxes[:, 3] <= 47).all()
    assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
    again = pool.sample(200, torch.Generator().manual_seed(0), ("point", "box"))
    assert all(np.array_equal(a.points, b.points) and np.array_equal(a.box, b.box) for a, b in zip(prompts, again))
    for p in prompts:
        p.validate((48, 64))


@pytest.mark.parametrize("option, value, bad", [("prompt_source", "uniform", "grid"), ("mask_target", "flip", "grow")])
def test_cross_prompt_variant_changes_the_attack(sam, option, value, bad):
    images = grid_images(size=64)
    common = dict(eps=EPS, steps=2, seed=0, mix=1.0, prompts_per_step=6)
    default = CrossPromptAttack(sam, **common)(images).adv_images
    variant = CrossPromptAttack(sam, **{option: value}, **common)(images).adv_images
    assert_in_threat_model(variant, images, EPS)
    assert not torch.equal(default, variant)
    with pytest.raises(ValueError, match=option):
        CrossPromptAttack(sam, **{option: bad})


def test_flipped_mask_bce_rewards_the_inverted_clean_mask_with_equal_weights():
    clean_fg = torch.zeros(2, 16, 16, dtype=torch.bool)
    clean_fg[:, :2, :2] = True  # a small object: 4 of 256 pixels
    as_clean = torch.where(clean_fg, 10.0, -10.0)
    inverted = -as_clean
    assert flipped_mask_bce(inverted, clean_fg).max() < 1e-3 < 5 < flipped_mask_bce(as_clean, clean_fg).min()
    # emptying the object alone is half the way, whatever its size: the background does not drown it
    emptied = torch.full_like(as_clean, -10.0)
    assert flipped_mask_bce(emptied, clean_fg)[0].item() == pytest.approx(
        flipped_mask_bce(as_clean, clean_fg)[0].item() / 2, rel=1e-3)
