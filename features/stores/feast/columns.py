"""The columns of a view (keys, and the features of each kind) and the conversion of CSR codes to Arrow list
columns and back."""

from __future__ import annotations

from itertools import chain
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import csr_matrix

from features.errors import SaefsError

ViewKind = Literal["sparse", "binary", "dense"]

ENTITY = "text"
JOIN_KEY = "text_id"
EVENT_TIME = "event_timestamp"
CREATED = "created"
IDS, VALUES, HIDDEN = "latent_ids", "latent_values", "hidden"
FEATURE_COLUMNS: dict[str, tuple[str, ...]] = {"sparse": (IDS, VALUES), "binary": (IDS,), "dense": (HIDDEN,)}


def sparse_columns(codes: csr_matrix) -> tuple[pa.ListArray, pa.ListArray]:
    """Per row, the active latent ids (int32, ascending) and their values (float32), without copies per row."""
    codes = csr_matrix(codes, dtype=np.float32, copy=True)
    codes.eliminate_zeros()  # a listed id means an active latent
    codes.sort_indices()
    if codes.nnz >= 2**31:
        raise SaefsError(f"{codes.nnz} active latents in one block overflow int32 list offsets: pass fewer rows")
    offsets = pa.array(codes.indptr.astype(np.int32))
    ids = pa.ListArray.from_arrays(offsets, pa.array(codes.indices.astype(np.int32)))
    values = pa.ListArray.from_arrays(offsets, pa.array(codes.data))
    return ids, values


def to_csr(latent_ids: Any, latent_values: Any | None, width: int) -> csr_matrix:
    """A [rows, width] CSR matrix from Feast's sparse columns; `latent_values=None` gives ones (binary views).

    Takes what Feast returns: an arrow (chunked) list array, a pandas column or a list of lists,
    with None (or NaN) for a row without features, which becomes an empty row.
    """
    ids = _list_array(latent_ids, pa.int32(), IDS)
    lengths = pc.fill_null(pc.list_value_length(ids), 0).to_numpy(zero_copy_only=False)
    indptr = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = _flat_numpy(ids)
    if latent_values is None:
        data = np.ones(len(indices), dtype=np.float32)
    else:
        values = _list_array(latent_values, pa.float32(), VALUES)
        value_lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
        if len(values) != len(ids) or not np.array_equal(value_lengths, lengths):
            raise SaefsError(f"{IDS} and {VALUES} disagree in length on some rows: they must come from one view")
        data = _flat_numpy(values)
    if indices.size and (indices.min() < 0 or indices.max() >= width):
        raise SaefsError(f"latent ids span {indices.min()}..{indices.max()}, outside a width of {width}: "
                         "pass the width of the SAE these codes come from")
    return csr_matrix((data, indices, indptr), shape=(len(ids), width))


def _list_array(column: Any, value_type: pa.DataType, name: str) -> pa.ListArray:
    """An arrow list array of `value_type` from an arrow column, a pandas column or a sequence of lists."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        column = _rows_to_arrow(column.tolist() if isinstance(column, pd.Series) else list(column), value_type, name)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_null(column.type)):
        raise SaefsError(f"{name} must hold one list per row, got arrow type {column.type}")
    return column.cast(pa.list_(value_type))


def _rows_to_arrow(rows: list[Any], value_type: pa.DataType, name: str) -> pa.ListArray:
    """Python rows (lists or arrays; None or NaN for no features) flattened by numpy, 3-6x faster than pa.array."""
    lengths = np.fromiter(map(_row_length, rows), dtype=np.int64, count=len(rows))
    present = (row for row, length in zip(rows, lengths, strict=True) if length)
    try:
        flat = np.fromiter(chain.from_iterable(present), dtype=value_type.to_pandas_dtype(), count=int(lengths.sum()))
    except (TypeError, ValueError) as err:
        raise SaefsError(f"{name} must hold one list of numbers (or None) per row: {err}") from None
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(lengths)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _row_length(row: Any) -> int:
    """Entries of one row; 0 for None or NaN (a text without features)."""
    return 0 if row is None or (isinstance(row, float) and np.isnan(row)) else len(row)


def _flat_numpy(lists: pa.ListArray) -> np.ndarray:
    return pc.list_flatten(lists).to_numpy(zero_copy_only=False)  # list_flatten skips null rows

