"""Names of the adapter folder format: format id and versions, file names, SVD tensor names.

An adapter folder holds ``adapter_config.json`` (:class:`samdemo.defense.config.AdapterConfig`),
``adapter.safetensors`` (per layer ``<module>.<tensor>``, float32), a ``README.md`` model card
and optionally ``singular_values.png`` and ``training_log.json``.

Format ``samdemo-svd-adapter`` (the name predates the baselines): version 2 added ``method``;
version-1 files (no ``method``) are SVD adapters and load unchanged.
"""

from __future__ import annotations

FORMAT_NAME = "samdemo-svd-adapter"
FORMAT_VERSION = 2  # 2: "method" (svd, lora, full); 1: SVD only, no "method" key
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"
PLOT_FILE = "singular_values.png"
LOG_FILE = "training_log.json"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, PLOT_FILE, LOG_FILE)
# An SVD layer's tensors in adapter.safetensors: its k adapted values s (shape (k,)) and their s_base (k,).
S_KEY, S_BASE_KEY = "singular_values", "base_singular_values"
