"""Texts -> per-text pooled SAE codes and hidden states, one truncated LM forward per batch.

Texts are tokenized once, packed end to end into sequences (or, in a model that cannot keep packed texts apart,
sorted by length and padded) and batched (features.forward.batching); results come back in the input order.

Empty texts (nothing but a BOS after tokenization) are an input error: `extract` raises a
SaefsError (a ValueError) naming their rows before any forward pass, since a pooled vector
of no tokens is not a feature of the text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sae_lens import SAE
from scipy.sparse import csr_matrix, vstack
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from features.core.layers import hook_name
from features.core.pooling import counted_token_mask, hidden_poolings, parse_pooling, pool_codes, pool_hidden
from features.errors import SaefsError
from features.forward.batching import (
    check_sizes,
    length_sorted_batches,
    packed_batches,
    packed_residuals,
    packs_texts,
)
from features.sources.lm import capture_residuals, check_layers, decoder_layers, model_width, right_pad, with_bos
from features.sources.sae import QualityMeter, SaeQuality, check_sae_fits, encode

HiddenKey = tuple[int, str]  # (layer, pooling spec)
SaeKey = tuple[int, str]  # (layer, SAE name)
CodesKey = tuple[int, str, str]  # (layer, SAE name, pooling spec)
SaesByLayer = Mapping[int, Mapping[str, SAE[Any]]]  # layer -> SAE name -> SAE (several widths per layer)
DEFAULT_MAX_CODE_ELEMENTS = 2**26  # tokens x SAE width held at once: 256 MB of fp32 codes
# Padded tokens per CPU batch when no budget is given: 32 texts of 160 tokens (5,120) ran Gemma 3 22% slower than
# batches of 1,024 (their MLP activations outgrow the caches), and short texts run as fast either way.
CPU_TOKENS_PER_BATCH = 1024


class EmptyTexts(SaefsError):
    """Texts with no token besides BOS; `rows` are their positions, so a caller can name each one."""

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows


@dataclass(frozen=True)
class Extracted:
    """Per-text features; row i belongs to the i-th input text."""

    codes: dict[CodesKey, csr_matrix]  # (layer, SAE, pooling) -> [n_texts, d_sae] float32
    hidden: dict[HiddenKey, np.ndarray]  # (layer, "last" | "mean") -> [n_texts, d_model] float32
    quality: dict[SaeKey, SaeQuality]  # (layer, SAE) -> reconstruction and sparsity on these texts' tokens
    n_tokens: np.ndarray  # int64: tokens pooled per text (after truncation; no padding, no BOS unless included)
    truncated: np.ndarray  # bool: the text was cut at max_tokens
    unknown: np.ndarray  # int64: tokens the tokenizer mapped to its unknown token (lost characters)

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


@dataclass(frozen=True)
class Tokenized:
    ids: list[list[int]]  # per text, cut to max_tokens
    truncated: np.ndarray
    unknown: np.ndarray


def extract(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layers: Sequence[int],
    saes: SaesByLayer,
    poolings: Sequence[str],
    *,
    max_tokens: int,
    batch_size: int,
    tokens_per_batch: int | None = None,
    include_bos: bool = False,
    paper_compat: bool = False,
    max_code_elements: int = DEFAULT_MAX_CODE_ELEMENTS,
    meters: Mapping[SaeKey, QualityMeter] | None = None,
    progress: bool = True,
) -> Extracted:
    """Pooled SAE codes (layers with an SAE, every pooling) and pooled hidden states (every layer).

    `layers` are block indices (resid_post; the block input with `paper_compat`); `saes` maps a
    subset of them to named SAEs. The model runs on its own device and dtype, each SAE on its own.
    A batch holds at most `batch_size` sequences (texts, or texts packed end to end) and, with `tokens_per_batch`,
    at most that many tokens, padding included (on a GPU: features.forward.gpu sizes it to the free memory).
    SAE quality (variance explained, L0, dead latents) is measured on the same tokens; pass
    `meters` (see `quality_meters`) to accumulate it over several calls, e.g. one per shard.
    """
    check_request(model, layers, saes, poolings)
    tokenized = tokenize(tokenizer, texts, max_tokens)
    meters = quality_meters(saes) if meters is None else meters
    parts, order = [], []
    for rows, _, residuals, mask in _forward_batches(
        model, tokenizer, tokenized, layers, (batch_size, tokens_per_batch), include_bos, paper_compat, "extract",
        progress,
    ):
        with torch.inference_mode():
            parts.append(pool_batch(residuals, mask, saes, poolings, max_code_elements, meters))
        order.append(rows)
    original_order = np.argsort(np.concatenate(order))  # where each input row sits among the sorted ones
    quality = {key: meter.result() for key, meter in meters.items()}
    return _assemble(parts, original_order, tokenized, quality)


def quality_meters(saes: SaesByLayer) -> dict[SaeKey, QualityMeter]:
    return {(layer, name): QualityMeter(sae.cfg.d_in, sae.cfg.d_sae) for layer, named in saes.items()
            for name, sae in named.items()}


def collect_activations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], layers: Sequence[int],
    **options: Any,
) -> dict[int, Tensor]:
    """Token activations [N, d_model] per layer (counted tokens only, float32 on the CPU), held in memory;
    `options` are those of `activation_batches`."""
    collected: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for batch in activation_batches(model, tokenizer, texts, layers, **options):
        for layer, acts in batch.items():
            collected[layer].append(acts)
    return {layer: torch.cat(parts) for layer, parts in collected.items()}


def activation_batches(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], layers: Sequence[int], *,
    max_tokens: int, **options: Any,
) -> Iterator[dict[int, Tensor]]:
    """Per length-sorted batch, the counted tokens' activations [n, d_model] of each layer (float32, CPU), e.g.
    to train SAEs: stream them to disk (features.stores.activations) or gather them (`collect_activations`);
    `options` are those of `token_batches`."""
    for batch in token_batches(model, tokenizer, tokenize(tokenizer, texts, max_tokens), layers, **options):
        yield batch.residuals


@dataclass(frozen=True)
class TokenBatch:
    """The counted tokens of one batch: which text and position each is, its token id, its activations."""

    texts: np.ndarray  # int64 [n]: the input row of each token
    positions: np.ndarray  # int64 [n]: its index in the text's (truncated) token ids, BOS at 0
    token_ids: np.ndarray  # int64 [n]
    residuals: dict[int, Tensor]  # layer -> [n, d_model] float32, CPU


def token_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokenized: Tokenized,
    layers: Sequence[int],
    *,
    batch_size: int,
    tokens_per_batch: int | None = None,
    include_bos: bool = False,
    paper_compat: bool = False,
    progress: bool = True,
    desc: str = "collect activations",
) -> Iterator[TokenBatch]:
    """Per length-sorted batch of the `tokenize`d texts, the counted tokens with their text, position and id, and
    their activations."""
    check_layers(layers, len(decoder_layers(model)))
    for rows, input_ids, residuals, mask in _forward_batches(
        model, tokenizer, tokenized, layers, (batch_size, tokens_per_batch), include_bos, paper_compat, desc, progress
    ):
        where = mask.nonzero().cpu().numpy()
        yield TokenBatch(rows[where[:, 0]].astype(np.int64), where[:, 1].astype(np.int64),
                         input_ids[mask].cpu().numpy().astype(np.int64),
                         {layer: residual[mask].float().cpu() for layer, residual in residuals.items()})


def _forward_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokenized: Tokenized,
    layers: Sequence[int],
    sizes: tuple[int, int | None],
    include_bos: bool,
    paper_compat: bool,
    desc: str,
    progress: bool,
) -> Iterator[tuple[np.ndarray, Tensor, dict[int, Tensor], Tensor]]:
    """Per batch of at most `sizes` (sequences, tokens; on the CPU CPU_TOKENS_PER_BATCH tokens
    when no budget is given): its input rows, token ids, the captured residuals and the counted-token mask."""
    batch_size, tokens_per_batch = sizes
    if tokens_per_batch is None and model.device.type == "cpu":
        tokens_per_batch = CPU_TOKENS_PER_BATCH
    lengths = [len(ids) for ids in tokenized.ids]
    check_sizes(batch_size, tokens_per_batch)  # before the probe's forward
    if packs_texts(model):
        plan = [(batch.rows, batch) for batch in packed_batches(lengths, batch_size, tokens_per_batch)]
    else:
        plan = [(rows, None) for rows in length_sorted_batches(lengths, batch_size, tokens_per_batch)]
    for rows, packed in tqdm(plan, desc=desc, unit="batch", disable=not progress):
        ids = [tokenized.ids[i] for i in rows]
        input_ids, attention_mask = right_pad(ids, model.device)  # the layout residuals come back in, packed or not
        mask = counted_token_mask(input_ids, attention_mask, tokenizer.bos_token_id, include_bos)
        with torch.inference_mode():
            if packed is None:
                residuals = capture_residuals(model, input_ids, attention_mask, layers, paper_compat=paper_compat)
            else:
                residuals = packed_residuals(model, ids, packed, layers, paper_compat=paper_compat)
        yield rows, input_ids, residuals, mask


@dataclass(frozen=True)
class BatchFeatures:
    """One batch's pooled features (`pool_batch`), rows in the batch's order."""

    codes: dict[CodesKey, csr_matrix]
    hidden: dict[HiddenKey, np.ndarray]
    n_tokens: np.ndarray


def check_request(
    model: PreTrainedModel, layers: Sequence[int], saes: SaesByLayer, poolings: Sequence[str]
) -> None:
    """Every argument error surfaces before tokenization and the first forward pass."""
    check_layers(layers, len(decoder_layers(model)))
    stray = sorted(set(saes) - set(layers))
    if stray:
        raise SaefsError(f"SAEs given for layers {stray} that are not in layers {sorted(layers)}: add them to layers")
    for layer, named in saes.items():
        for sae in named.values():
            check_sae_fits(sae, model_width(model), hook_name(layer))
    for spec in poolings:
        parse_pooling(spec)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int) -> Tokenized:
    """Token ids cut to their first `max_tokens` (BOS included), as right truncation does for causal LMs."""
    if max_tokens < 2:
        raise SaefsError(f"max_tokens must be >= 2 (a BOS and one token), got {max_tokens}")
    if not texts:
        raise SaefsError("no texts to extract: pass at least one")
    full = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    bos_id = tokenizer.bos_token_id
    # Every text starts with BOS: the first position becomes an attention sink with massive activations
    # (SmolLM2's reach 150x the median norm), and pooling must exclude it as it excludes BOS.
    full = [with_bos(ids, bos_id) for ids in full]
    empty = [row for row, ids in enumerate(full) if not ids or ids == [bos_id]]
    if empty:
        raise EmptyTexts(
            f"{len(empty)} text(s) have no tokens besides BOS, at rows {empty[:10]}: "
            "drop or fill empty texts before extraction",
            empty,
        )
    cut = [ids[:max_tokens] for ids in full]
    unk_id = tokenizer.unk_token_id
    return Tokenized(
        ids=cut,
        truncated=np.array([len(ids) > max_tokens for ids in full], dtype=bool),
        unknown=np.array([ids.count(unk_id) if unk_id is not None else 0 for ids in cut], dtype=np.int64),
    )


def pool_batch(
    residuals: Mapping[int, Tensor],
    mask: Tensor,
    saes: SaesByLayer,
    poolings: Sequence[str],
    max_code_elements: int,
    meters: Mapping[SaeKey, QualityMeter],
) -> BatchFeatures:
    """Pool a batch's residuals [B, T, d] over the positions `mask` [B, T] selects (a text's counted tokens, an
    image's image tokens): hidden-state poolings per layer, and each SAE's codes per pooling."""
    rows, positions = mask.nonzero(as_tuple=True)
    n_texts = mask.shape[0]
    n_tokens = torch.bincount(rows, minlength=n_texts).cpu().numpy()
    codes: dict[CodesKey, csr_matrix] = {}
    hidden: dict[HiddenKey, np.ndarray] = {}
    for layer, residual in residuals.items():
        acts = residual[rows, positions]  # counted tokens only: padding never reaches the SAE
        for spec in hidden_poolings():
            hidden[layer, spec] = pool_hidden(acts, rows, n_texts, spec)
        for name, sae in saes.get(layer, {}).items():
            pooled = _encode_and_pool(sae, acts, rows, n_tokens, poolings, max_code_elements, meters[layer, name])
            codes.update({(layer, name, spec): matrix for spec, matrix in pooled.items()})
    return BatchFeatures(codes, hidden, n_tokens)


def _encode_and_pool(
    sae: SAE[Any],
    acts: Tensor,
    rows: Tensor,
    n_tokens: np.ndarray,
    poolings: Sequence[str],
    max_code_elements: int,
    meter: QualityMeter,
) -> dict[str, csr_matrix]:
    """Encode groups of whole texts so that at most `max_code_elements` codes exist at once (1M-wide SAEs)."""
    rows = rows.to(sae.device)
    token_offsets = np.concatenate([[0], np.cumsum(n_tokens)])
    max_group_tokens = max(1, max_code_elements // sae.cfg.d_sae)
    pooled: dict[str, list[csr_matrix]] = {spec: [] for spec in poolings}
    for first, stop in _text_groups(token_offsets, max_group_tokens):
        lo, hi = int(token_offsets[first]), int(token_offsets[stop])
        group_codes = encode(sae, acts[lo:hi])
        meter.update(sae, acts[lo:hi], group_codes)
        for spec in poolings:
            pooled[spec].append(pool_codes(group_codes, rows[lo:hi] - first, stop - first, spec))
    return {spec: vstack(parts, format="csr") for spec, parts in pooled.items()}


def _text_groups(token_offsets: np.ndarray, max_group_tokens: int) -> Iterator[tuple[int, int]]:
    """Consecutive text ranges [first, stop) of at most `max_group_tokens` tokens (one text at least)."""
    n_texts = len(token_offsets) - 1
    first = 0
    while first < n_texts:
        limit = token_offsets[first] + max_group_tokens
        stop = max(first + 1, int(np.searchsorted(token_offsets, limit, side="right")) - 1)
        yield first, stop
        first = stop


def _assemble(
    parts: Sequence[BatchFeatures],
    original_order: np.ndarray,
    tokenized: Tokenized,
    quality: dict[SaeKey, SaeQuality],
) -> Extracted:
    """Stack length-sorted batches and put the rows back in input order."""
    return Extracted(
        codes={key: vstack([p.codes[key] for p in parts], format="csr")[original_order] for key in parts[0].codes},
        hidden={key: np.concatenate([p.hidden[key] for p in parts])[original_order] for key in parts[0].hidden},
        n_tokens=np.concatenate([p.n_tokens for p in parts])[original_order],
        truncated=tokenized.truncated,
        unknown=tokenized.unknown,
        quality=quality,
    )
