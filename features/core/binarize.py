"""Binarized SAE codes: a latent is on where its code passes a threshold, and the tag that names that threshold.

Two ops: `>` (strictly above, the paper's classifiers) and `>=` (at or above, its cross-lingual scripts).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from scipy.sparse import csr_matrix

from features.errors import SaefsError

BinarizeOp = Literal[">", ">="]


def check_op(op: str) -> None:
    if op not in get_args(BinarizeOp):
        raise SaefsError(f"binarize op {op!r} is not one of {list(get_args(BinarizeOp))}")


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


def threshold_tag(threshold: float | None, op: BinarizeOp = ">") -> str:
    """`raw` for continuous codes, else `bin<t>` (`>`) or `binge<t>` (`>=`), with 0.5 spelt 0p5."""
    if threshold is None:
        return "raw"
    number = np.format_float_positional(float(threshold), trim="-").replace(".", "p").replace("-", "m")
    return f"{'bin' if op == '>' else 'binge'}{number}"
