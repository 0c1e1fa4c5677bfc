"""Binarized SAE codes: a latent is on where its code passes a threshold, and the tag that names that threshold.

Two ops: `>` (strictly above, the paper's classifiers) and `>=` (at or above, its cross-lingual scripts).
A threshold is a number, or a quantile `q<NN>` of the nonzero codes a probe is fitted on (`q50`: their
median), set per fit from its training texts: a number means something only on one SAE's activation scale.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

import numpy as np
from scipy.sparse import csr_matrix

from features.errors import SaefsError

BinarizeOp = Literal[">", ">="]
Threshold = float | str  # a value, or a quantile spec `q<NN>`
_QUANTILE = re.compile(r"q(\d{1,2})")


def check_op(op: str) -> None:
    if op not in get_args(BinarizeOp):
        raise SaefsError(f"binarize op {op!r} is not one of {list(get_args(BinarizeOp))}")


def quantile_of(threshold: Threshold | None) -> float | None:
    """0.5 for `q50`, None for a number (or None); a string that is no `q<NN>` is an error naming the form."""
    if not isinstance(threshold, str):
        return None
    match = _QUANTILE.fullmatch(threshold)
    if match is None or not 0 < int(match.group(1)) < 100:
        raise SaefsError(f"binarize threshold {threshold!r}: a number, or q<NN> with NN in 1..99 (a quantile of "
                         "the nonzero codes the probe is fitted on, `q50` their median)")
    return int(match.group(1)) / 100


def check_threshold(threshold: Threshold) -> Threshold:
    """`threshold` if it is a number or a valid quantile spec (for params validation)."""
    quantile_of(threshold)
    return threshold


def view_threshold(threshold: Threshold | None) -> float | None:
    """The threshold of the Feast view a probe at `threshold` reads: a quantile reads the raw view (None) and
    binarizes in the probe; a number reads its binary view."""
    return None if quantile_of(threshold) is not None else threshold  # type: ignore[return-value]


def passes(values: np.ndarray, threshold: float, op: BinarizeOp = ">") -> np.ndarray:
    """Where `values` pass `threshold` under `op`, as booleans."""
    check_op(op)
    return values > threshold if op == ">" else values >= threshold


def binarize_codes(codes: csr_matrix, threshold: float, op: BinarizeOp = ">") -> csr_matrix:
    """float32 ones where a stored code passes `threshold`; implicit zeros stay 0 (a listed id is an active latent)."""
    out = csr_matrix(codes, dtype=np.float32, copy=True)
    out.data = passes(out.data, threshold, op).astype(np.float32)
    out.eliminate_zeros()
    return out


def threshold_tag(threshold: Threshold | None, op: BinarizeOp = ">") -> str:
    """`raw` for continuous codes, else `bin<t>` (`>`) or `binge<t>` (`>=`), with 0.5 spelt 0p5 and a quantile
    kept as named (`binq50`)."""
    if threshold is None:
        return "raw"
    if quantile_of(threshold) is not None:
        number = str(threshold)
    else:
        number = np.format_float_positional(float(threshold), trim="-").replace(".", "p").replace("-", "m")
    return f"{'bin' if op == '>' else 'binge'}{number}"
