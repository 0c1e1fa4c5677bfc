"""Per-text pooling of per-token SAE codes and hidden states.

Plain functions rather than scikit-learn estimators: pooling needs the token structure, so it
runs during extraction, not on the pooled matrices that estimators see.

Tokens arrive flattened, as `mask.nonzero()` yields them: `values[k]` belongs to text
`rows[k]`, rows are nondecreasing and each text's tokens are in position order. Only counted
tokens are passed (see `counted_token_mask`), so padding can never leak into a pooled value.

Methods live in one registry, `POOLINGS` (filled by `register_pooling`), which also says which
apply to hidden states; plus the `top<n>` family (for each token its n largest positive latents,
counted over tokens: the paper's top-n pooling). Names, params validation and extraction all read
it, so a new method is one `register_pooling` call here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse import csr_matrix

from features.errors import SaefsError

# torch loads inside the functions that use it: params validation (every stage, and the two that run on every
# repro) reads the registry, and torch takes seconds to import.
if TYPE_CHECKING:
    from torch import Tensor

# (values [N, F], rows [N], n_texts) -> pooled [n_texts, F]
Reducer = Callable[["Tensor", "Tensor", int], "Tensor"]
TOP_N = "top"  # the top<n> family's prefix: 'top20' counts each token's 20 largest positive latents
_TOP_N = re.compile(rf"{TOP_N}([1-9]\d*)")


@dataclass(frozen=True)
class Pooling:
    reducer: Reducer
    hidden: bool  # also pools hidden states: extract writes it for every layer, a dense baseline view


POOLINGS: dict[str, Pooling] = {}  # name -> method; every method (and top<n>) pools SAE codes


def register_pooling(name: str, reducer: Reducer, *, hidden: bool = False) -> None:
    """Add a pooling method under `name` (not a top<n> name); `hidden` also pools hidden states with it."""
    if name in POOLINGS or _TOP_N.fullmatch(name) or not re.fullmatch(r"[a-z][a-z0-9]*", name):
        raise SaefsError(f"pooling name {name!r} is taken or not lowercase letters and digits")
    POOLINGS[name] = Pooling(reducer, hidden)


def hidden_poolings() -> tuple[str, ...]:
    """The poolings of hidden states, sorted (extraction writes each for every layer)."""
    return tuple(sorted(name for name, pooling in POOLINGS.items() if pooling.hidden))


def pooling_top_n(spec: str) -> int | None:
    """Validate a pooling spec (a registered name or top<n>); return n for top<n>, else None."""
    if spec in POOLINGS:
        return None
    match = _TOP_N.fullmatch(spec)
    if match is None:
        raise SaefsError(f"unknown pooling {spec!r}: expected one of {sorted(POOLINGS)} or {TOP_N}<n> with n >= 1 "
                         f"(e.g. '{TOP_N}20')")
    return int(match.group(1))


def check_pooling(spec: str, *, hidden: bool = False) -> str:
    """`spec` if it pools SAE codes (hidden states, with `hidden`), else an error naming those that do."""
    if hidden and spec not in hidden_poolings():
        raise SaefsError(f"unknown hidden-state pooling {spec!r}: expected one of {list(hidden_poolings())}")
    pooling_top_n(spec)
    return spec


def counted_token_mask(
    input_ids: Tensor, attention_mask: Tensor, bos_token_id: int | None, include_bos: bool
) -> Tensor:
    """Bool [B, T]: True where a token counts for pooling (not padding; not a leading BOS unless asked)."""
    import torch

    leading_bos = torch.zeros_like(input_ids, dtype=torch.bool)
    if not include_bos and bos_token_id is not None:
        leading_bos[:, 0] = input_ids[:, 0] == bos_token_id
    return attention_mask.bool() & ~leading_bos


def parse_pooling(spec: str) -> Reducer:
    """The reducer for a pooling spec: a registered name or top<n> (e.g. 'top20')."""
    n = pooling_top_n(spec)
    return POOLINGS[spec].reducer if n is None else partial(_top_n_count, n=n)


def pool_codes(codes: Tensor, rows: Tensor, n_texts: int, spec: str) -> csr_matrix:
    """Pooled SAE codes as a float32 CSR matrix [n_texts, F] holding no explicit zeros."""
    return _to_csr(parse_pooling(spec)(codes, rows, n_texts))


def pool_hidden(acts: Tensor, rows: Tensor, n_texts: int, spec: str) -> np.ndarray:
    """Pooled residual vectors as a dense float32 array [n_texts, d] (hidden-state baselines)."""
    return parse_pooling(spec)(acts.float(), rows, n_texts).cpu().numpy()


def _sum(values: Tensor, rows: Tensor, n_texts: int) -> Tensor:
    return values.new_zeros(n_texts, values.shape[1]).index_add_(0, rows, values)


def _mean(values: Tensor, rows: Tensor, n_texts: int) -> Tensor:
    import torch

    counts = torch.bincount(rows, minlength=n_texts).clamp(min=1)
    return _sum(values, rows, n_texts) / counts.unsqueeze(1).to(values.dtype)


def _max(values: Tensor, rows: Tensor, n_texts: int) -> Tensor:
    index = rows.unsqueeze(1).expand_as(values)
    # include_self=False: the zero start must not win over all-negative values
    return values.new_zeros(n_texts, values.shape[1]).scatter_reduce_(0, index, values, "amax", include_self=False)


def _last(values: Tensor, rows: Tensor, n_texts: int) -> Tensor:
    import torch

    counts = torch.bincount(rows, minlength=n_texts)
    present = counts > 0
    last_token = counts.cumsum(0) - 1
    pooled = values.new_zeros(n_texts, values.shape[1])
    pooled[present] = values[last_token[present]]
    return pooled


def _top_n_count(values: Tensor, rows: Tensor, n_texts: int, *, n: int) -> Tensor:
    top_values, top_latents = values.topk(min(n, values.shape[1]), dim=1)
    counts = values.new_zeros(n_texts, values.shape[1])
    token_rows = rows.unsqueeze(1).expand_as(top_latents)
    # Only positive latents count: a token with fewer than n active latents adds fewer than n.
    counts.index_put_((token_rows, top_latents), (top_values > 0).to(counts.dtype), accumulate=True)
    return counts


def _to_csr(pooled: Tensor) -> csr_matrix:
    """Dense [n, F] -> scipy CSR, sparsified on the tensor's device (1M-wide rows stay on the GPU until then)."""
    import torch

    rows, latents = pooled.nonzero(as_tuple=True)  # row-major, as CSR stores them
    indptr = torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=pooled.shape[0]).cumsum(0)])
    return csr_matrix(
        (
            pooled[rows, latents].float().cpu().numpy(),
            latents.cpu().numpy().astype(np.int32),
            indptr.cpu().numpy(),
        ),
        shape=tuple(pooled.shape),
    )


register_pooling("sum", _sum)
register_pooling("mean", _mean, hidden=True)
register_pooling("max", _max)
register_pooling("last", _last, hidden=True)
