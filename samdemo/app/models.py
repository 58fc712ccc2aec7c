"""The models behind the app: the original engine per registry name and its robust copy per
adapter choice, built once per process and shared by every session (their embedding cache is
thread-safe and keyed by the adapter's tag). An adapter trained in the app belongs to the session
that trained it (:class:`TrainedAdapter`, kept in its ``Session``): only that session's choice names
it, and its robust copy is kept for the most recent ``limits.TRAINED_MODELS`` of them."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from samdemo import limits
from samdemo.build import CHECKPOINT_DIR, MODEL_REGISTRY, get_spec
from samdemo.engine import EmbeddingCache, SegmentEngine
from samdemo.errors import ModelUnavailableError, UserError

log = logging.getLogger("samdemo.app")

# Models offered in the picker: the embedded ones, SAM ViT-B/L/H and SAM 2.1 Hiera T/S/B+/L.
APP_MODELS = [name for name in MODEL_REGISTRY
              if name in ("sam-small", "sam2-small") or name.startswith(("sam-vit-", "sam2.1-hiera-"))]
ADAPTER_SHIPPED, ADAPTER_HUB, ADAPTER_NONE, ADAPTER_TRAINED = "shipped", "hub", "none", "trained"
HUB_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
HUB_REVISION_RE = re.compile(r"^[\w.-][\w./-]{0,99}$")


@dataclass(frozen=True)
class TrainedAdapter:
    """An adapter trained in the app by one session: the model it is for, its folder (a server-side
    temporary folder the app made; never a path a user gave) and what it is, in words."""

    model: str
    folder: Path
    description: str


@dataclass(frozen=True)
class AdapterChoice:
    """Which defence the "robust" model uses: the shipped adapter, a Hub repo at a revision, the adapter
    this session trained, or none."""

    kind: str = ADAPTER_SHIPPED
    repo_id: str = ""
    revision: str = ""
    trained: TrainedAdapter | None = None  # kind "trained" only: taken from the session, never from a widget

    @classmethod
    def parse(cls, kind: str | None, repo_id: str | None = "", revision: str | None = "",
              trained: TrainedAdapter | None = None) -> "AdapterChoice":
        """The widgets' choice; ``trained``: the session's trained adapter (for the "trained" kind)."""
        kind = (kind or ADAPTER_NONE).strip().lower()
        if kind not in (ADAPTER_SHIPPED, ADAPTER_HUB, ADAPTER_NONE, ADAPTER_TRAINED):
            raise UserError(f"Unknown adapter choice {limits.quoted(kind)}.")
        if kind == ADAPTER_TRAINED:
            if trained is None:
                raise UserError("No adapter has been trained in this session yet: train one in *Train a robust "
                                "adapter*, or choose the shipped adapter.")
            return cls(kind, trained=trained)
        if kind != ADAPTER_HUB:
            return cls(kind)
        repo_id, revision = check_repo_id(repo_id), (revision or "").strip()
        if revision and (not HUB_REVISION_RE.match(revision) or ".." in revision):
            raise UserError(f"{limits.quoted(revision)} is not a valid revision (a branch, tag or commit hash).")
        return cls(kind, repo_id, revision)

    @classmethod
    def from_spec(cls, spec: str) -> "AdapterChoice":
        """``owner/name[@revision]`` (e.g. ``$SAMDEMO_ADAPTER_REPO``) -> a Hub choice; "" -> the shipped adapter."""
        spec = (spec or "").strip()
        if not spec:
            return cls()
        repo_id, _, revision = spec.partition("@")
        return cls.parse(ADAPTER_HUB, repo_id, revision)

    @property
    def label(self) -> str:
        if self.kind == ADAPTER_TRAINED:
            return f"the adapter trained in this session ({self.trained.description})"
        if self.kind == ADAPTER_HUB:
            return f"{self.repo_id}@{self.revision or 'main'}"
        return {ADAPTER_SHIPPED: "shipped adapter", ADAPTER_NONE: "no adapter"}[self.kind]


@dataclass
class RobustModel:
    engine: SegmentEngine
    adapter: object  # the applied adapter (for its plot and parameter count)
    trainable: int | None
    source: str


def check_repo_id(repo_id: str | None) -> str:
    """``repo_id`` stripped, if it is a Hugging Face Hub repo id (owner/name); UserError otherwise."""
    repo_id = (repo_id or "").strip()
    if not HUB_REPO_RE.match(repo_id) or not _valid_hub_repo_id(repo_id):
        raise UserError(f"{limits.quoted(repo_id)} is not a Hugging Face Hub repo id: write it as owner/name.")
    return repo_id


def _valid_hub_repo_id(repo_id: str) -> bool:
    """The Hub's own rules (huggingface_hub.utils.validate_repo_id: no '--' or '..', no trailing '.', ...)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def model_choices() -> list[tuple[str, str]]:
    """(label, name) for the model picker, with download size and whether the weights are here."""
    choices = []
    for name in APP_MODELS:
        spec = MODEL_REGISTRY[name]
        local = spec.local_file is not None and (CHECKPOINT_DIR / spec.local_file).exists()
        if spec.hub is None:
            where = "embedded" if local else "embedded, weights missing"
        else:
            where = "downloaded" if local or _hub_cached(spec) else f"downloads {spec.download_mb} MB"
        choices.append((f"{name} · {spec.description} · {where}", name))
    return choices


def _hub_cached(spec) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.hub.repo_id, spec.hub.filename, revision=spec.hub.revision)
        return isinstance(found, str)
    except Exception:
        return False


def default_engine_factory(cache: EmbeddingCache, device: str | None = None) -> Callable[[str], SegmentEngine]:
    """Registry models by name (``samdemo.factory.load_engine``) on ``device`` (None: cuda when there is
    one), sharing ``cache``."""
    from samdemo.factory import load_engine

    return lambda name: load_engine(name, device=device, cache=cache)


class ModelManager:
    """Original and robust engines, built once per process and shared by every session.

    ``factory(name) -> SegmentEngine`` builds an original model (default: the registry's weights,
    downloaded on demand, on ``device``). Engines are kept for at most ``max_models`` model names (LRU).
    Shipped adapters are read from ``adapter_root/<model>-adapter/`` (default ``checkpoints/``).
    """

    def __init__(self, factory: Callable[[str], SegmentEngine] | None = None, max_models: int = 2,
                 cache: EmbeddingCache | None = None, adapter_root: Path | None = None, device: str | None = None):
        self.cache = cache if cache is not None else EmbeddingCache(int(limits.EMBEDDING_CACHE_MB * 2**20))
        self.adapter_root = Path(adapter_root) if adapter_root is not None else CHECKPOINT_DIR
        self.factory = factory or default_engine_factory(self.cache, device)
        self.max_models = max_models
        self._engines: dict[str, SegmentEngine] = {}
        self._robust: dict[tuple[str, AdapterChoice], RobustModel | None] = {}
        self._order: list[str] = []
        self._trained_order: list[tuple[str, AdapterChoice]] = []  # most recently used last
        self._lock = threading.Lock()
        self._key_locks: dict[object, threading.Lock] = {}

    def _key_lock(self, key) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _touch(self, name: str) -> None:
        with self._lock:
            if name in self._order:
                self._order.remove(name)
            self._order.append(name)
            while len(self._order) > self.max_models:
                old = self._order.pop(0)
                self._engines.pop(old, None)
                for key in [k for k in self._robust if k[0] == old]:
                    self._robust.pop(key, None)

    def engine(self, name: str) -> SegmentEngine:
        """The original model ``name`` (raises ModelUnavailableError with a readable message)."""
        get_spec(name)  # unknown names fail here, with the list of known ones
        with self._key_lock(("engine", name)):
            engine = self._engines.get(name)
            if engine is None:
                log.info("loading model %s", name)
                engine = self.factory(name)
                for p in engine.model.parameters():
                    p.requires_grad_(False)
                self._engines[name] = engine
        self._touch(name)
        return engine

    def is_loaded(self, name: str) -> bool:
        return name in self._engines

    def robust(self, name: str, choice: AdapterChoice) -> RobustModel | None:
        """The model with its adapter applied (None for "no adapter")."""
        if choice.kind == ADAPTER_NONE:
            return None
        key = (name, choice)
        with self._key_lock(("robust",) + key):
            robust = self._robust.get(key)
            if robust is None:
                robust = self._robust[key] = load_robust(self.engine(name), choice, self.adapter_root)
        if choice.kind == ADAPTER_TRAINED:
            self._keep_recent_trained(key)
        return robust

    def _keep_recent_trained(self, key) -> None:
        """Each trained adapter's robust model is a full copy of its model: keep the ``limits.TRAINED_MODELS``
        most recently used (the others are rebuilt from their folder when their session uses them again)."""
        with self._lock:
            self._trained_order = [k for k in self._trained_order if k != key] + [key]
            while len(self._trained_order) > limits.TRAINED_MODELS:
                self._robust.pop(self._trained_order.pop(0), None)

    def forget(self, trained: TrainedAdapter) -> None:
        """Drop the robust model of ``trained`` (its session trained another one, or ended)."""
        with self._lock:
            for key in [k for k in self._robust if k[1].trained == trained]:
                self._robust.pop(key, None)


def load_robust(engine: SegmentEngine, choice: AdapterChoice, adapter_root: Path = CHECKPOINT_DIR) -> RobustModel:
    """The adapter of ``choice`` on a merged, frozen copy of ``engine`` (``samdemo.factory.robust_copy``),
    with messages that name what the user chose and never a server path."""
    from samdemo.defense import WEIGHTS_FILE, AdapterError
    from samdemo.factory import robust_copy

    if choice.kind == ADAPTER_TRAINED:
        trained = choice.trained
        if trained.model != engine.name:
            raise UserError(f"The adapter trained in this session is for {trained.model}, not {engine.name}: switch "
                            f"back to {trained.model}, train one for {engine.name}, or choose another adapter.")
        if not (trained.folder / WEIGHTS_FILE).is_file():
            raise UserError("The adapter trained in this session is no longer kept on the server (the server keeps "
                            "the most recent ones): train it again, or push it to the Hub next time.")
        source, revision, where = trained.folder, None, "trained in this session"
    elif choice.kind == ADAPTER_SHIPPED:
        folder = Path(adapter_root) / f"{engine.name}-adapter"
        if not folder.is_dir():
            raise UserError(f"No adapter is shipped for {engine.name} (no folder checkpoints/{folder.name}/): "
                            "choose another model, an adapter from the Hub, or none.")
        source, revision, where = folder, None, f"checkpoints/{folder.name}"
    else:
        if Path(choice.repo_id).expanduser().exists():  # the Hub loader also takes local folders
            raise UserError(f"{limits.quoted(choice.repo_id)} names a local path; the app loads adapters only from "
                            "the Hub (or the shipped one).")
        source, revision, where = choice.repo_id, choice.revision or None, f"Hub: {choice.label}"
    try:  # the Hub loader bounds the wait (Hub timeout, cached copy) and the size; its messages name the repo
        robust_engine, adapter = robust_copy(engine, source, revision)
    except AdapterError as error:
        hint = " The shipped adapter and the embedded models still work." if choice.kind == ADAPTER_HUB else ""
        raise UserError(f"Adapter {choice.label} cannot be used with {engine.name}: {error}{hint}") from None
    except ModelUnavailableError as error:
        raise UserError(str(error)) from None
    return RobustModel(robust_engine, adapter, adapter.num_trainable, where)
