from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from features.forward.batching import pack, packed_batches, packed_residuals, packs_texts
from features.forward.extract import extract, tokenize
from features.sources.lm import capture_residuals
from tests.features.tiny import HIDDEN, MODEL_KINDS, make_jumprelu_sae, make_model, make_texts, make_tokenizer


def test_packing_fills_each_sequence_best_first() -> None:
    lengths = [5, 3, 2, 4, 1, 5]
    assert pack(lengths, 5) == [[0], [5], [3, 4], [1, 2]]
    assert pack([2, 2, 2], 6) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="capacity 4 is below the longest text"):
        pack(lengths, 4)


def test_packed_batches_place_every_text_once_within_the_sizes() -> None:
    lengths = np.random.default_rng(0).integers(1, 40, size=300).tolist()
    batches = packed_batches(lengths, batch_size=8, tokens_per_batch=200)
    rows = np.concatenate([batch.rows for batch in batches])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    padded = 0
    for batch in batches:
        sequences = np.unique(batch.sequence)
        assert len(sequences) <= 8
        filled = [sum(lengths[row] for row in batch.rows[batch.sequence == s]) for s in sequences]
        assert max(filled) <= max(lengths)  # no sequence outgrows the longest text
        assert len(sequences) * max(filled) <= 200
        padded += len(sequences) * max(filled)
        for s in sequences:  # texts sit end to end from column 0
            within = batch.sequence == s
            ends = np.cumsum([lengths[row] for row in batch.rows[within]])
            assert batch.offset[within].tolist() == [0, *ends[:-1].tolist()]
    # packed: 6,331 tokens in 33 batches; length-sorted batches of the same sizes: 6,396 in 45
    assert padded <= 1.01 * sum(lengths) and len(batches) <= 35


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_packed_texts_run_as_each_alone(kind: str) -> None:
    """Texts longer than gemma2's and gemma3's sliding window (4), packed, give each text's own residuals."""
    model, tokenizer = make_model(kind), make_tokenizer()
    ids = tokenize(tokenizer, make_texts([9, 3, 5, 1, 6, 2]), max_tokens=10).ids
    batch = packed_batches([len(row) for row in ids], batch_size=10, tokens_per_batch=None)[0]
    assert len(np.unique(batch.sequence)) < len(ids)  # some sequence holds several texts
    texts = [ids[row] for row in batch.rows]
    packed = packed_residuals(model, texts, batch, [0, 2])
    for i, text in enumerate(texts):
        alone = capture_residuals(model, torch.tensor([text]), None, [0, 2])
        for layer in (0, 2):
            np.testing.assert_allclose(packed[layer][i, : len(text)], alone[layer][0], rtol=1e-5, atol=1e-5)
    assert packs_texts(model)


def test_a_model_that_mixes_packed_texts_is_padded_instead() -> None:
    """A model that computes positions itself (here: it drops the position ids) would let packed texts see each
    other: it fails the probe, and its batches are padded, with the features of the same model that packs."""
    tokenizer, texts = make_tokenizer(), make_texts([3, 12, 1, 7, 5, 9, 2])
    sae = {1: {"s": make_jumprelu_sae(HIDDEN, 64)}}
    settings: dict[str, Any] = {"max_tokens": 10, "batch_size": 3, "progress": False}
    packing = make_model("llama")
    mixing = make_model("llama")  # the same weights
    forward = mixing.forward
    mixing.forward = lambda *args, position_ids=None, **kwargs: forward(*args, **kwargs)
    assert packs_texts(packing) and not packs_texts(mixing)
    packed = extract(packing, tokenizer, texts, [0, 1], sae, ["sum"], **settings)
    padded = extract(mixing, tokenizer, texts, [0, 1], sae, ["sum"], **settings)
    for key, matrix in packed.codes.items():
        np.testing.assert_allclose(padded.codes[key].toarray(), matrix.toarray(), rtol=1e-4, atol=1e-5)
    for key, hidden in packed.hidden.items():
        np.testing.assert_allclose(padded.hidden[key], hidden, rtol=1e-4, atol=1e-5)


def test_the_probe_takes_half_precision_rounding_for_packing_but_not_mixed_texts() -> None:
    packing = make_model("gemma3").to(torch.bfloat16)
    mixing = make_model("gemma3").to(torch.bfloat16)
    forward = mixing.forward
    mixing.forward = lambda *args, position_ids=None, **kwargs: forward(*args, **kwargs)
    assert packs_texts(packing) and not packs_texts(mixing)


def test_a_model_without_position_ids_is_padded() -> None:
    model = make_model("llama")
    forward = model.forward
    model.forward = lambda input_ids=None, attention_mask=None, use_cache=None: forward(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
    assert not packs_texts(model)
