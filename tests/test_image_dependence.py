"""The independent evaluation generator, the image variants of the image-dependence metric, and
the training-side pieces that teach a model to look at the image."""

import numpy as np
import pytest
import torch

from samdemo.datasets import open_dataset
from samdemo.losses import hard_iou, low_res_target
from samdemo.prompt_sampling import coarse_mask, corrective_click, featureless_image
from samdemo.quality import image_variant
from samdemo.scenes import make_scene
from samdemo.shapes_eval import MIN_COLOUR_DISTANCE, SHAPES_SEED_START, independent_scenes, shapes_scene


def test_independent_scenes_are_deterministic_disjoint_and_visible():
    scenes = independent_scenes(12, size=128)
    again = independent_scenes(12, size=128)
    for scene, same in zip(scenes, again):
        assert np.array_equal(scene.image, same.image) and np.array_equal(scene.masks, same.masks)
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert scene.masks.dtype == bool and len(scene.masks) >= 1
        assert (scene.masks.sum(0) <= 1).all()  # visible parts never overlap
        assert (scene.masks.sum((1, 2)) >= 60).all()
    assert sum(len(s.masks) for s in scenes) >= 2 * len(scenes)


def test_every_object_stands_out_from_its_surroundings():
    """Each object's mean colour differs clearly from the ring of pixels just outside it."""
    import cv2

    contrasts = []
    for scene in independent_scenes(20):
        image = scene.image.astype(float)
        for mask in scene.masks:
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
            contrasts.append(np.linalg.norm(image[mask].mean(0) - image[ring].mean(0)))
    # occluders and gradients soften some rims; most stay well apart
    assert np.median(contrasts) > MIN_COLOUR_DISTANCE / 2


def test_independent_generator_differs_from_the_training_generator():
    assert SHAPES_SEED_START > 2_000_000_000
    assert not np.array_equal(shapes_scene(5).image, make_scene(5).image)
    dataset = open_dataset("shapes:2", scene_size=64)
    assert dataset.names == [f"scene-{SHAPES_SEED_START}", f"scene-{SHAPES_SEED_START + 1}"]
    assert np.array_equal(dataset[1].masks, shapes_scene(SHAPES_SEED_START + 1, 64).masks)


def test_image_variants_remove_what_they_say():
    scene = make_scene(3, 64)
    grey = image_variant(scene, "grey")
    assert (grey.image == 128).all() and np.array_equal(grey.masks, scene.masks)
    shuffled = image_variant(scene, "shuffled", seed=1)
    inside = scene.masks.any(0)
    assert np.array_equal(shuffled.image[~inside], scene.image[~inside])  # background untouched
    before = np.sort(scene.image[inside].view([("", np.uint8)] * 3), axis=0)
    after = np.sort(shuffled.image[inside].view([("", np.uint8)] * 3), axis=0)
    assert np.array_equal(before, after) and not np.array_equal(shuffled.image, scene.image)
    assert image_variant(scene, "image") is scene
    with pytest.raises(ValueError, match="unknown image variant"):
        image_variant(scene, "blurred")


def test_featureless_images_have_nothing_to_segment():
    rng = np.random.default_rng(0)
    for _ in range(10):
        image = featureless_image(rng, 64).astype(float)
        assert image.shape == (64, 64, 3)
        # at most a smooth ramp: neighbouring pixels differ by little more than the faint noise
        assert np.abs(np.diff(image, axis=1)).mean() < 10 and np.abs(np.diff(image, axis=0)).mean() < 10


def test_coarse_masks_keep_the_object_but_lose_its_boundary():
    mask = shapes_scene(SHAPES_SEED_START + 2, 128).masks[0]
    rng = np.random.default_rng(0)
    ious = []
    for _ in range(20):
        coarse = coarse_mask(mask, rng)
        ious.append((coarse & mask).sum() / (coarse | mask).sum())
    assert min(ious) > 0.1 and 0.3 < np.median(ious) and max(ious) < 1.0  # roughly the object, never its boundary


def test_corrective_click_on_an_empty_target_is_negative():
    rng = np.random.default_rng(0)
    gt = np.zeros((32, 32), bool)
    pred = np.zeros((32, 32), bool)
    pred[4:10, 4:10] = True
    click, label = corrective_click(pred, gt, rng)
    assert label == 0 and pred[int(click[1]), int(click[0])]
    _, label = corrective_click(gt, gt, rng)  # nothing predicted, nothing there: still a negative click
    assert label == 0


def test_low_res_target_is_the_covered_fraction():
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, :2] = 1
    target = low_res_target(masks, (2, 2))
    assert torch.allclose(target, torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]))
    logits = torch.tensor([[[1.0, -1.0], [-1.0, -1.0]]])
    assert hard_iou(logits, target).item() == 1.0  # the 0.5-covered cell counts as foreground
    assert hard_iou(-logits.abs(), torch.zeros(1, 2, 2)).item() == 0.0
