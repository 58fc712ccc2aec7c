"""The model card of an adapter folder: ``README.md`` (Hugging Face YAML front matter + Markdown).

:data:`CARD_TEXTS` holds each method's texts (title, introduction, how it was trained, what its
weights file holds, Hub tags); :func:`model_card` fills them in from an
:class:`~samdemo.defense.config.AdapterConfig` (layers, counts, metrics, training recipe).
"""

from __future__ import annotations

import json
import math
from typing import Any

from samdemo.defense.config import AdapterConfig
from samdemo.defense.fileformat import (CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, PLOT_FILE, S_BASE_KEY, S_KEY,
                                        WEIGHTS_FILE)
from samdemo.defense.layers import LAYER_TYPES

# method -> the card's texts; "how" is formatted with n (trainable values), ranks (the layers' ranks) and which
# (the SVD adapter's choice of singular values).
CARD_TEXTS: dict[str, dict[str, Any]] = {
    "svd": {
        "title": "SVD robustness adapter",
        "intro": "A singular-value adapter (Robust SAM, arXiv 2504.08906)",
        "how": ("Each targeted weight is decomposed as W = U diag(s) V^T; U and V are frozen (recomputed from the\n"
                "base weights at load time, never stored) and only **{n} singular values** s (per layer\n"
                "its `rank` {which}, table below)\n"
                "were trained, adversarially, to keep masks right under attack."),
        "files": (f"per layer `<module>.{S_KEY}` (adapted s) and `<module>.{S_BASE_KEY}` (the base\n"
                  "  model's s, for reference), float32."),
        "tags": ("svd", "singular-value-adapter"),
    },
    "lora": {
        "title": "LoRA robustness adapter (baseline)",
        "intro": "A LoRA adapter (a baseline for Robust SAM's singular-value adapter, arXiv 2504.08906)",
        "how": ("Each targeted weight (as an out x (in k k) matrix) becomes W + B A with B (zero-initialised) and A\n"
                "of rank {ranks}; W is frozen and only the **{n} values** of A and B were trained, adversarially,\n"
                "to keep masks right under attack."),
        "files": "per layer `<module>.lora_A` (rank x in k k) and `<module>.lora_B` (out x rank), float32.",
        "tags": ("lora", "defense-baseline"),
    },
    "full": {
        "title": "Full-weight robustness adapter (baseline)",
        "intro": "A full-weight adapter (a baseline for Robust SAM's singular-value adapter, arXiv 2504.08906)",
        "how": ("The targeted weights were fine-tuned as a whole, adversarially, to keep masks right under attack:\n"
                "W' = W + Delta with **{n} trainable values** (biases frozen); the file stores Delta."),
        "files": "per layer `<module>.weight_delta` (W' - W, in the weight's shape), float32.",
        "tags": ("full-fine-tuning", "defense-baseline"),
    },
}
assert set(CARD_TEXTS) == set(LAYER_TYPES), "every adapter method needs its card texts"


def _control_note(training: dict) -> str:
    """The sentence that says a control is one (its card must not read like the defense's)."""
    if training.get("control") == "shuffled":
        return (f"\n\n**This is a control, not a defense**: the trained values of `{training.get('source')}` with "
                "their relative changes s/s_base permuted within each layer (`python -m samdemo control`).")
    if training.get("adv_weight") == 0:
        return ("\n\n**This is a control, not a defense**: trained on clean images only (`--adv-weight 0`), "
                "with no attacks.")
    return ""


def model_card(config: AdapterConfig, has_plot: bool = False) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for an adapter."""
    import yaml

    layer_type, texts = LAYER_TYPES[config.method], CARD_TEXTS[config.method]
    family_tag = "sam2" if config.family == "sam2" else "sam"
    front: dict[str, Any] = {
        "library_name": "samdemo",
        "tags": ["segment-anything", family_tag, "adversarial-robustness", *texts["tags"],
                 "image-segmentation"],
        "pipeline_tag": "mask-generation",
    }
    if config.base_model_hub_id:
        front["base_model"] = config.base_model_hub_id
    layers = "\n".join(f"| `{name}` | {info['type']} | {info['matrix_shape'][0]} x {info['matrix_shape'][1]} | "
                       f"{info['rank']} | {layer_type.count(info)} |" for name, info in config.layers.items())
    ranks = ", ".join(str(r) for r in sorted({info["rank"] for info in config.layers.values()}))
    chosen = any("indices" in info for info in config.layers.values())
    which = "at the positions `indices` of adapter_config.json (chosen at random: a control)" if chosen else "largest"
    how = texts["how"].format(n=config.num_trainable, ranks=ranks, which=which) + _control_note(config.training)
    metrics = _metrics_table(config.metrics)
    training = "\n".join(f"- `{k}`: {v}" for k, v in config.training.items()) or "- (not recorded)"
    plot = f"\n![Original vs adapted singular values]({PLOT_FILE})\n" if has_plot else ""
    hub_link = (f" (Hub: [{config.base_model_hub_id}](https://huggingface.co/{config.base_model_hub_id}))"
                if config.base_model_hub_id else "")
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {texts['title']} for `{config.base_model}`

{texts['intro']} for the {'SAM 2' if config.family == 'sam2' else 'SAM'} model
`{config.base_model}`{hub_link}.
{how}

## Use

```python
from samdemo.factory import load_engine, robust_copy

engine = load_engine("{config.base_model}")
robust, adapter = robust_copy(engine, "OWNER/REPO")   # or a local folder; merged and frozen
```

The adapter refuses to load onto other weights: base-weight fingerprint `{config.fingerprint}`
(sha256 of the targeted layers' weights and biases as float32).

## Layers

| module | type | matrix | rank | trainable values |
|---|---|---|---|---|
{layers}
{plot}
## Evaluation

{metrics}

## Training

{training}

## Files

- `{WEIGHTS_FILE}`: {texts['files']}
- `{CONFIG_FILE}`: method, base model, fingerprint, layers, counts, training recipe and metrics.

Format `{FORMAT_NAME}` version {FORMAT_VERSION}, written by samdemo (method `{config.method}`:
{layer_type.formula}).
"""


def _metrics_table(metrics: dict) -> str:
    """Markdown table of held-out mIoU (rows: condition, columns: prompt type), if recorded."""
    rows = metrics.get("table") if isinstance(metrics, dict) else None
    if not rows:
        return "No evaluation recorded." if not metrics else "```json\n" + json.dumps(metrics, indent=1) + "\n```"
    columns = [c for c in ("point", "box", "mask") if any(c in r for r in rows)]
    lines = ["| condition | " + " | ".join(f"mIoU {c}" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(f"| {row['condition']} | " + " | ".join(
            f"{row[c]:.3f}" if isinstance(row.get(c), (int, float)) and math.isfinite(row[c]) else "-"
            for c in columns) + " |")
    note = metrics.get("note", "")
    return "\n".join(lines) + (f"\n\n{note}" if note else "")
