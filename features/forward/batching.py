"""How texts are batched for a forward: packed end to end, or sorted by length and padded.

Length-sorted batches keep padding to texts of similar lengths (padding alone halved CPU throughput), but they still
pad (4.5% of hate_hate's tokens under Gemma 3 at 64 tokens), and every batch streams
the decoder's weights through the caches once (about 20 ms on a 2-core Zen 4). Packing the texts of a batch end to
end into sequences as long as its longest text, each text's positions restarting at 0 and no attention mask,
pads almost nothing in fewer batches: transformers then reads the texts' bounds from the position ids and masks
attention across them (`masking_utils.find_packed_sequence_indices`). A model that does not (its own mask code,
positions it computes itself) would let texts see each other, so `packs_texts` checks it on a probe first, once
per model; texts in models that fail it are padded as before.
"""

from __future__ import annotations

import bisect
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from features.errors import SaefsError
from features.sources.lm import capture_residuals, decoder_layers

log = logging.getLogger(__name__)


def check_sizes(batch_size: int, tokens_per_batch: int | None) -> None:
    if batch_size < 1:
        raise SaefsError(f"batch_size must be >= 1, got {batch_size}")
    if tokens_per_batch is not None and tokens_per_batch < 1:
        raise SaefsError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, tokens_per_batch: int | None = None
) -> list[np.ndarray]:
    """Row indices per batch, longest texts first so that an out-of-memory batch fails at once.

    Each batch holds at most `batch_size` texts and, with `tokens_per_batch`, at most that many padded tokens (its
    texts times its first, longest one; one text at least): a fixed text count would fill a GPU's memory with the
    longest texts and leave it mostly idle on the short ones.
    """
    check_sizes(batch_size, tokens_per_batch)
    order = np.argsort(-np.asarray(lengths), kind="stable")
    if tokens_per_batch is None:
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    longest = np.asarray(lengths)[order]
    batches, start = [], 0
    while start < len(order):
        stop = start + min(batch_size, max(1, tokens_per_batch // max(1, int(longest[start]))))
        batches.append(order[start:stop])
        start = stop
    return batches


@dataclass(frozen=True)
class PackedBatch:
    """A batch's texts (input rows), and where each sits among its packed sequences: sequence and first column."""

    rows: np.ndarray  # int64 [n]: input rows, in the order the batch's residuals come back
    sequence: np.ndarray  # int64 [n]: the packed sequence each text is in
    offset: np.ndarray  # int64 [n]: the column of its first token there


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Texts (indices into `lengths`) per sequence of at most `capacity` tokens, longest text first, each into the
    fullest sequence it fits (best-fit decreasing): sequences come out nearly full."""
    if capacity < max(lengths, default=0):
        raise ValueError(f"capacity {capacity} is below the longest text ({max(lengths)} tokens)")
    sequences: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # free tokens -> sequences with that room
    rooms: list[int] = []  # the free-token counts some sequence has, sorted
    for text in np.argsort(-np.asarray(lengths), kind="stable").tolist():
        length = int(lengths[text])
        at = bisect.bisect_left(rooms, length)
        if at == len(rooms):
            sequences.append([])
            sequence, room = len(sequences) - 1, capacity
        else:
            room = rooms[at]
            sequence = by_room[room].pop()
            if not by_room[room]:
                del by_room[room], rooms[at]
        sequences[sequence].append(text)
        left = room - length
        if left not in by_room:
            by_room[left] = []
            bisect.insort(rooms, left)
        by_room[left].append(sequence)
    return sequences


def packed_batches(lengths: Sequence[int], batch_size: int, tokens_per_batch: int | None) -> list[PackedBatch]:
    """The texts packed into sequences as long as the longest text, then batched as texts are
    (`length_sorted_batches`: at most `batch_size` sequences and `tokens_per_batch` tokens a batch)."""
    sequences = pack(lengths, max(lengths))
    filled = [sum(int(lengths[text]) for text in texts) for texts in sequences]
    batches = []
    for chosen in length_sorted_batches(filled, batch_size, tokens_per_batch):
        rows, sequence, offset = [], [], []
        for position, index in enumerate(chosen.tolist()):
            column = 0
            for text in sequences[index]:
                rows.append(text), sequence.append(position), offset.append(column)
                column += int(lengths[text])
        batches.append(PackedBatch(*(np.asarray(values, dtype=np.int64) for values in (rows, sequence, offset))))
    return batches


def packed_residuals(
    model: PreTrainedModel, ids: Sequence[Sequence[int]], batch: PackedBatch, layers: Sequence[int], **options: Any
) -> dict[int, Tensor]:
    """`capture_residuals` of the texts `ids` (a `PackedBatch`'s, in its order) run packed, returned as if they had
    been right-padded: [n, longest, d] per layer, a padded position holding its text's last token."""
    lengths = np.array([len(row) for row in ids])
    filled = np.bincount(batch.sequence, weights=lengths)  # tokens per sequence
    n_sequences, width = len(filled), int(filled.max())
    input_ids = torch.zeros(n_sequences, width, dtype=torch.long)
    # positions restart at each text; the tail after the last one continues it, and causal attention keeps it unseen
    position_ids = torch.arange(width).repeat(n_sequences, 1)
    for row, sequence, offset in zip(ids, batch.sequence.tolist(), batch.offset.tolist(), strict=True):
        input_ids[sequence, offset : offset + len(row)] = torch.tensor(row)
        position_ids[sequence, offset:] = torch.arange(width - offset)
    device = model.device
    residuals = capture_residuals(model, input_ids.to(device), None, layers, position_ids=position_ids.to(device),
                                  **options)
    steps = np.minimum(np.arange(lengths.max()), lengths[:, None] - 1)  # [n, longest]
    sequence_index = torch.from_numpy(batch.sequence[:, None]).to(device)
    column_index = torch.from_numpy(batch.offset[:, None] + steps).to(device)
    return {layer: residual[sequence_index, column_index] for layer, residual in residuals.items()}


_PACKS: weakref.WeakKeyDictionary[PreTrainedModel, bool] = weakref.WeakKeyDictionary()


def packs_texts(model: PreTrainedModel) -> bool:
    """Whether `model` keeps texts packed into one sequence apart: two texts run packed give, at its last block,
    what each gives alone (checked once per model on a probe of token ids)."""
    if model not in _PACKS:
        _PACKS[model] = _packing_probe(model)
    return _PACKS[model]


def _packing_probe(model: PreTrainedModel) -> bool:
    vocab = int(model.config.get_text_config().vocab_size)
    texts = [[(7 * i + 3) % vocab for i in range(5)], [(11 * i + 5) % vocab for i in range(4)]]
    last = len(decoder_layers(model)) - 1
    batch = PackedBatch(np.arange(2), np.zeros(2, dtype=np.int64), np.array([0, len(texts[0])]))  # one sequence
    # other shapes round otherwise: within 1e-3 in fp32, a few bf16 steps in half precision; texts that see each
    # other differ by far more
    tolerance = 1e-3 if model.dtype == torch.float32 else 5e-2
    with torch.inference_mode():
        try:
            packed = packed_residuals(model, texts, batch, [last])[last]
        except TypeError as error:  # a forward without `position_ids` (remote code)
            log.info("%s takes no position ids (%s): its batches are padded", type(model).__name__, error)
            return False
        for row, text in enumerate(texts):
            alone = capture_residuals(model, torch.tensor([text], device=model.device), None, [last])[last][0]
            if not torch.allclose(packed[row, : len(text)].float(), alone.float(), rtol=tolerance,
                                  atol=tolerance * float(alone.abs().max())):
                log.info("%s lets texts packed in one sequence see each other: its batches are padded instead",
                         type(model).__name__)
                return False
    return True
