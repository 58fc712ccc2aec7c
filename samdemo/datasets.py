"""Evaluation data: samples of (name, H x W x 3 uint8 RGB image, N x H x W bool instance masks).

A ``--data`` string picks the source:

* ``scenes`` or ``scenes:N``: the test split of the held-out procedural scenes
  (``scenes.test_scenes``; N, default 100) at the model's input size; ``val-scenes[:N]``: the
  validation split (``scenes.validation_scenes``), for choosing settings; ``shapes[:N]``: scenes of
  the independent evaluation generator (``shapes_eval.independent_scenes``), never trained on.
* ``DIR`` (or ``folder:DIR``): ``DIR/images/NAME.png|jpg|jpeg`` with either ``DIR/masks/NAME/*.png``
  (one binary PNG per instance, non-zero = object) or ``DIR/masks/NAME.png`` (one instance-id PNG:
  0 = background, every other value one instance; an RGB PNG counts each non-black colour as one).
* ``coco:ANNOTATIONS.json[:IMAGES_DIR]``: COCO instance annotations (polygons, RLE, uncompressed
  RLE; ``iscrowd`` regions are skipped); images in IMAGES_DIR, default the annotation file's folder.
* ``sa1b:DIR`` (or a ``DIR`` without ``images/`` that holds ``*.json``): SA-1B style, ``DIR/NAME.json``
  = ``{"image": {"file_name", "height", "width"}, "annotations": [{"segmentation": {"size",
  "counts"}}]}`` next to its image ``DIR/<file_name>``.

A bare path ending in ``.json`` is read as COCO. Samples are in name order (sorted); images
load lazily, one at a time. Images are decoded by the app's decoder (``samdemo.limits.read_image``:
pixel cap, 16-bit and transparency converted) as stored (no EXIF rotation: annotations refer to the
stored pixels). An image larger than ``max_side`` (default 1024, the SAM input size) on its
longest side is downscaled with area interpolation, and its masks with it (area, kept where at
least half covered). Instances left empty are dropped; an image without any instance yields a
sample with ``N = 0`` (the evaluation skips it). Anything malformed raises :class:`DatasetError`
naming the file.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from samdemo.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_SCENES = 100
DEFAULT_MAX_SIDE = 1024


@dataclass(frozen=True)
class Sample:
    """name: unique within the dataset. image: H x W x 3 uint8 RGB. masks: N x H x W bool, same frame."""

    name: str
    image: np.ndarray
    masks: np.ndarray


class Dataset:
    """Samples by index; ``names`` are known up front, images and masks are read by ``load(name)``
    (``name -> (image, masks)``, any size), then checked and bounded to ``max_side``."""

    def __init__(self, source: str, names: list[str], load: Callable[[str], tuple[np.ndarray, np.ndarray]],
                 max_side: int = DEFAULT_MAX_SIDE):
        if not names:
            raise DatasetError(f"{source}: the dataset is empty (no image found).")
        self.source, self.names, self._load, self.max_side = source, names, load, max_side

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        name = self.names[index]
        image, masks = self._load(name)
        if masks.shape[1:] != image.shape[:2]:
            raise DatasetError(f"{self.source}: the masks of {name} are {masks.shape[2]}x{masks.shape[1]} but the "
                               f"image is {image.shape[1]}x{image.shape[0]}.")
        image, masks = bound_size(image, masks, self.max_side)
        return Sample(name, image, masks[masks.any(axis=(1, 2))])

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def bound_size(image: np.ndarray, masks: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale an image and its N x H x W masks so that the longest side is at most ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, masks
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 takes (width, height)
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    masks = np.stack([cv2.resize(m.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128
                      for m in masks]) if len(masks) else np.zeros((0, size[1], size[0]), bool)
    return image, masks


# ------------------------------------------------------------------------------------------ sources
def open_dataset(source: str, scene_size: int = 256, max_side: int = DEFAULT_MAX_SIDE) -> Dataset:
    """The dataset a ``--data`` string names (syntax in the module docstring)."""
    kind, _, rest = source.partition(":")
    if kind in SCENE_SPLITS:
        if rest and not rest.isdigit():
            raise DatasetError(f"--data {source!r}: write {kind} or {kind}:N with N a positive integer.")
        return scene_dataset(int(rest) if rest else DEFAULT_SCENES, scene_size, SCENE_SPLITS[kind])
    if kind == "coco":
        annotations, _, images = rest.partition(":")
        return coco_dataset(annotations, images or None, max_side)
    if kind == "sa1b":
        return sa1b_dataset(rest, max_side)
    if kind == "folder":
        return folder_dataset(rest, max_side)
    path = Path(source)
    if path.suffix.lower() == ".json" and path.is_file():
        return coco_dataset(path, None, max_side)
    if not path.is_dir():
        raise DatasetError(f"--data {source!r} is neither scenes[:N], coco:ANN.json[:IMAGES], sa1b:DIR nor an "
                           "existing folder.")
    if (path / "images").is_dir() or not any(path.glob("*.json")):
        return folder_dataset(path, max_side)
    return sa1b_dataset(path, max_side)


SCENE_SPLITS = {"scenes": "test", "val-scenes": "validation", "shapes": "shapes"}  # --data prefix -> source


def scene_dataset(n: int, size: int = 256, split: str = "test") -> Dataset:
    """The first ``n`` scenes of ``split`` ("test", "validation" or the independent "shapes") at
    ``size`` x ``size``, named ``scene-SEED``."""
    from samdemo.scenes import TEST_SEED_START, VALIDATION_SEED_START, make_scene
    from samdemo.shapes_eval import SHAPES_SEED_START, shapes_scene

    start = {"test": TEST_SEED_START, "validation": VALIDATION_SEED_START, "shapes": SHAPES_SEED_START}[split]
    draw = shapes_scene if split == "shapes" else make_scene

    if n < 1:
        raise DatasetError(f"scenes:{n}: the dataset is empty (ask for at least one scene).")

    def load(name: str):
        scene = draw(int(name.removeprefix("scene-")), size)
        return scene.image, scene.masks

    return Dataset("scenes", [f"scene-{start + i}" for i in range(n)], load)


def folder_dataset(root: str | Path, max_side: int = DEFAULT_MAX_SIDE) -> Dataset:
    """``root/images/NAME.*`` with ``root/masks/NAME/*.png`` or ``root/masks/NAME.png`` (instance ids)."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DatasetError(f"{root}: no images/ folder (expected images/NAME.png|jpg and masks/NAME/*.png or "
                           "masks/NAME.png).")
    files: dict[str, Path] = {}
    for path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem in files:
            raise DatasetError(f"{images_dir}: {files[path.stem].name} and {path.name} share a name; keep one.")
        files[path.stem] = path

    def load(name: str):
        image = read_dataset_image(files[name])
        per_instance, ids = masks_dir / name, masks_dir / f"{name}.png"
        if per_instance.is_dir() and ids.is_file():
            raise DatasetError(f"{root}: both {per_instance}/ and {ids} exist for image {name}; keep one.")
        if per_instance.is_dir():
            paths = sorted(per_instance.glob("*.png"))
            layers = [read_binary_mask(path) for path in paths]
        elif ids.is_file():
            paths, layers = [ids], [read_instance_ids(ids)]
        else:
            raise DatasetError(f"{root}: no masks for image {files[name].name}: expected {per_instance}/*.png "
                               f"or {ids}.")
        for path, layer in zip(paths, layers):
            if layer.shape[-2:] != image.shape[:2]:
                raise DatasetError(f"{path} is {layer.shape[-1]}x{layer.shape[-2]} but its image {files[name].name} "
                                   f"is {image.shape[1]}x{image.shape[0]}.")
        if per_instance.is_dir():
            return image, np.stack(layers) if layers else np.zeros((0, *image.shape[:2]), bool)
        return image, layers[0]

    return Dataset(str(root), sorted(files), load, max_side)


def coco_dataset(annotations: str | Path, images_dir: str | Path | None = None,
                 max_side: int = DEFAULT_MAX_SIDE) -> Dataset:
    """COCO instance annotations; images without a non-crowd annotation are left out."""
    annotations = Path(annotations)
    images_dir = Path(images_dir) if images_dir else annotations.parent
    data = read_json(annotations)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{annotations} is not COCO instance annotations (an object with 'images' and "
                           "'annotations' lists).")
    if not images_dir.is_dir():
        raise DatasetError(f"{annotations}: image folder {images_dir} does not exist.")
    try:
        images = {entry["id"]: entry for entry in data["images"]}
        per_image: dict = {}
        for ann in data["annotations"]:
            if not ann.get("iscrowd", 0):  # crowd regions are "ignore" areas in COCO's own evaluation
                per_image.setdefault(ann["image_id"], []).append(ann["segmentation"])
        unknown = sorted(set(per_image) - set(images), key=str)
        if unknown:
            raise DatasetError(f"{annotations}: annotations refer to image ids {unknown[:5]} that 'images' lacks.")
        by_name = {images[i]["file_name"]: (images[i], per_image[i]) for i in per_image}
    except (KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f"{annotations}: malformed image or annotation entry ({type(error).__name__}: "
                           f"{error}).") from None

    def load(name: str):
        entry, segmentations = by_name[name]
        image = read_dataset_image(images_dir / name)
        h, w = _declared_size(entry, f"{annotations} (image {name})")
        if (h, w) != image.shape[:2]:
            raise DatasetError(f"{annotations} says {name} is {w}x{h} but {images_dir / name} is "
                               f"{image.shape[1]}x{image.shape[0]}.")
        return image, np.stack([decode_segmentation(s, h, w, f"{annotations} (image {name})") for s in segmentations])

    return Dataset(str(annotations), sorted(by_name), load, max_side)


def sa1b_dataset(root: str | Path, max_side: int = DEFAULT_MAX_SIDE) -> Dataset:
    """SA-1B style: ``root/NAME.json`` (image entry + RLE annotations) next to its image."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"sa1b:{root}: no such folder.")
    files = {p.stem: p for p in sorted(root.glob("*.json"))}

    def load(name: str):
        path = files[name]
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("image"), dict) \
                or not isinstance(data.get("annotations"), list):
            raise DatasetError(f"{path} is not an SA-1B annotation file (an object with 'image' and 'annotations').")
        entry = data["image"]
        if "file_name" not in entry:
            raise DatasetError(f"{path}: the image entry has no file_name.")
        image = read_dataset_image(root / entry["file_name"])
        h, w = _declared_size(entry, str(path))
        if (h, w) != image.shape[:2]:
            raise DatasetError(f"{path} says {entry['file_name']} is {w}x{h} but the image is "
                               f"{image.shape[1]}x{image.shape[0]}.")
        masks = [decode_segmentation(ann.get("segmentation") if isinstance(ann, dict) else None, h, w, str(path))
                 for ann in data["annotations"]]
        return image, np.stack(masks) if masks else np.zeros((0, h, w), bool)

    return Dataset(str(root), sorted(files), load, max_side)


# ------------------------------------------------------------------------------------------ readers
def read_dataset_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB at full resolution (``Dataset`` bounds the image and its masks together)."""
    from samdemo import limits

    if not path.is_file():
        raise DatasetError(f"image {path} does not exist.")
    try:
        return limits.read_image(path, max_side=0, exif=False)[0]
    except limits.UserError as error:
        raise DatasetError(f"cannot read image {path}: {error}") from None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            # palette PNGs keep their indices (the usual instance-id format); "1" becomes 0/1
            return np.array(image.convert("L") if image.mode == "1" else image)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read mask {path} ({type(error).__name__}).") from None


def read_binary_mask(path: Path) -> np.ndarray:
    """H x W bool: any non-zero colour channel (alpha ignored) is the object."""
    pixels = _read_png(path)
    return (pixels[..., :3] if pixels.ndim == 3 else pixels).reshape(*pixels.shape[:2], -1).any(-1)


def read_instance_ids(path: Path) -> np.ndarray:
    """N x H x W bool, one mask per non-zero id (ascending); an RGB PNG's ids are its colours."""
    pixels = _read_png(path)
    if pixels.ndim == 3:
        rgb = pixels[..., :3].astype(np.int64)
        pixels = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    ids = np.unique(pixels)
    return np.stack([pixels == i for i in ids[ids != 0]]) if (ids != 0).any() else np.zeros((0, *pixels.shape), bool)


def read_json(path: Path):
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON: {error}.") from None


def _declared_size(entry: dict, where: str) -> tuple[int, int]:
    h, w = entry.get("height"), entry.get("width")
    if not all(isinstance(v, int) and v > 0 for v in (h, w)):
        raise DatasetError(f"{where}: the image entry needs positive integer height and width, got {h!r}, {w!r}.")
    return h, w


def decode_segmentation(segmentation, h: int, w: int, where: str) -> np.ndarray:
    """H x W bool from a COCO / SA-1B segmentation: polygons, RLE (string counts) or uncompressed RLE."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...] in pixels
            polygons = [p for p in segmentation if len(p) >= 6]  # fewer than 3 points: no area
            if not polygons:
                return np.zeros((h, w), bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
            rle = segmentation
        else:
            raise DatasetError(f"{where}: a segmentation is neither polygons nor RLE: {str(segmentation)[:80]}.")
        if list(rle["size"]) != [h, w]:
            raise DatasetError(f"{where}: an RLE mask is {rle['size'][1]}x{rle['size'][0]} but the image is {w}x{h}.")
        with warnings.catch_warnings():  # pycocotools 2.0.11 trips a numpy 2 DeprecationWarning (copy=False)
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)
    except DatasetError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise DatasetError(f"{where}: cannot decode a segmentation ({type(error).__name__}: {error}).") from None
