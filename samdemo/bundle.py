"""A zip of what an attack produced, enough to reproduce it: ``python -m samdemo attack --replay settings.json``.

Contents (all images lossless PNG, H x W in the original image frame):

* ``clean.png``, ``adversarial.png``: H x W x 3 uint8 RGB;
* ``masks/<name>.png``: H x W, 255 foreground, 0 background, one per mask;
* ``table.csv``: the result table, header first;
* ``settings.json``: the attack in the CLI's own option names (``SETTINGS_KEYS``), with
  ``"image": "clean.png"`` relative to the JSON file;
* ``README.txt`` (when given): how to replay it, and what the settings cannot express.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

SETTINGS_FILE = "settings.json"
# CLI option (argparse dest) -> whether a settings file must give it
SETTINGS_KEYS = {"image": True, "model": True, "attack": True, "eps": True, "steps": True, "seed": True,
                 "generator": True, "step_size": False, "point": False, "negative_point": False, "box": False,
                 "no_random_start": False, "adapter": False, "target": False}


def png_bytes(image: np.ndarray) -> bytes:
    """H x W x 3 uint8 RGB or H x W bool/uint8 -> PNG file bytes (bool masks as 0/255)."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected an H x W (x 3) uint8 or bool image, got {array.shape} {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "mask"


def write_bundle(path: Path, clean: np.ndarray, adversarial: np.ndarray, masks: Mapping[str, np.ndarray],
                 table: Sequence[Sequence], settings: Mapping, readme: str | None = None) -> Path:
    """Write the zip described in the module docstring; ``table`` is rows, the header first;
    ``settings`` is checked with :func:`check_settings` (its ``image`` becomes ``clean.png``)."""
    settings = check_settings(dict(settings) | {"image": "clean.png"})
    text = io.StringIO()
    csv.writer(text).writerows(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("clean.png", png_bytes(clean))
        archive.writestr("adversarial.png", png_bytes(adversarial))
        for name, mask in masks.items():
            archive.writestr(f"masks/{_file_name(name)}.png", png_bytes(np.asarray(mask, bool)))
        archive.writestr("table.csv", text.getvalue())
        archive.writestr(SETTINGS_FILE, json.dumps(settings, indent=1) + "\n")
        if readme:
            archive.writestr("README.txt", readme.rstrip() + "\n")
    return path


def check_settings(settings: Mapping) -> dict:
    """The settings with only ``SETTINGS_KEYS``, every required one present (ValueError otherwise)."""
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:
        raise ValueError(f"settings: unknown keys {', '.join(unknown)}; known: {', '.join(SETTINGS_KEYS)}.")
    missing = [key for key, required in SETTINGS_KEYS.items() if required and settings.get(key) is None]
    if missing:
        raise ValueError(f"settings: missing {', '.join(missing)}.")
    return {key: settings[key] for key in SETTINGS_KEYS if key in settings}


def read_settings(path: Path) -> dict:
    """A settings JSON (or a bundle zip holding one) -> checked settings with ``image`` as a Path.

    A relative image path is taken relative to the JSON file; from a zip, the bundle's clean
    image is extracted next to the zip (``<zip stem>-clean.png``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist.")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            settings = check_settings(json.loads(archive.read(SETTINGS_FILE)))
            image = path.with_name(f"{path.stem}-clean.png")
            image.write_bytes(archive.read(settings["image"]))
        return settings | {"image": image}
    try:
        settings = check_settings(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"settings file {path} is not JSON: {error}") from None
    image = Path(settings["image"])
    return settings | {"image": image if image.is_absolute() else path.parent / image}
