from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from features.core.layers import hidden_state_index
from features.errors import SaefsError
from features.forward.batching import length_sorted_batches
from features.forward.extract import (
    CPU_TOKENS_PER_BATCH,
    Extracted,
    extract,
    token_batches,
    tokenize,
)
from features.sources.sae import sae_quality
from tests.features.tiny import HIDDEN, make_jumprelu_sae, make_model, make_texts, make_tokenizer

LENGTHS = [3, 12, 1, 7, 20, 5, 9, 2]  # words; with max_tokens 10 (BOS included) two texts are cut
MAX_TOKENS = 10
POOLINGS = ["sum", "mean", "max", "last", "top5"]
D_SAE = 64


def naive_pool(codes: np.ndarray, spec: str) -> np.ndarray:
    """Pooling of one text's codes [T, F], written independently of features.core.pooling."""
    if spec == "sum":
        return codes.sum(0)
    if spec == "mean":
        return codes.mean(0)
    if spec == "max":
        return codes.max(0)
    if spec == "last":
        return codes[-1]
    n = int(spec.removeprefix("top"))
    counts = np.zeros(codes.shape[1])
    for token in codes:
        top = np.argsort(-token)[:n]
        counts[top[token[top] > 0]] += 1
    return counts


def naive_residuals(model: PreTrainedModel, ids: list[int], layer: int, paper_compat: bool) -> np.ndarray:
    """One unpadded text through the full model; BOS dropped."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[hidden_state_index(layer, paper_compat)][0, 1:].numpy()


def run(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], saes: dict[int, Any], **overrides: Any
) -> Extracted:
    settings: dict[str, Any] = {"max_tokens": MAX_TOKENS, "batch_size": 3, "progress": False, **overrides}
    return extract(model, tokenizer, texts, [0, 1, 2], saes, POOLINGS, **settings)


@pytest.fixture(scope="module")
def saes() -> dict[int, Any]:
    """Two SAEs on layer 1 (as two widths would be) and one on layer 2."""
    return {
        1: {"a": make_jumprelu_sae(HIDDEN, D_SAE, seed=1), "b": make_jumprelu_sae(HIDDEN, D_SAE // 2, seed=3)},
        2: {"a": make_jumprelu_sae(HIDDEN, D_SAE, seed=2)},
    }


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
@pytest.mark.parametrize("paper_compat", [False, True])
def test_extraction_matches_a_naive_per_text_computation(kind: str, paper_compat: bool, saes: dict[int, Any]) -> None:
    model, tokenizer, texts = make_model(kind), make_tokenizer(), make_texts(LENGTHS)
    result = run(model, tokenizer, texts, saes, paper_compat=paper_compat)

    assert result.n_truncated == 2 and result.truncated.tolist() == [n + 1 > MAX_TOKENS for n in LENGTHS]
    assert result.n_tokens.tolist() == [min(n, MAX_TOKENS - 1) for n in LENGTHS]
    assert set(result.codes) == {(layer, name, spec) for layer in saes for name in saes[layer] for spec in POOLINGS}
    assert set(result.hidden) == {(layer, spec) for layer in (0, 1, 2) for spec in ("last", "mean")}
    for row, text in enumerate(texts):  # row order is the input order, although batches ran longest first
        ids = tokenizer(text)["input_ids"][:MAX_TOKENS]
        for layer in (0, 1, 2):
            acts = naive_residuals(model, ids, layer, paper_compat)
            np.testing.assert_allclose(result.hidden[layer, "last"][row], acts[-1], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(result.hidden[layer, "mean"][row], acts.mean(0), rtol=1e-4, atol=1e-5)
            for name, sae in saes.get(layer, {}).items():
                with torch.inference_mode():
                    codes = sae.encode(torch.from_numpy(acts)).numpy()
                for spec in POOLINGS:
                    np.testing.assert_allclose(
                        result.codes[layer, name, spec][row].toarray()[0],
                        naive_pool(codes, spec),
                        rtol=1e-4,
                        atol=1e-5,
                        err_msg=f"row {row}, layer {layer}, SAE {name}, pooling {spec}",
                    )
    assert all(0.05 < matrix.nnz / np.prod(matrix.shape) < 1 for matrix in result.codes.values())  # not vacuous


def test_sae_quality_is_measured_on_the_pooled_tokens(saes: dict[int, Any]) -> None:
    model, tokenizer, texts = make_model("gemma2"), make_tokenizer(), make_texts(LENGTHS)
    result = run(model, tokenizer, texts, saes)
    tokens = np.concatenate([
        naive_residuals(model, tokenizer(text)["input_ids"][:MAX_TOKENS], 1, False) for text in texts
    ])
    expected = sae_quality(saes[1]["b"], torch.from_numpy(tokens))
    measured = result.quality[1, "b"]
    assert set(result.quality) == {(1, "a"), (1, "b"), (2, "a")}
    np.testing.assert_allclose([measured.fve, measured.l0, measured.dead_fraction],
                               [expected.fve, expected.l0, expected.dead_fraction], rtol=1e-4)


def test_encoding_in_groups_of_texts_changes_nothing(saes: dict[int, Any]) -> None:
    model, tokenizer, texts = make_model("gemma3"), make_tokenizer(), make_texts(LENGTHS)
    whole = run(model, tokenizer, texts, saes)
    grouped = run(model, tokenizer, texts, saes, max_code_elements=4 * D_SAE)  # 4 tokens (one text at least)
    for key, matrix in whole.codes.items():
        np.testing.assert_allclose(grouped.codes[key].toarray(), matrix.toarray(), rtol=1e-5, atol=1e-6)


def test_a_token_budget_batches_by_padded_tokens_and_changes_no_feature(saes: dict[int, Any]) -> None:
    lengths = [len(ids) for ids in tokenize(make_tokenizer(), make_texts(LENGTHS), MAX_TOKENS).ids]
    batches = length_sorted_batches(lengths, batch_size=100, tokens_per_batch=20)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(LENGTHS)))
    assert [len(rows) for rows in batches] == [2, 2, 3, 1]  # lengths 10 10 | 10 8 | 6 4 3 | 2: 20 padded at most
    assert all(len(rows) * lengths[rows[0]] <= 20 for rows in batches)
    assert [len(rows) for rows in length_sorted_batches(lengths, 3, tokens_per_batch=1000)] == [3, 3, 2]
    assert [len(rows) for rows in length_sorted_batches(lengths, 3, tokens_per_batch=1)] == [1] * len(LENGTHS)
    model, tokenizer, texts = make_model("gemma3"), make_tokenizer(), make_texts(LENGTHS)
    fixed = run(model, tokenizer, texts, saes)
    budgeted = run(model, tokenizer, texts, saes, batch_size=100, tokens_per_batch=20)
    for key, matrix in fixed.codes.items():  # other batch shapes round differently, as in the naive comparison
        np.testing.assert_allclose(budgeted.codes[key].toarray(), matrix.toarray(), rtol=1e-4, atol=1e-5)
    for key, hidden in fixed.hidden.items():
        np.testing.assert_allclose(budgeted.hidden[key], hidden, rtol=1e-4, atol=1e-5)
    with pytest.raises(SaefsError, match="tokens_per_batch"):
        length_sorted_batches(lengths, 3, tokens_per_batch=0)


def test_a_cpu_forward_without_a_budget_batches_at_most_the_cpu_token_budget() -> None:
    # 40 texts of 100 tokens at 32 texts a batch would pad 3,200 tokens a batch; the CPU's budget cuts that
    model, tokenizer = make_model("gemma3"), make_tokenizer()
    tokenized = tokenize(tokenizer, make_texts([120] * 40), max_tokens=100)
    texts_per_batch = [len(np.unique(batch.texts)) for batch in
                       token_batches(model, tokenizer, tokenized, [1], batch_size=32, progress=False)]
    assert sum(texts_per_batch) == 40
    assert max(texts_per_batch) == CPU_TOKENS_PER_BATCH // 100
    given = [len(np.unique(batch.texts)) for batch in token_batches(model, tokenizer, tokenized, [1], batch_size=32,
                                                                    tokens_per_batch=4000, progress=False)]
    assert given == [32, 8]  # a budget given is kept


def test_include_bos_pools_one_more_token(saes: dict[int, Any]) -> None:
    model, tokenizer, texts = make_model("gemma3"), make_tokenizer(), make_texts(LENGTHS)
    with_bos = run(model, tokenizer, texts, saes, include_bos=True)
    assert with_bos.n_tokens.tolist() == [min(n + 1, MAX_TOKENS) for n in LENGTHS]


def test_unknown_tokens_are_counted_per_text(saes: dict[int, Any]) -> None:
    texts = ["w1 w2", "w1 qqq zzz", "w3"]
    result = run(make_model("gemma3"), make_tokenizer(), texts, saes)
    assert result.unknown.tolist() == [0, 2, 0]


def test_bos_is_prepended_where_the_tokenizer_does_not_add_it(saes: dict[int, Any]) -> None:
    """Without it the first real token would be the attention sink, and be pooled."""
    tokenizer = make_tokenizer()
    texts = make_texts(LENGTHS)
    with_template = run(make_model("gemma3"), tokenizer, texts, saes)
    tokenizer._tokenizer.post_processor = None  # like SmolLM2's and GPT-2's tokenizers: no BOS added
    assert tokenizer(texts[0])["input_ids"][0] != tokenizer.bos_token_id
    without_template = run(make_model("gemma3"), tokenizer, texts, saes)
    assert without_template.n_tokens.tolist() == with_template.n_tokens.tolist()
    for key, matrix in with_template.codes.items():
        np.testing.assert_allclose(without_template.codes[key].toarray(), matrix.toarray(), rtol=1e-5, atol=1e-6)


def test_empty_texts_are_named_by_row(saes: dict[int, Any]) -> None:
    texts = ["w1 w2", "", "w3", "   "]
    with pytest.raises(SaefsError, match=r"2 text\(s\) have no tokens besides BOS, at rows \[1, 3\]"):
        run(make_model("gemma3"), make_tokenizer(), texts, saes)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": [0, 1]}, r"SAEs given for layers \[2\] that are not in layers \[0, 1\]"),
        ({"layers": [0, 1, 2, 4]}, r"layer 4 is beyond the model's depth \(4 blocks: 0\.\.3\)"),
        (
            {"saes": {1: {"wide": make_jumprelu_sae(HIDDEN * 2, D_SAE)}}},
            r"SAE d_in 64 does not match model width 32 at blocks\.1\.hook_resid_post",
        ),
        ({"poolings": ["sum", "median"]}, r"unknown pooling 'median'"),
        ({"max_tokens": 1}, r"max_tokens must be >= 2"),
        ({"batch_size": 0}, r"batch_size must be >= 1"),
    ],
)
def test_bad_requests_fail_before_any_forward_pass(
    overrides: dict[str, Any], message: str, saes: dict[int, Any]
) -> None:
    model = make_model("gemma3")
    model.register_forward_pre_hook(lambda *_: pytest.fail("the model ran"))
    arguments: dict[str, Any] = {
        "layers": [0, 1, 2],
        "saes": saes,
        "poolings": POOLINGS,
        "max_tokens": MAX_TOKENS,
        "batch_size": 3,
        "progress": False,
        **overrides,
    }
    with pytest.raises(SaefsError, match=message):
        extract(model, make_tokenizer(), make_texts(LENGTHS), **arguments)
