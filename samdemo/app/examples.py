"""The bundled example images: only the files listed in ``assets/examples.json`` can be loaded from
the UI (an index into that list, never a path)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from samdemo import limits
from samdemo.errors import UserError

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str


def load_examples(folder: Path = ASSETS_DIR) -> list[Example]:
    index = folder / "examples.json"
    if not index.exists():
        return []
    examples = []
    for entry in json.loads(index.read_text()):
        path = (folder / entry["file"]).resolve()
        if path.parent == folder.resolve() and path.exists():
            examples.append(Example(path, entry["caption"]))
    return examples


def read_example(examples: Sequence[Example], index) -> tuple[np.ndarray, str]:
    try:
        number = float(index)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number == int(number) and 0 <= number < len(examples)):
        raise UserError(f"Pick one of the example images (an index from 0 to {len(examples) - 1}; "
                        f"got {limits.quoted(index)}).")
    example = examples[int(number)]
    bgr = cv2.imread(str(example.path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"Example {example.path.name} cannot be read.")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), example.path.stem
