"""Reference masks of the bundled photos' main objects: `python assets/make_reference_masks.py`.

Made with OpenCV's GrabCut (a classical colour-model graph cut, not a learnt segmenter), started
from a rectangle around the object and corrected with a few hand-placed strokes (definitely
object / definitely background, in the photo's pixel frame), then the largest connected part with
its holes filled. Each result was checked by eye on the overlay this script writes
(`assets/masks/overview.png`). They score the embedded models' box prompts on photos
(`benchmarks/model_quality.py`); the box prompt is each reference mask's tight box.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "masks"

# photo -> (object, GrabCut rectangle x0, y0, x1, y1, strokes: (label, x0, y0, x1, y1, thickness));
# label 1 = object, 0 = background; strokes are straight lines.
# Where GrabCut cannot separate an object from a surface of the same colour (the red cup on its
# red saucer), a hand-traced outline is added to its result and what lies in front is removed.
TRACED = {
    "coffee": {
        "add": [[(148, 80), (155, 45), (180, 25), (240, 15), (300, 20), (335, 40), (350, 80), (348, 120), (338, 160),
                 (328, 195), (310, 215), (275, 232), (240, 236), (205, 230), (185, 212), (172, 190), (158, 150),
                 (150, 120)],  # the cup's body and rim
                [(172, 205), (200, 202), (218, 215), (214, 245), (200, 258), (178, 255), (168, 235)]],  # its handle
        "remove": [[(280, 215), (295, 200), (320, 198), (340, 212), (346, 240), (338, 265), (312, 276), (288, 265),
                    (279, 240)]],  # the spoon's bowl, in front of the cup
    },
}
OBJECTS = {
    "coffee": ("the cup", (140, 10, 365, 256), [
        (1, 175, 200, 320, 200, 8), (1, 190, 232, 290, 236, 6), (1, 182, 212, 196, 240, 5),
        (0, 80, 272, 450, 272, 10), (0, 80, 150, 135, 225, 6), (0, 295, 230, 330, 262, 8), (0, 352, 65, 338, 190, 4)]),
    "chelsea": ("the cat's head", (18, 0, 420, 300), [(0, 410, 120, 412, 300, 8)]),
    "astronaut": ("the astronaut's head", (148, 4, 304, 170), []),
    "rocket": ("the rocket", (238, 98, 284, 326), []),
}


def reference_mask(image: np.ndarray, rect, strokes) -> np.ndarray:
    """H x W bool mask of the object inside ``rect`` (x0, y0, x1, y1) of an RGB ``image``."""
    x0, y0, x1, y1 = rect
    labels = np.full(image.shape[:2], cv2.GC_BGD, np.uint8)
    labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    for label, a, b, c, d, thickness in strokes:
        cv2.line(labels, (a, b), (c, d), cv2.GC_FGD if label else cv2.GC_BGD, thickness)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, labels, None, bgd, fgd, 8, cv2.GC_INIT_WITH_MASK)
    mask = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    mask = (parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    outside = np.pad(mask, 1)  # a frame of background, so that every border pixel is reachable
    cv2.floodFill(outside, None, (0, 0), 1)
    return (mask | (1 - outside[1:-1, 1:-1])).astype(bool)  # holes: background not reachable from outside


def _paint(mask: np.ndarray, polygons, value: bool) -> np.ndarray:
    canvas = mask.astype(np.uint8)
    for polygon in polygons:
        cv2.fillPoly(canvas, [np.array(polygon, np.int32)], int(value))
    return canvas.astype(bool)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    tiles, index = [], {}
    for name, (what, rect, strokes) in OBJECTS.items():
        image = cv2.cvtColor(cv2.imread(str(HERE / f"{name}.png")), cv2.COLOR_BGR2RGB)
        mask = reference_mask(image, rect, strokes)
        traced = TRACED.get(name, {})
        mask = _paint(_paint(mask, traced.get("add", []), True), traced.get("remove", []), False)
        cv2.imwrite(str(OUT / f"{name}.png"), mask.astype(np.uint8) * 255)
        index[name] = {"object": what, "mask": f"masks/{name}.png", "grabcut_rect": list(rect),
                       "strokes": [list(s) for s in strokes], "traced": traced, "area": int(mask.sum())}
        overlay = image.copy()
        overlay[mask] = (0.5 * overlay[mask] + [0, 127, 0]).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 0), 1)
        tiles.append(cv2.resize(overlay, (512, round(512 * image.shape[0] / image.shape[1]))))
    height = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    grid = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    cv2.imwrite(str(OUT / "overview.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print("wrote", ", ".join(sorted(p.name for p in OUT.iterdir())))


if __name__ == "__main__":
    main()
