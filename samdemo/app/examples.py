"""The bundled example images: only the files listed in ``assets/examples.json`` can be loaded from
the UI (an index into that list, never a path). Each says which models it suits (``suits``: "all", or
"photos": Meta's models, trained on photographs); :func:`example_note` is the honest note shown when
an example is loaded with a model it does not suit."""

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
    suits: str = "all"  # "all" models, or "photos": Meta's models (the embedded ones never saw a photo)

    @property
    def label(self) -> str:
        """The gallery's caption: the example's, and which models it suits when not all."""
        return self.caption + (" [Best with Meta's models]" if self.suits == "photos" else "")


def load_examples(folder: Path = ASSETS_DIR) -> list[Example]:
    index = folder / "examples.json"
    if not index.exists():
        return []
    examples = []
    for entry in json.loads(index.read_text()):
        path = (folder / entry["file"]).resolve()
        if path.parent == folder.resolve() and path.exists():
            examples.append(Example(path, entry["caption"], entry.get("suits", "all")))
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


def example_note(example: Example, embedded_model: bool) -> str:
    """What to expect from ``example`` with the chosen model ("" when it suits it)."""
    if example.suits == "photos" and embedded_model:
        return ("*This photo suits Meta's models (SAM ViT-B/L/H, SAM 2.1). The embedded model learnt on "
                "synthetic scenes and has never seen a photograph: expect rough, partial or empty masks, and "
                "attack results that say more about the model than about the attack.*")
    return ""
