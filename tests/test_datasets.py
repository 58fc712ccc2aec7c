"""Evaluation data sources: every format read back pixel for pixel, and clear errors for malformed input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from samdemo.datasets import bound_size, open_dataset
from samdemo.errors import DatasetError
from samdemo.scenes import TEST_SEED_START, VALIDATION_SEED_START, make_scene

H, W = 16, 20


def save_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def rgb(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def boxes_mask(*boxes, h=H, w=W):
    """H x W bool with the (y0, y1, x0, x1) rectangles set."""
    mask = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths in column-major order, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


# ------------------------------------------------------------------------------------------ formats
def test_folder_per_instance_pngs(tmp_path):
    image = rgb()
    a, b = boxes_mask((2, 9, 3, 11)), boxes_mask((10, 16, 0, 5), (0, 2, 18, 20))
    save_png(tmp_path / "images" / "cat.png", image)
    save_png(tmp_path / "masks" / "cat" / "0.png", a.astype(np.uint8) * 255)
    save_png(tmp_path / "masks" / "cat" / "1.png", b, mode="1")  # a 1-bit PNG
    save_png(tmp_path / "masks" / "cat" / "2.png", np.zeros((H, W), np.uint8))  # empty: dropped
    dataset = open_dataset(str(tmp_path))
    assert dataset.names == ["cat"] and len(dataset) == 1
    sample = dataset[0]
    assert sample.name == "cat" and np.array_equal(sample.image, image)
    assert sample.masks.dtype == bool and np.array_equal(sample.masks, np.stack([a, b]))
    assert np.array_equal(open_dataset(f"folder:{tmp_path}")[0].masks, sample.masks)


@pytest.mark.parametrize("kind", ["grey", "palette", "rgb"])
def test_folder_instance_id_png(tmp_path, kind):
    ids = np.zeros((H, W), np.uint8)
    ids[1:5, 1:6], ids[8:14, 10:19] = 7, 3
    save_png(tmp_path / "images" / "a.png", rgb())
    save_png(tmp_path / "images" / "b.jpg", rgb(1))
    if kind == "grey":
        save_png(tmp_path / "masks" / "a.png", ids)
    elif kind == "palette":
        palette = Image.fromarray(ids, "P")
        palette.putpalette([0, 0, 0] + [255, 0, 0] * 255)  # colours do not matter, indices do
        (tmp_path / "masks").mkdir()
        palette.save(tmp_path / "masks" / "a.png")
    else:
        colours = np.zeros((H, W, 3), np.uint8)
        colours[ids == 7], colours[ids == 3] = (200, 10, 10), (10, 10, 200)
        save_png(tmp_path / "masks" / "a.png", colours)
    save_png(tmp_path / "masks" / "b.png", np.zeros((H, W), np.uint8))  # no instance: an empty sample
    dataset = open_dataset(str(tmp_path))
    assert dataset.names == ["a", "b"]
    masks = dataset[0].masks
    assert np.array_equal(masks, np.stack([ids == 3, ids == 7]))  # ascending id; RGB: blue < red as 0xRRGGBB
    assert dataset[1].image.shape == (H, W, 3) and dataset[1].masks.shape == (0, H, W)


def test_coco_polygons_rle_and_uncompressed_rle(tmp_path):
    images = tmp_path / "val"
    save_png(images / "one.png", rgb())
    save_png(images / "two.png", rgb(1))
    save_png(images / "three.png", rgb(2))  # no annotation: left out
    compressed = boxes_mask((5, 12, 2, 7))
    rle = mask_utils.encode(np.asfortranarray(compressed.astype(np.uint8)))
    unc = boxes_mask((0, 3, 15, 20), (10, 16, 10, 12))
    annotations = {
        "images": [{"id": 1, "file_name": "one.png", "height": H, "width": W},
                   {"id": 2, "file_name": "two.png", "height": H, "width": W},
                   {"id": 3, "file_name": "three.png", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},
            {"id": 11, "image_id": 1, "iscrowd": 0,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}},
            {"id": 12, "image_id": 2, "iscrowd": 0, "segmentation": uncompressed_rle(unc)},
            {"id": 13, "image_id": 2, "iscrowd": 1, "segmentation": uncompressed_rle(~unc)},  # crowd: skipped
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(annotations))
    dataset = open_dataset(f"coco:{ann}:{images}")
    assert dataset.names == ["one.png", "two.png"]
    one, two = dataset
    # pycocotools fills the polygon's interior [1, 4) x [1, 3) in pixel units
    assert np.array_equal(one.masks, np.stack([boxes_mask((1, 3, 1, 4)), compressed]))
    assert np.array_equal(two.masks, unc[None]) and np.array_equal(two.image, rgb(1))
    (tmp_path / "flat").mkdir()
    save_png(tmp_path / "flat" / "one.png", rgb())
    save_png(tmp_path / "flat" / "two.png", rgb(1))
    (tmp_path / "flat" / "ann.json").write_text(json.dumps(annotations))
    assert np.array_equal(open_dataset(str(tmp_path / "flat" / "ann.json"))[1].masks, unc[None])  # images beside it


def test_sa1b_json(tmp_path):
    masks = [boxes_mask((0, 4, 0, 4)), boxes_mask((6, 16, 8, 20))]
    for stem, seed in (("sa_2", 2), ("sa_1", 1)):
        save_png(tmp_path / f"{stem}.png", rgb(seed))
        anns = [{"id": k, "segmentation": {"size": [H, W], "counts": mask_utils.encode(
            np.asfortranarray(m.astype(np.uint8)))["counts"].decode()}, "area": int(m.sum())}
                for k, m in enumerate(masks)]
        (tmp_path / f"{stem}.json").write_text(json.dumps(
            {"image": {"image_id": seed, "file_name": f"{stem}.png", "height": H, "width": W}, "annotations": anns}))
    for source in (f"sa1b:{tmp_path}", str(tmp_path)):  # explicit, and detected (json files, no images/)
        dataset = open_dataset(source)
        assert dataset.names == ["sa_1", "sa_2"]
        assert np.array_equal(dataset[0].image, rgb(1)) and np.array_equal(dataset[0].masks, np.stack(masks))


def test_scenes_at_the_model_size():
    dataset = open_dataset("scenes:2", scene_size=64)  # the test split: what reports use
    assert dataset.names == [f"scene-{TEST_SEED_START}", f"scene-{TEST_SEED_START + 1}"]
    scene = make_scene(TEST_SEED_START + 1, 64)
    assert np.array_equal(dataset[1].image, scene.image) and np.array_equal(dataset[1].masks, scene.masks)
    assert len(open_dataset("scenes", scene_size=64)) == 100
    assert open_dataset("val-scenes:1", scene_size=64).names == [f"scene-{VALIDATION_SEED_START}"]


def test_large_images_are_bounded(tmp_path):
    image = np.zeros((1000, 2400, 3), np.uint8)
    mask = np.zeros((1000, 2400), bool)
    mask[100:300, 480:960] = True
    small_image, small_masks = bound_size(image, mask[None], 1200)
    assert small_image.shape == (500, 1200, 3) and small_masks.shape == (1, 500, 1200)
    assert np.array_equal(small_masks[0], boxes_mask((50, 150, 240, 480), h=500, w=1200))
    save_png(tmp_path / "images" / "big.png", image)
    save_png(tmp_path / "masks" / "big" / "0.png", mask.astype(np.uint8) * 255)
    assert open_dataset(str(tmp_path))[0].masks.shape == (1, 427, 1024)  # default bound: 1024


def test_images_are_read_as_stored_by_the_shared_decoder(tmp_path):
    """samdemo.limits.read_image without its EXIF rotation (masks refer to the stored pixels); 16-bit is
    scaled, not clipped."""
    image, exif = rgb(), Image.Exif()
    exif[0x0112] = 6  # Orientation: a viewer would turn it by 90 degrees
    grey16 = np.random.default_rng(1).integers(0, 65536, (H, W), dtype=np.uint16)
    for name in ("grey16", "rotated"):
        save_png(tmp_path / "masks" / name / "0.png", np.full((H, W), 255, np.uint8))
    save_png(tmp_path / "images" / "grey16.png", grey16)
    Image.fromarray(image).save(tmp_path / "images" / "rotated.png", exif=exif)
    grey16_sample, rotated_sample = open_dataset(str(tmp_path))
    assert np.array_equal(rotated_sample.image, image)
    assert np.array_equal(grey16_sample.image, np.repeat(np.round(grey16 / 257).astype(np.uint8)[..., None], 3, 2))


# ------------------------------------------------------------------------------------------ errors
def folder_with(tmp_path, image_size=(H, W), mask_size=(H, W)):
    save_png(tmp_path / "images" / "a.png", rgb(h=image_size[0], w=image_size[1]))
    save_png(tmp_path / "masks" / "a" / "0.png", np.full(mask_size, 255, np.uint8))
    return tmp_path


def test_missing_masks(tmp_path):
    folder_with(tmp_path)
    save_png(tmp_path / "images" / "b.png", rgb())
    dataset = open_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match=r"no masks for image b\.png: expected .*masks/b/\*\.png or .*masks/b\.png"):
        dataset[1]


def test_size_mismatch(tmp_path):
    folder_with(tmp_path, mask_size=(10, 10))
    with pytest.raises(DatasetError, match=r"0\.png is 10x10 but its image a\.png is 20x16"):
        open_dataset(str(tmp_path))[0]


def test_empty_and_unknown_sources(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        open_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match="neither"):
        open_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="scenes:N"):
        open_dataset("scenes:many")
    with pytest.raises(DatasetError, match="empty"):
        open_dataset("scenes:0")


def test_unreadable_image(tmp_path):
    folder_with(tmp_path)
    (tmp_path / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*a\.png"):
        open_dataset(str(tmp_path))[0]


def test_bad_coco_json(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"ann\.json is not valid JSON"):
        open_dataset(f"coco:{ann}:{tmp_path}")
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not COCO instance annotations"):
        open_dataset(f"coco:{ann}")
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
                               "annotations": [{"image_id": 2, "segmentation": [[0, 0, 5, 0, 5, 5]]}]}))
    with pytest.raises(DatasetError, match=r"image ids \[2\]"):
        open_dataset(f"coco:{ann}")


def test_coco_declared_size_mismatch(tmp_path):
    save_png(tmp_path / "a.png", rgb())
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
                               "annotations": [{"image_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]}]}))
    with pytest.raises(DatasetError, match=r"says a\.png is 32x32 but .*a\.png is 20x16"):
        open_dataset(str(ann))[0]


def test_bad_sa1b_json(tmp_path):
    save_png(tmp_path / "sa_1.png", rgb())
    (tmp_path / "sa_1.json").write_text("{oops")
    with pytest.raises(DatasetError, match=r"sa_1\.json is not valid JSON"):
        open_dataset(f"sa1b:{tmp_path}")[0]
    entry = {"file_name": "sa_1.png", "height": H, "width": W}
    (tmp_path / "sa_1.json").write_text(json.dumps({"image": entry, "annotations": [
        {"segmentation": {"size": [8, 8], "counts": "PP"}}]}))
    with pytest.raises(DatasetError, match=r"sa_1\.json: an RLE mask is 8x8 but the image is 20x16"):
        open_dataset(f"sa1b:{tmp_path}")[0]
