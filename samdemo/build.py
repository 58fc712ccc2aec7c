"""Model registry: a model name -> how to build its architecture and where its weights live.

Architectures are data (YAML in ``samdemo/configs`` or the sam2 package's own configs);
this module only turns a spec into an ``nn.Module`` with weights. Weights are read from
``checkpoints/`` when present, else fetched with huggingface_hub. Pickled checkpoints are
always read with ``torch.load(..., weights_only=True)``; our own weights are safetensors.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import samdemo  # noqa: F401  (torchvision compatibility before segment_anything / sam2)
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from samdemo.errors import HubUnreachableError, ModelUnavailableError

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = Path(os.environ.get("SAMDEMO_CHECKPOINTS", REPO_ROOT / "checkpoints"))
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Public mirror of Meta's original SAM v1 .pth files; override to use another copy.
SAM_V1_HUB_REPO = os.environ.get("SAMDEMO_SAM_HUB_REPO", "ybelkada/segment-anything")


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None = None  # a commit hash pins the download; None means the repo's main
    md5: str | None = None  # digest of the file its publisher released: checked before the file is used


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "sam" (segment_anything) or "sam2"
    config: Path  # architecture YAML
    local_file: str | None  # file name looked up in CHECKPOINT_DIR first
    hub: HubFile | None  # where to download it from when it is not local
    download_mb: int  # approximate size of the weights, shown in the UI
    description: str
    # attack settings chosen for this model on validation scenes: {attack: {keyword: value}}, used by the
    # evaluation, the app and ``samdemo attack`` (adapter training keeps each attack's class defaults)
    attack_options: dict = field(default_factory=dict, hash=False)

    @property
    def embedded(self) -> bool:
        """One of the small models trained by samdemo (no download, synthetic training data)."""
        return self.hub is None

    @property
    def suited_for(self) -> str:
        """What images the model segments well, in a user's words (shown by the app)."""
        if self.embedded:
            return ("good at simple synthetic scenes like the bundled scene examples (shapes on plain, textured or "
                    "photo backgrounds, 256 px); it has never seen a photograph, so on photos expect rough, partial "
                    "or empty masks")
        return "trained by Meta on 11 M photographs (SA-1B): good at photos and most natural images"


def _sam2_config(name: str) -> Path:
    import sam2

    return Path(sam2.__path__[0]) / "configs" / name


def _registry() -> dict[str, ModelSpec]:
    specs = [
        ModelSpec("sam-small", "sam", CONFIG_DIR / "sam_small.yaml", "sam-small/model.safetensors", None, 31,
                  "Embedded small SAM v1 (ViT, 256 px), trained by samdemo on procedural scenes"),
        # grid 8: the cross-prompt pool's point grid chosen on validation scenes (docs/METHOD.md, "cross-prompt
        # diagnosis"); on sam-small's scenes grid 8 is weaker than the class default 4
        ModelSpec("sam2-small", "sam2", CONFIG_DIR / "sam2_small.yaml", "sam2-small/model.safetensors", None, 30,
                  "Embedded small SAM 2 (Hiera, 256 px), trained by samdemo on procedural scenes",
                  attack_options={"cross-prompt": {"grid": 8}}),
    ]
    # Meta's MD5s of its SAM releases (their file names carry the first six digits): whatever mirror
    # serves the file, it is used only if it is Meta's file, byte for byte.
    for size, file, mb, md5 in [("b", "sam_vit_b_01ec64.pth", 375, "01ec64d29a2fca3f0661936605ae66f8"),
                                ("l", "sam_vit_l_0b3195.pth", 1250, "0b3195507c641ddb6910d2bb5adee89c"),
                                ("h", "sam_vit_h_4b8939.pth", 2560, "4b8939a88964f0f4ff5f5b2642c598a6")]:
        specs.append(ModelSpec(f"sam-vit-{size}", "sam", CONFIG_DIR / f"sam_vit_{size}.yaml", file,
                               HubFile(SAM_V1_HUB_REPO, f"checkpoints/{file}", md5=md5), mb,
                               f"SAM ViT-{size.upper()} (Meta, original weights)"))
    for version, folder in [("2", "sam2"), ("2.1", "sam2.1")]:
        for size, short, mb in [("tiny", "t", 156), ("small", "s", 184), ("base-plus", "b+", 324), ("large", "l", 898)]:
            file = f"{folder.replace('.', '.')}_hiera_{size.replace('-', '_')}.pt"
            specs.append(ModelSpec(f"sam{version}-hiera-{size}", "sam2", _sam2_config(f"{folder}/{folder}_hiera_{short}.yaml"),
                                   file, HubFile(f"facebook/sam{version}-hiera-{size}", file), mb,
                                   f"SAM {version} Hiera-{size} (Meta)"))
    return {spec.name: spec for spec in specs}


MODEL_REGISTRY: dict[str, ModelSpec] = _registry()
DEFAULT_MODEL = "sam-small"


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_REGISTRY:
        raise ModelUnavailableError(f"Unknown model {name!r}. Known models: {', '.join(MODEL_REGISTRY)}.")
    return MODEL_REGISTRY[name]


def attack_options(model: str, attack: str) -> dict:
    """The keyword options of ``attack`` chosen for ``model`` (``ModelSpec.attack_options``; {} for an attack without
    any, or a model outside the registry such as a test's tiny architecture)."""
    spec = MODEL_REGISTRY.get(model)
    return dict(spec.attack_options.get(attack, {})) if spec is not None else {}


def build_architecture(config: Path | str) -> tuple[torch.nn.Module, str]:
    """Random-init model from an architecture YAML. Returns (model, family)."""
    cfg = OmegaConf.load(config)
    family = cfg.get("family", "sam2")  # the sam2 package's own configs carry no family key
    if family == "sam":
        return _build_sam_v1(cfg), "sam"
    from hydra.utils import instantiate

    return instantiate(cfg.model, _recursive_=True), "sam2"


def _build_sam_v1(cfg) -> torch.nn.Module:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    # patch_size: 16 in Meta's models; 8 gives a 4x finer image embedding at the same input size
    enc, dec, image_size = cfg.encoder, cfg.decoder, cfg.image_size
    patch = enc.get("patch_size", 16)
    dim = enc.out_chans  # SAM ties encoder out_chans = prompt embedding dim = decoder width
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=patch, embed_dim=enc.embed_dim, depth=enc.depth,
            num_heads=enc.num_heads, mlp_ratio=4, out_chans=dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=enc.window_size, global_attn_indexes=tuple(enc.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=dec.transformer_depth, embedding_dim=dim,
                                          mlp_dim=dec.mlp_dim, num_heads=dec.num_heads),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors, or from a .pt/.pth with ``weights_only=True`` (no code runs)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # truncated or not safetensors at all
            raise ModelUnavailableError(f"{path} cannot be read as safetensors ({type(error).__name__}: {error}); "
                                        "the file is truncated or corrupt.") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle payloads and corrupt files both end here
        raise ModelUnavailableError(
            f"{path} is not a plain tensor checkpoint (refused by torch.load(weights_only=True): "
            f"{type(error).__name__}). Only trusted weight files can be loaded."
        ) from None
    return state["model"] if isinstance(state, dict) and "model" in state else state


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files whose digest matched


def verify_digest(path: Path, md5: str | None, name: str) -> Path:
    """``path`` if its MD5 is ``md5`` (or no digest is known); else ModelUnavailableError. Checked once
    per file and process (hashing a 2.5 GB checkpoint takes seconds)."""
    if md5 is None:
        return path
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return path
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**24), b""):
            digest.update(block)
    if digest.hexdigest() != md5:
        raise ModelUnavailableError(
            f"Model {name!r}: {path} is not the published checkpoint (MD5 {digest.hexdigest()}, expected {md5}); "
            "it is corrupt, truncated or another file. Delete it to download it again.")
    _VERIFIED.add(key)
    return path


def locate_weights(spec: ModelSpec) -> Path:
    """Local file in CHECKPOINT_DIR, else the Hub download (cached by huggingface_hub); a file with a
    published digest is checked against it."""
    local = CHECKPOINT_DIR / spec.local_file if spec.local_file else None
    md5 = spec.hub.md5 if spec.hub else None
    if local is not None and local.exists():
        return verify_digest(local, md5, spec.name)
    if spec.hub is None:
        raise ModelUnavailableError(f"Model {spec.name!r}: weights file {local} is missing from this checkout.")
    from huggingface_hub import hf_hub_download

    try:
        hub_file_size(spec.hub.repo_id, spec.hub.filename, spec.hub.revision)
        unreachable = None
    except HubUnreachableError as error:
        unreachable = str(error)
    try:  # with the Hub unreachable, a copy in the local cache still loads
        path = Path(hf_hub_download(spec.hub.repo_id, spec.hub.filename, revision=spec.hub.revision,
                                    local_files_only=unreachable is not None))
    except Exception as error:
        raise ModelUnavailableError(
            f"Model {spec.name!r} needs {spec.hub.filename} from the Hugging Face Hub repo {spec.hub.repo_id} "
            f"(about {spec.download_mb} MB) and could not get it ({unreachable or type(error).__name__}). Connect "
            f"to the internet once, or put the file at {local}."
        ) from None
    return verify_digest(path, md5, spec.name)


def hub_file_size(repo_id: str, filename: str, revision: str | None = None) -> int | None:
    """The size of ``filename`` on the Hub in bytes, asked with one HEAD request and a short timeout
    (``limits.HUB_TIMEOUT_S``) before a download; HubUnreachableError when no answer comes. None when
    offline mode is on, or when the Hub answered with an error (not found, gated...): the download
    itself reports that precisely.

    Why: on a refused connection huggingface_hub retries for about 25 s, and on a Hub that accepts
    connections but does not answer it waits up to 60 s per try, which would hold a model load (and
    the app's queue) for minutes.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    from samdemo import limits

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=constants.ENDPOINT)
        metadata = get_hf_file_metadata(url, timeout=limits.HUB_TIMEOUT_S)
    except HfHubHTTPError:
        return None
    except Exception as error:  # connection refused, timeouts, DNS: httpx's TransportError and kin
        raise HubUnreachableError(f"the Hugging Face Hub at {constants.ENDPOINT} is unreachable (no answer within "
                                  f"{limits.HUB_TIMEOUT_S:g} s: {type(error).__name__})") from None
    return metadata.size


def load_model(name: str, device: str | torch.device | None = None, random_init: bool = False) -> "torch.nn.Module":
    """Build model ``name`` with its weights (or random weights), in eval mode on ``device``."""
    spec = get_spec(name)
    # weights first: a missing download or a refused file fails before a large model is allocated
    state = None if random_init else read_state_dict(locate_weights(spec))
    model, _ = build_architecture(spec.config)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelUnavailableError(
                f"Weights for {name!r} do not fit its architecture: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
            )
    return model.to(device or default_device()).eval()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
