"""The defense: weight adapters for SAM / SAM 2, the SVD singular-value adapter (Robust SAM) and two baselines.

An adapter replaces the weight W of a few targeted ``nn.Linear`` / ``nn.Conv2d`` layers by a
trainable W' that equals W at initialisation (svd: ``U diag(s_base + delta) V^T``; lora:
``W + B A``; full: ``W + Delta``); everything else stays frozen. Modules, one concept each:

* :mod:`~samdemo.defense.layers`: the maths, one ``AdapterLayer`` class per method.
* :mod:`~samdemo.defense.config`: ``AdapterConfig`` (``adapter_config.json``), target layers, fingerprint.
* :mod:`~samdemo.defense.adapter`: ``Adapter`` attached to a model: apply, merge / unmerge, remove.
* :mod:`~samdemo.defense.files`: adapter folders: validated reading, saving, loading.
* :mod:`~samdemo.defense.card`: the model card text.
* :mod:`~samdemo.defense.fileformat`: the folder format's names and versions.

Hub download / upload is :mod:`samdemo.hub`; the spectra plot is :mod:`samdemo.plots`.
"""

from samdemo.defense.adapter import Adapter, apply_adapter, count_trainable, get_adapter, remove_adapter
from samdemo.defense.card import model_card
from samdemo.defense.config import AdapterConfig, default_target_modules, fingerprint_weights, resolve_targets
from samdemo.defense.fileformat import ADAPTER_FILES, CARD_FILE, CONFIG_FILE, PLOT_FILE, WEIGHTS_FILE
from samdemo.defense.files import AdapterFiles, load_adapter_folder, read_adapter_folder, save_adapter
from samdemo.defense.layers import LAYER_TYPES, METHODS, SVD_SELECTIONS, AdapterLayer, FullLayer, LoRALayer, SVDLayer
from samdemo.errors import AdapterError

__all__ = [
    # layers and methods
    "AdapterLayer", "SVDLayer", "LoRALayer", "FullLayer", "LAYER_TYPES", "METHODS", "SVD_SELECTIONS",
    # configuration and targets
    "AdapterConfig", "default_target_modules", "resolve_targets", "fingerprint_weights",
    # attached adapter
    "Adapter", "apply_adapter", "get_adapter", "remove_adapter", "count_trainable",
    # folders and model card
    "AdapterFiles", "read_adapter_folder", "save_adapter", "load_adapter_folder", "model_card",
    "ADAPTER_FILES", "CONFIG_FILE", "WEIGHTS_FILE", "CARD_FILE", "PLOT_FILE",
    "AdapterError",
]
