from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix

from features.core.pooling import counted_token_mask, parse_pooling, pool_codes, pool_hidden
from features.errors import SaefsError

BOS, PAD, BIG = 2, 0, 1000.0
INPUT_IDS = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, 9, PAD]])
ATTENTION = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
# codes [B=2, T=4, F=4]; BOS and padding positions hold large values that must not leak
CODES = torch.tensor(
    [
        [[BIG] * 4, [1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 1.0, 0.0], [4.0, 0.0, 0.0, 0.5]],
        [[BIG] * 4, [0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0], [BIG] * 4],
    ]
)
EXPECTED = {
    "sum": [[5, 3, 3, 0.5], [2, 0, 0, 1]],
    "mean": [[5 / 3, 1, 1, 0.5 / 3], [1, 0, 0, 0.5]],
    "max": [[4, 3, 2, 0.5], [2, 0, 0, 1]],
    "last": [[4, 0, 0, 0.5], [2, 0, 0, 1]],
    "top1": [[1, 1, 1, 0], [1, 0, 0, 0]],  # per token: the largest positive latent
    "top2": [[2, 1, 2, 1], [1, 0, 0, 1]],  # the all-zero token adds nothing
    "top9": [[2, 1, 2, 1], [1, 0, 0, 1]],  # n beyond the width counts every positive latent
}


def flattened(values: torch.Tensor, include_bos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Counted tokens of a padded [B, T, F] tensor and their rows, the way extraction flattens them."""
    rows, positions = counted_token_mask(INPUT_IDS, ATTENTION, BOS, include_bos).nonzero(as_tuple=True)
    return values[rows, positions], rows


@pytest.mark.parametrize("spec", list(EXPECTED))
def test_pooling_matches_hand_computed_values(spec: str) -> None:
    pooled = pool_codes(*flattened(CODES), n_texts=2, spec=spec)
    assert isinstance(pooled, csr_matrix)
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled.toarray(), np.array(EXPECTED[spec], dtype=np.float32), rtol=1e-6)


def test_pooled_codes_hold_no_explicit_zeros() -> None:
    pooled = pool_codes(*flattened(CODES), n_texts=2, spec="sum")
    assert pooled.nnz == 6 and np.all(pooled.data != 0)


def test_bos_counts_only_when_asked() -> None:
    mask = counted_token_mask(INPUT_IDS, ATTENTION, BOS, include_bos=True)
    assert mask.tolist() == [[True] * 4, [True, True, True, False]]
    pooled = pool_codes(*flattened(CODES, include_bos=True), n_texts=2, spec="sum")
    np.testing.assert_allclose(pooled.toarray()[0], [BIG + 5, BIG + 3, BIG + 3, BIG + 0.5])


def test_a_tokenizer_without_bos_loses_no_token() -> None:
    mask = counted_token_mask(INPUT_IDS, ATTENTION, bos_token_id=None, include_bos=False)
    assert torch.equal(mask, ATTENTION.bool())


def test_mask_does_not_modify_the_attention_mask() -> None:
    attention = ATTENTION.bool()
    counted_token_mask(INPUT_IDS, attention, BOS, include_bos=False)
    assert torch.equal(attention, ATTENTION.bool())


def test_max_keeps_negative_values_and_empty_rows_stay_empty() -> None:
    values = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]])
    pooled = pool_codes(values, torch.tensor([0, 0]), n_texts=2, spec="max")
    np.testing.assert_allclose(pooled.toarray(), [[-1.0, -0.5], [0.0, 0.0]])


@pytest.mark.parametrize("spec", ["last", "mean"])
def test_hidden_pooling_is_dense_float32(spec: str) -> None:
    hidden = CODES[..., :3].double()  # any dtype in, float32 out
    pooled = pool_hidden(*flattened(hidden), n_texts=2, spec=spec)
    assert isinstance(pooled, np.ndarray) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, np.array(EXPECTED[spec], dtype=np.float32)[:, :3], rtol=1e-6)


@pytest.mark.parametrize("spec", ["top", "top0", "top-3", "median", "Sum", "top20x"])
def test_unknown_pooling_is_named(spec: str) -> None:
    with pytest.raises(SaefsError, match=rf"unknown pooling '{spec}'.*top<n>"):
        parse_pooling(spec)
