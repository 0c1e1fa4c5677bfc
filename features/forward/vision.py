"""Images -> SAE codes of a vision-language model's language-model residual stream at the image tokens.

The paper's cross-modal setup (PAPER.md §2.2, §6.3): the prompt is the processor's image token and no text, so
the language model reads the image tokens (and, for PaliGemma, BOS and a newline); the residual stream after
block L (`blocks.L.hook_resid_post`, captured as the text path captures it: features.sources.lm) is kept at the
image-token positions only (input_ids == the config's image token id), encoded with an SAE and pooled with the
project's poolings. Two dense baselines come from the same forward: the vision tower's output averaged over its
patches, and the residual itself averaged over the image tokens.

The vision tower runs once per batch (`get_image_features`); its output is handed to the language model's
forward (`mm_encoder_outputs`), which stops after the deepest requested block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse import csr_matrix, vstack
from tqdm.auto import tqdm
from transformers import PreTrainedModel, ProcessorMixin

from features.errors import SaefsError
from features.forward.extract import (
    DEFAULT_MAX_CODE_ELEMENTS,
    BatchFeatures,
    CodesKey,
    HiddenKey,
    SaeKey,
    SaesByLayer,
    check_request,
    pool_batch,
    quality_meters,
)
from features.sources.images import decode
from features.sources.lm import capture_residuals
from features.sources.sae import SaeQuality

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFeatures:
    """Per-image features; row i belongs to the i-th input image."""

    codes: dict[CodesKey, csr_matrix]  # (layer, SAE name, pooling) -> [n_images, d_sae] float32
    hidden: dict[HiddenKey, np.ndarray]  # (layer, "mean" | "last") -> residual pooled over the image tokens
    vision: np.ndarray  # [n_images, d_vision]: the vision tower's output, mean over its patches
    image_tokens: np.ndarray  # int64: image-token positions pooled per image
    quality: dict[SaeKey, SaeQuality]  # each SAE on these image tokens (a text SAE applied zero-shot)


def image_token_id(model: PreTrainedModel) -> int:
    """The id whose positions hold the image, refused for a model that does not read images as PaliGemma and LLaVA
    do (image tokens in its inputs, features from `get_image_features`)."""
    token = getattr(model.config, "image_token_id", None)
    if token is None or not callable(getattr(model, "get_image_features", None)):
        raise SaefsError(f"{type(model).__name__}: no image_token_id in its config or no get_image_features, so its "
                         "image-token positions cannot be found; use a PaliGemma or LLaVA-style model")
    return int(token)


def extract_images(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence[bytes],
    layers: Sequence[int],
    saes: SaesByLayer,
    poolings: Sequence[str],
    *,
    batch_size: int,
    paper_compat: bool = False,
    max_code_elements: int = DEFAULT_MAX_CODE_ELEMENTS,
    name: str = "",
    progress: bool = True,
) -> ImageFeatures:
    """Pooled SAE codes (layers with an SAE, every pooling), pooled residuals (every layer) and the vision tower's
    mean output of encoded images, from one forward per batch; `name` labels errors and logs."""
    check_request(model, layers, saes, poolings)
    if batch_size < 1 or not images:
        raise SaefsError(f"{name or 'extract_images'}: needs images and batch_size >= 1 (got {len(images)} images, "
                         f"batch_size {batch_size})")
    token, prompt = image_token_id(model), getattr(processor, "image_token", "<image>")
    meters = quality_meters(saes)
    parts: list[BatchFeatures] = []
    towers: list[np.ndarray] = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"images {name}".strip(), unit="batch", disable=not progress):
        batch = [decode(data) for data in images[start : start + batch_size]]
        inputs = processor(images=batch, text=[prompt] * len(batch), return_tensors="pt", padding=True)
        with torch.inference_mode():
            residuals, mask, tower = _forward(model, inputs, layers, token, paper_compat, name or type(model).__name__)
            parts.append(pool_batch(residuals, mask, saes, poolings, max_code_elements, meters))
        towers.append(tower)
    features = ImageFeatures(
        codes={key: vstack([p.codes[key] for p in parts], format="csr") for key in parts[0].codes},
        hidden={key: np.concatenate([p.hidden[key] for p in parts]) for key in parts[0].hidden},
        vision=np.concatenate(towers), image_tokens=np.concatenate([p.n_tokens for p in parts]).astype(np.int64),
        quality={key: meter.result() for key, meter in meters.items()})
    log.info("%s: %d images, %d image tokens each, layers %s", name, len(images), int(features.image_tokens[0]),
             list(layers))
    return features


def _forward(model: PreTrainedModel, inputs: Mapping[str, Any], layers: Sequence[int], token: int,
             paper_compat: bool, name: str) -> tuple[dict[int, torch.Tensor], torch.Tensor, np.ndarray]:
    """One batch: the residuals at `layers`, the image-token mask [B, T] and the vision tower's mean output; the
    image tokens are checked against the tower's patch features before the language model runs."""
    input_ids = inputs["input_ids"].to(model.device)
    mask = input_ids == token
    if not mask.any():
        raise SaefsError(f"{name}: the processor's inputs hold no image token (the config's image_token_id is "
                         f"{token}; the prompt became ids {input_ids[0, :12].tolist()}...): the model's config and "
                         "its processor disagree on the image token; use the processor saved with the model")
    get_image_features: Any = model.get_image_features  # checked by image_token_id
    image = get_image_features(pixel_values=inputs["pixel_values"].to(model.device, model.dtype))
    patches = [len(features) for features in image.pooler_output]  # a [B, n, d] tensor or a list of [n, d]
    counts = mask.sum(dim=1).tolist()
    if counts != patches:
        raise SaefsError(f"{name}: {sorted(set(counts))} image-token positions per image, but the vision tower gives "
                         f"{sorted(set(patches))} patch features: the processor's image_seq_length (or patch size) "
                         "does not fit the vision tower's; use the processor saved with the model")
    # the tower's positions that become image tokens (LLaVA's CLIP drops its class position)
    tower = image.last_hidden_state[:, -patches[0]:].float().mean(dim=1).cpu().numpy()
    extra = {key: value.to(model.device) for key, value in inputs.items()
             if key not in ("input_ids", "attention_mask", "pixel_values", "labels")}  # PaliGemma's token types:
    # its image-and-prompt prefix attends both ways
    residuals = capture_residuals(model, input_ids, inputs["attention_mask"].to(model.device), layers,
                                  paper_compat=paper_compat, mm_encoder_outputs={"image": image}, **extra)
    return residuals, mask, tower
