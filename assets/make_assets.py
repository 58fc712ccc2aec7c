"""Regenerate the example images of the app: `python assets/make_assets.py`.

Held-out procedural scenes (seeds HELDOUT_SEED_START + i, never used for training) and a few
photos bundled with scikit-image whose licences allow redistribution (see README.md here).
The captions shown in the app live in examples.json.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SCENES = (0, 1, 2, 3)  # indices into samdemo.scenes.validation_scenes
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")  # CC0 / public domain (skimage.data docstrings)
PHOTO_MAX_SIDE = 512


def write_png(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main() -> None:
    from samdemo.scenes import validation_scenes

    scenes = validation_scenes(max(SCENES) + 1)
    for i in SCENES:
        write_png(HERE / f"scene-{i}.png", scenes[i].image)
    import skimage.data as skd

    for name in PHOTOS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = np.asarray(getattr(skd, name)())[..., :3]
        h, w = image.shape[:2]
        if max(h, w) > PHOTO_MAX_SIDE:
            s = PHOTO_MAX_SIDE / max(h, w)
            image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        write_png(HERE / f"{name}.png", image)
    print("wrote", ", ".join(sorted(p.name for p in HERE.glob("*.png"))))


if __name__ == "__main__":
    main()
