"""One differentiable interface over SAM (segment_anything) and SAM 2 (sam2) image models.

``SamPredictor`` and ``SAM2ImagePredictor`` run under ``torch.no_grad`` and resize through
PIL, so they cannot be attacked. :class:`SegmentEngine` calls the models' encoder, prompt
encoder and mask decoder itself and keeps gradients down to the pixels:

* :meth:`SegmentEngine.embed`: images ``B x 3 x H x W`` float in [0, 1] -> :class:`ImageFeatures`.
  SAM: resize the longest side to ``S`` (the model's input size), normalise, pad bottom/right
  to ``S x S``. SAM 2: resize to ``S x S``, normalise. All in torch, differentiable.
* :meth:`SegmentEngine.decode`: features + prompts (original-image frame, see ``prompts.py``)
  -> :class:`Prediction` with logits at the original resolution. Prompts that share a structure
  (number of points, box or not, mask or not) go through the decoder as one batch.

Frames: ``H x W`` original image; ``S x S`` model input; ``h x w = S/p`` image embedding (patch
``p`` = 16 for Meta's models); low-resolution logits are ``4h x 4w`` (256 x 256 for the 1024-px models).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from samdemo.prompts import MASK_PROMPT_LOGIT, Prompt
from samdemo.errors import PromptError

SAM_PIXEL_MEAN = (0.485, 0.456, 0.406)  # both families normalise with ImageNet statistics
SAM_PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageFeatures:
    """Image features of a batch of same-size images.

    image_embed: B x C x h x w (SAM 2: ``no_mem_embed`` already added, as its image predictor does).
    high_res: SAM 2 only, (B x C/8 x 4h x 4w, B x C/4 x 2h x 2w); empty for SAM.
    orig_hw: (H, W) of the original images; input_hw: their size after resizing, before padding.
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...]
    orig_hw: tuple[int, int]
    input_hw: tuple[int, int]

    def select(self, index: int) -> "ImageFeatures":
        return ImageFeatures(self.image_embed[index:index + 1], tuple(f[index:index + 1] for f in self.high_res),
                             self.orig_hw, self.input_hw)

    def detach(self) -> "ImageFeatures":
        return ImageFeatures(self.image_embed.detach(), tuple(f.detach() for f in self.high_res),
                             self.orig_hw, self.input_hw)


@dataclass
class Prediction:
    """Decoder outputs for P prompts against one image.

    low_res_all: P x 4 x 4h x 4w logits of all four mask tokens (token 0 is the single-mask
    output, tokens 1-3 the multimask outputs); iou_all: P x 4 predicted IoU.
    choice: P, the token SAM's rule picks: the best predicted IoU among 1-3 for a lone point,
    token 0 otherwise (SAM 2: its stability fallback between 0 and the best of 1-3).
    logits: P x H x W logits of the chosen mask at the original resolution (> 0 is foreground);
    None when decoded with ``full_resolution=False``.
    """

    low_res_all: torch.Tensor
    iou_all: torch.Tensor
    choice: torch.Tensor
    logits: torch.Tensor | None

    @property
    def masks(self) -> torch.Tensor:
        return self.logits > 0

    @property
    def iou_pred(self) -> torch.Tensor:
        return self.iou_all.gather(1, self.choice[:, None])[:, 0]

    @property
    def low_res_logits(self) -> torch.Tensor:
        """P x 1 x 4h x 4w logits of the chosen mask, usable as a mask prompt."""
        index = self.choice[:, None, None, None].expand(-1, 1, *self.low_res_all.shape[-2:])
        return self.low_res_all.gather(1, index)


class SegmentEngine:
    """A SAM or SAM 2 model behind ``embed`` and ``decode``. ``family`` is "sam" or "sam2"."""

    def __init__(self, model: torch.nn.Module, family: str, name: str = "custom",
                 autocast_dtype: torch.dtype | None = None, cache: "EmbeddingCache | None" = None):
        if family not in ("sam", "sam2"):
            raise ValueError(f"family must be 'sam' or 'sam2', got {family!r}")
        self.model, self.family, self.name = model, family, name
        self.autocast_dtype = autocast_dtype  # bf16/fp16 on CUDA only; None keeps fp32
        self.adapter_tag = ""  # set by adapters, so that cached embeddings never mix weights
        self.cache = cache if cache is not None else EmbeddingCache()
        if family == "sam":
            self.image_size = model.image_encoder.img_size
            self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder
        else:
            self.image_size = model.image_size
            self.prompt_encoder, self.mask_decoder = model.sam_prompt_encoder, model.sam_mask_decoder
        mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
        self._mean, self._std = mean, std

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def identity(self) -> str:
        return f"{self.name}|{self.adapter_tag}"

    # ------------------------------------------------------------------ image side
    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """Size of the resized image inside the S x S model input."""
        h, w = orig_hw
        if self.family == "sam2":
            return self.image_size, self.image_size
        scale = self.image_size / max(h, w)  # segment_anything ResizeLongestSide.get_preprocess_shape
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> normalised, resized, padded B x 3 x S x S model input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be B x 3 x H x W, got {tuple(images.shape)}")
        target = self.input_hw(tuple(images.shape[-2:]))
        x = images
        if tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self._mean.to(x)) / self._std.to(x)
        pad_h, pad_w = self.image_size - target[0], self.image_size - target[1]
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def embed(self, images: torch.Tensor) -> ImageFeatures:
        """Differentiable image features of B x 3 x H x W images in [0, 1]."""
        images = images.to(self.device, torch.float32)
        x = self.preprocess(images)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self._autocast_enabled()):
            if self.family == "sam":
                embed, high_res = self.model.image_encoder(x), ()
            else:
                embed, high_res = self._embed_sam2(x)
        return ImageFeatures(embed.float(), tuple(f.float() for f in high_res),
                             tuple(images.shape[-2:]), self.input_hw(tuple(images.shape[-2:])))

    def _autocast_enabled(self) -> bool:
        return self.autocast_dtype is not None and self.device.type == "cuda"

    def _embed_sam2(self, x: torch.Tensor):
        # As SAM2ImagePredictor.set_image_batch, without no_grad.
        model = self.model
        backbone_out = model.forward_image(x)
        _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        feats = [feat.permute(1, 2, 0).reshape(x.shape[0], -1, *size) for feat, size in zip(vision_feats, feat_sizes)]
        return feats[-1], tuple(feats[:-1])

    # ------------------------------------------------------------------ prompt side
    def _coords_to_input(self, coords: torch.Tensor, orig_hw, input_hw) -> torch.Tensor:
        h, w = orig_hw
        if self.family == "sam":
            scale = torch.tensor([input_hw[1] / w, input_hw[0] / h], dtype=coords.dtype, device=coords.device)
        else:
            scale = torch.tensor([self.image_size / w, self.image_size / h], dtype=coords.dtype, device=coords.device)
        return coords * scale

    def mask_to_low_res(self, mask: torch.Tensor, orig_hw, input_hw) -> torch.Tensor:
        """P x H x W bool/float mask (original frame) -> P x 1 x 4h x 4w logits (+-MASK_PROMPT_LOGIT)."""
        low = tuple(self.prompt_encoder.mask_input_size)  # 4h x 4w: S/4 with 16-px patches, S/2 with 8-px ones
        m = mask.float()[:, None]
        if self.family == "sam":
            m = F.interpolate(m, size=input_hw, mode="bilinear", align_corners=False, antialias=True)
            m = F.pad(m, (0, self.image_size - input_hw[1], 0, self.image_size - input_hw[0]))
        m = F.interpolate(m, size=low, mode="bilinear", align_corners=False, antialias=True)
        return (m * 2 - 1) * MASK_PROMPT_LOGIT

    def _encode_group(self, group: list[Prompt], features: ImageFeatures):
        """Sparse and dense prompt embeddings for prompts of one structure."""
        device = self.device
        first = group[0]
        points = labels = boxes = masks = None
        if len(first.points):
            coords = torch.as_tensor(np.stack([p.points for p in group]), dtype=torch.float32, device=device)
            points = self._coords_to_input(coords, features.orig_hw, features.input_hw)
            labels = torch.as_tensor(np.stack([p.labels for p in group]), dtype=torch.int64, device=device)
        if first.box is not None:
            raw = torch.as_tensor(np.stack([p.box for p in group]), dtype=torch.float32, device=device)
            boxes = self._coords_to_input(raw.view(-1, 2, 2), features.orig_hw, features.input_hw).view(-1, 4)
        if first.mask is not None:
            if first.mask_is_logits:
                masks = torch.stack([torch.as_tensor(p.mask, dtype=torch.float32) for p in group]).to(device)
            else:
                stacked = torch.as_tensor(np.stack([p.mask for p in group]), device=device)
                masks = self.mask_to_low_res(stacked, features.orig_hw, features.input_hw)
        if self.family == "sam":
            return self.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes, masks=masks)
        # SAM 2 takes a box as two corner points labelled 2 and 3, placed before the clicks.
        if boxes is not None:
            corners = boxes.view(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], device=device).expand(len(group), 2)
            points = corners if points is None else torch.cat([corners, points], dim=1)
            labels = corner_labels if labels is None else torch.cat([corner_labels, labels], dim=1)
        return self.prompt_encoder(points=None if points is None else (points, labels.int()), boxes=None, masks=masks)

    def decode(self, features: ImageFeatures, prompts: Sequence[Prompt], image_index: int = 0,
               validate: bool = True, full_resolution: bool = True) -> Prediction:
        """Masks for ``prompts`` on image ``image_index`` of ``features``; differentiable.

        ``full_resolution=False`` skips upsampling the chosen mask (``Prediction.logits`` is then
        None): training losses that work on ``low_res_all`` need only that."""
        if len(prompts) == 0:
            raise PromptError("No prompt given.")
        if validate:
            for prompt in prompts:
                prompt.validate(features.orig_hw)
        feats = features.select(image_index)
        groups: dict[tuple, list[int]] = {}
        for i, prompt in enumerate(prompts):
            key = (len(prompt.points), prompt.box is not None, prompt.mask is not None)
            groups.setdefault(key, []).append(i)
        low_res = [None] * len(prompts)
        iou = [None] * len(prompts)
        image_pe = self.prompt_encoder.get_dense_pe()
        for indices in groups.values():
            group = [prompts[i] for i in indices]
            sparse, dense = self._encode_group(group, feats)
            if self.family == "sam":
                masks, scores = self.mask_decoder.predict_masks(
                    image_embeddings=feats.image_embed, image_pe=image_pe,
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
            else:
                masks, scores, _, _ = self.mask_decoder.predict_masks(
                    image_embeddings=feats.image_embed, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense, repeat_image=True, high_res_features=list(feats.high_res))
            for row, i in enumerate(indices):
                low_res[i], iou[i] = masks[row], scores[row]
        low_res_all, iou_all = torch.stack(low_res), torch.stack(iou)
        choice = self._choose(low_res_all, iou_all, prompts)
        index = choice[:, None, None, None].expand(-1, 1, *low_res_all.shape[-2:])
        logits = (self.postprocess(low_res_all.gather(1, index), features.orig_hw, features.input_hw)[:, 0]
                  if full_resolution else None)
        return Prediction(low_res_all, iou_all, choice, logits)

    def _choose(self, low_res_all, iou_all, prompts) -> torch.Tensor:
        best_multi = iou_all[:, 1:].argmax(dim=1) + 1
        single_point = torch.tensor([p.is_single_point for p in prompts], device=iou_all.device)
        single = torch.zeros_like(best_multi)
        if self.family == "sam2" and self.mask_decoder.dynamic_multimask_via_stability:
            # SAM 2 answers a non-ambiguous prompt with token 0 unless it is unstable (MaskDecoder._dynamic_multimask_via_stability).
            decoder = self.mask_decoder
            stability = decoder._get_stability_scores(low_res_all[:, 0:1])[:, 0]
            single = torch.where(stability >= decoder.dynamic_multimask_stability_thresh, single, best_multi)
        return torch.where(single_point, best_multi, single)

    def postprocess(self, low_res: torch.Tensor, orig_hw, input_hw) -> torch.Tensor:
        """P x M x 4h x 4w logits -> P x M x H x W logits in the original frame."""
        if self.family == "sam":
            x = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
            x = x[..., : input_hw[0], : input_hw[1]]
            return F.interpolate(x, orig_hw, mode="bilinear", align_corners=False)
        return F.interpolate(low_res, orig_hw, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ convenience
    def embed_image(self, image: np.ndarray) -> ImageFeatures:
        """Features of one H x W x 3 uint8 image, no gradient, through the embedding cache."""
        key = (self.identity, image_digest(image))
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with torch.no_grad():
            features = self.embed(image_to_tensor(image))
        self.cache.put(key, features)
        return features

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt]) -> Prediction:
        """No-gradient masks for prompts on one H x W x 3 uint8 image."""
        features = self.embed_image(image)
        with torch.no_grad():
            return self.decode(features, prompts)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


def tensor_to_image(images: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W (or 3 x H x W) in [0, 1] -> H x W x 3 uint8, rounded."""
    x = images[0] if images.ndim == 4 else images
    return (x.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class EmbeddingCache:
    """Thread-safe LRU of ImageFeatures keyed by (model identity, image digest), bounded in bytes."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(features: ImageFeatures) -> int:
        return sum(t.numel() * t.element_size() for t in (features.image_embed, *features.high_res))

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, features: ImageFeatures) -> None:
        size = self._size(features)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._bytes -= self._size(self._items.pop(key))
            self._items[key] = features
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= self._size(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
