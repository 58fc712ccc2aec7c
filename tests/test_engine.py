"""The engine against the official predictors, gradients, batching, validation and caching."""

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from sam2.sam2_image_predictor import SAM2ImagePredictor

from samdemo.engine import EmbeddingCache, SegmentEngine, image_to_tensor
from samdemo.prompts import Prompt, box_prompt, mask_prompt, point_prompt, prompts_from_mask
from samdemo.errors import PromptError
from tests.conftest import tiny_engine


def reference_predictor(engine: SegmentEngine):
    if engine.family == "sam":
        return SamPredictor(engine.model)
    predictor = SAM2ImagePredictor(engine.model)
    s = engine.image_size  # the predictor hard-codes the 1024-px feature sizes
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


def reference_logits(predictor, prompt: Prompt) -> np.ndarray:
    """Logits of the mask SAM's usual rule picks, from the official predictor."""
    has_points = len(prompt.points) > 0
    masks, scores, _ = predictor.predict(
        point_coords=prompt.points if has_points else None, point_labels=prompt.labels if has_points else None,
        box=prompt.box, mask_input=prompt.mask if prompt.mask_is_logits else None,
        multimask_output=prompt.is_single_point, return_logits=True)
    return masks[int(np.argmax(scores))] if prompt.is_single_point else masks[0]


def example_prompts(h: int, w: int, low_res_logits: np.ndarray | None = None) -> dict[str, Prompt]:
    points = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h]], np.float32)
    box = np.array([0.1 * w, 0.2 * h, 0.8 * w, 0.9 * h], np.float32)
    prompts = {
        "one point": Prompt(points=points[:1], labels=np.array([1])),
        "two points": Prompt(points=points, labels=np.array([1, 0])),
        "box": Prompt(box=box),
        "box + points": Prompt(points=points, labels=np.array([1, 0]), box=box),
    }
    if low_res_logits is not None:
        prompts["mask logits"] = Prompt(mask=low_res_logits, mask_is_logits=True)
        prompts["box + mask logits"] = Prompt(box=box, mask=low_res_logits, mask_is_logits=True)
    return prompts


def random_image(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_matches_official_predictor_at_model_resolution(family):
    engine = tiny_engine(family)
    s = engine.image_size
    image = random_image(s, s)
    predictor = reference_predictor(engine)
    predictor.set_image(image)
    features = engine.embed(image_to_tensor(image))
    low_res = engine.decode(features, [point_prompt(20, 30)]).low_res_logits[0].detach().numpy()
    for name, prompt in example_prompts(s, s, low_res).items():
        ours = engine.decode(features, [prompt]).logits[0].detach().numpy()
        assert np.abs(ours - reference_logits(predictor, prompt)).max() < 1e-4, name


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_matches_official_predictor_on_a_resized_image(family):
    """SAM 2 resizes with the same torch kernel as ours: exact. SAM's predictor resizes a
    uint8 image through PIL; fed our resized image it matches exactly (decoder, prompts and
    postprocessing), and through PIL it deviates by the resize kernel only (bounded below)."""
    engine = tiny_engine(family)
    image = random_image(50, 90, seed=1)
    predictor = reference_predictor(engine)
    predictor.set_image(image)
    features = engine.embed(image_to_tensor(image))
    deviation = max(np.abs(engine.decode(features, [p]).logits[0].detach().numpy() - reference_logits(predictor, p)).max()
                    for p in example_prompts(50, 90).values())
    if family == "sam2":
        assert deviation < 1e-4
        return
    assert deviation < 0.05  # PIL's uint8 resize vs torch's float antialiased resize
    resized = torch.nn.functional.interpolate(image_to_tensor(image), engine.input_hw((50, 90)), mode="bilinear",
                                              align_corners=False, antialias=True)
    predictor.set_torch_image(resized * 255, (50, 90))
    for name, prompt in example_prompts(50, 90).items():
        ours = engine.decode(features, [prompt]).logits[0].detach().numpy()
        assert np.abs(ours - reference_logits(predictor, prompt)).max() < 1e-4, name


def test_gradients_reach_the_pixels(engine):
    image = image_to_tensor(random_image(48, 64)).requires_grad_(True)
    features = engine.embed(image)
    prediction = engine.decode(features, list(example_prompts(48, 64).values()) + [mask_prompt(np.ones((48, 64), bool))])
    prediction.logits.sum().backward()
    assert torch.isfinite(image.grad).all()
    assert image.grad.abs().sum() > 0


def test_batched_decode_equals_one_by_one(engine):
    image = random_image(64, 64, seed=2)
    features = engine.embed(image_to_tensor(image))
    prompts = list(example_prompts(64, 64).values()) + [point_prompt(10, 12), box_prompt(5, 5, 40, 30)]
    together = engine.decode(features, prompts).logits
    for i, prompt in enumerate(prompts):
        assert torch.allclose(together[i], engine.decode(features, [prompt]).logits[0], atol=1e-5)


def test_output_frame_and_multimask_rule(engine):
    image = random_image(37, 53, seed=3)
    features = engine.embed(image_to_tensor(image))
    prediction = engine.decode(features, [point_prompt(10, 10), box_prompt(2, 3, 30, 20)])
    assert prediction.logits.shape == (2, 37, 53)
    assert prediction.low_res_all.shape == (2, 4, engine.image_size // 4, engine.image_size // 4)
    assert int(prediction.choice[0]) == int(prediction.iou_all[0, 1:].argmax()) + 1  # lone point: best of three
    assert prediction.low_res_logits.shape == (2, 1, engine.image_size // 4, engine.image_size // 4)


def test_batch_of_images_embeds_each_image_like_alone(engine):
    images = torch.cat([image_to_tensor(random_image(64, 64, seed=s)) for s in range(2)])
    together = engine.embed(images)
    alone = engine.embed(images[1:])
    assert torch.allclose(together.image_embed[1], alone.image_embed[0], atol=1e-5)


@pytest.mark.parametrize("prompt, message", [
    (point_prompt(100, 5), "outside"),
    (point_prompt(float("nan"), 5), "NaN"),
    (Prompt(points=np.array([[5.0, 5.0]]), labels=np.array([2])), "labels"),
    (box_prompt(30, 5, 10, 20), "Inverted"),
    (box_prompt(10, 5, 10.5, 20), "zero area"),
    (box_prompt(-20, 5, 10, 20), "outside"),
    (mask_prompt(np.zeros((40, 60), bool)), "empty"),
    (mask_prompt(np.ones((10, 10), bool)), "image is 60x40"),
    (Prompt(), "Empty prompt"),
])
def test_invalid_prompts_are_refused_with_a_clear_message(prompt, message):
    engine = tiny_engine("sam")
    features = engine.embed(image_to_tensor(random_image(40, 60)))
    with pytest.raises(PromptError, match=message):
        engine.decode(features, [prompt])


def test_prompts_from_mask_derive_point_box_and_mask():
    mask = np.zeros((30, 40), bool)
    mask[5:15, 10:30] = True
    prompts = prompts_from_mask(mask)
    x, y = prompts["point"].points[0]
    assert mask[int(y), int(x)] and 12 <= x <= 27 and 7 <= y <= 12  # deep inside
    assert prompts["box"].box.tolist() == [10, 5, 29, 14]
    assert prompts["mask"].mask is not None and prompts["mask"].kind == "mask"
    with pytest.raises(PromptError):
        prompts_from_mask(np.zeros((3, 3), bool))


def test_embedding_cache_hits_misses_and_bounds():
    engine = tiny_engine("sam")
    image = random_image(64, 64, seed=4)
    first = engine.embed_image(image)
    assert engine.embed_image(image) is first  # same content, same model: a hit
    assert engine.embed_image(image.copy()) is first
    engine.adapter_tag = "adapter-x"  # other weights: never served the old features
    assert engine.embed_image(image) is not first
    cache = EmbeddingCache(max_bytes=EmbeddingCache._size(first) * 2)
    for i in range(5):
        cache.put(("m", str(i)), first)
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    assert cache.get(("m", "0")) is None and cache.get(("m", "4")) is first


def test_predict_is_deterministic_and_shaped():
    engine = tiny_engine("sam2")
    image = random_image(30, 70, seed=5)
    a = engine.predict(image, [box_prompt(5, 5, 60, 25)])
    b = engine.predict(image, [box_prompt(5, 5, 60, 25)])
    assert a.masks.shape == (1, 30, 70) and torch.equal(a.logits, b.logits)


def test_finer_patches_give_a_finer_embedding_and_match_the_official_predictor(tmp_path):
    """``encoder.patch_size: 8`` (an architecture option for the embedded SAM): a 2x finer image
    embedding, mask prompts resized to the prompt encoder's own input size, and the same logits as
    Meta's predictor for every prompt type."""
    from omegaconf import OmegaConf

    from samdemo.build import CONFIG_DIR, build_architecture

    cfg = OmegaConf.load(CONFIG_DIR / "sam_tiny_test.yaml")
    cfg.encoder.patch_size = 8
    OmegaConf.save(cfg, tmp_path / "sam_tiny_patch8.yaml")
    torch.manual_seed(0)
    model, family = build_architecture(tmp_path / "sam_tiny_patch8.yaml")
    engine = SegmentEngine(model.eval(), family, name="tiny-sam-patch8")
    s = engine.image_size
    image = random_image(s, s)
    features = engine.embed(image_to_tensor(image))
    assert features.image_embed.shape[-2:] == (s // 8, s // 8)
    predictor = reference_predictor(engine)
    predictor.set_image(image)
    low_res = engine.decode(features, [point_prompt(20, 30)]).low_res_logits[0].detach().numpy()
    assert low_res.shape[-2:] == (s // 2, s // 2)
    for name, prompt in example_prompts(s, s, low_res).items():
        ours = engine.decode(features, [prompt]).logits[0].detach().numpy()
        assert np.abs(ours - reference_logits(predictor, prompt)).max() < 1e-4, name
    painted = np.zeros((s, s), bool)
    painted[10:40, 12:30] = True
    assert engine.decode(features, [mask_prompt(painted)]).logits.shape == (1, s, s)
