"""The offline sources: one parquet per view of a model, over every dataset's texts, and their catalog."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.sparse import csr_matrix, vstack

from features.core.binarize import BinarizeOp, binarize_codes
from features.core.naming import codes_name, hidden_name, parse_width
from features.errors import SaefsError
from features.stores.feast.catalog import CATALOG_FILE, ViewSpec, write_catalog
from features.stores.feast.columns import CREATED, EVENT_TIME, HIDDEN, IDS, JOIN_KEY, VALUES, ViewKind, sparse_columns
from features.stores.feast.names import dense_view_name, hidden_view_name, view_name
from features.stores.files import atomic_path
from features.stores.shards import read_csr, read_dense

ROWS_PER_GROUP = 8192  # parquet row group; also bounds the int32 list offsets of one block

_TIME = pa.timestamp("us", tz="UTC")
_KEYS = [pa.field(JOIN_KEY, pa.string()), pa.field(EVENT_TIME, _TIME), pa.field(CREATED, _TIME)]
_SCHEMAS = {  # feature columns of each view kind written by write_view
    "sparse": [pa.field(IDS, pa.list_(pa.int32())), pa.field(VALUES, pa.list_(pa.float32()))],
    "binary": [pa.field(IDS, pa.list_(pa.int32()))],
    "dense": [pa.field(HIDDEN, pa.list_(pa.float32()))],
}


@dataclass(frozen=True)
class FeatureGrid:
    """The cells of one model to publish: SAE codes per (layer, width, pooling), hidden states per (layer, pooling),
    and dense arrays outside the layer grid by their shard name (a vision tower's output)."""

    layers: Sequence[int]
    widths: Sequence[str]
    poolings: Sequence[str]
    hidden_poolings: Sequence[str] = ()
    thresholds: Sequence[float | None] = (None,)  # None: the continuous (raw) view
    op: BinarizeOp = ">"
    dense: Sequence[str] = ()


@dataclass(frozen=True)
class _Rows:
    """The key columns of one view's rows, in feature-folder order, over all datasets."""

    text_ids: np.ndarray
    event_times: pd.Series


def build_offline_sources(model: str, feature_dirs: Mapping[str, str | os.PathLike[str]],
                          prepared: Mapping[str, str | os.PathLike[str]], grid: FeatureGrid,
                          out_dir: str | os.PathLike[str]) -> list[ViewSpec]:
    """Write one parquet per view of `model` (all datasets' rows) and its catalog into `out_dir`, atomically.

    `feature_dirs` and `prepared` map each dataset to its extract folder and prepared parquet; the
    prepared data gives each row its event time. Returns the catalog's views.
    """
    out_dir = Path(out_dir)
    missing = sorted(set(feature_dirs) ^ set(prepared))
    if missing:
        raise SaefsError(f"datasets {missing} have features but no prepared data, or the other way round")
    if not feature_dirs:
        raise SaefsError(f"no datasets given for model {model!r}: configure `datasets` in params.yaml")
    times = {name: _event_times(Path(path), name) for name, path in prepared.items()}
    views: list[ViewSpec] = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for spec, rows, features in _grid_views(model, grid, feature_dirs, times):
            write_view(tmp / f"{spec.name}.parquet", spec.kind, rows.text_ids, rows.event_times, features)
            views.append(replace(spec, path=str(out_dir / f"{spec.name}.parquet")))
        write_catalog(tmp / CATALOG_FILE, views)
    return views


def _grid_views(model: str, grid: FeatureGrid, feature_dirs: Mapping[str, str | os.PathLike[str]],
                times: Mapping[str, pd.Series]) -> Iterator[tuple[ViewSpec, _Rows, csr_matrix | np.ndarray]]:
    """Every view of the grid with its rows and features; each shard array is read once for all its views."""
    for layer, width, pooling in product(grid.layers, grid.widths, grid.poolings):
        codes, rows = _read_all(read_csr, feature_dirs, codes_name(layer, width, pooling), times)
        for threshold in grid.thresholds:
            spec = ViewSpec(view_name(model, layer, width, pooling, threshold, grid.op),
                            "sparse" if threshold is None else "binary", "", parse_width(width), len(rows.text_ids),
                            model, layer, width, pooling, threshold, grid.op)
            yield spec, rows, codes if threshold is None else binarize_codes(codes, threshold, grid.op)
    for layer, pooling in product(grid.layers, grid.hidden_poolings):
        hidden, rows = _read_all(read_dense, feature_dirs, hidden_name(layer, pooling), times)
        spec = ViewSpec(hidden_view_name(model, layer, pooling), "dense", "", int(hidden.shape[1]),
                        len(rows.text_ids), model, layer, None, pooling)
        yield spec, rows, hidden
    for array in grid.dense:
        values, rows = _read_all(read_dense, feature_dirs, array, times)
        yield ViewSpec(dense_view_name(model, array), "dense", "", int(values.shape[1]), len(rows.text_ids),
                       model), rows, values


def _event_times(path: Path, dataset: str) -> pd.Series:
    if not path.is_file():
        raise SaefsError(f"{path} not found: run `dvc repro prepare_data@{dataset}` first")
    df = pd.read_parquet(path, columns=[JOIN_KEY, EVENT_TIME])
    return pd.Series(pd.to_datetime(df[EVENT_TIME], utc=True).to_numpy(), index=df[JOIN_KEY].astype(str).to_numpy())


def _read_all(reader: Any, feature_dirs: Mapping[str, str | os.PathLike[str]], array: str,
              times: Mapping[str, pd.Series]) -> tuple[Any, _Rows]:
    """One named array over every dataset's feature folder, stacked, with the rows' keys and event times."""
    parts, ids, stamps = [], [], []
    for dataset, folder in feature_dirs.items():
        matrix, row_ids = reader(folder, array)
        known = times[dataset]
        if len(row_ids) != len(known) or not known.index.isin(row_ids).all():
            raise SaefsError(
                f"{folder} holds {len(row_ids)} rows but prepared {dataset} has {len(known)} texts, or other ids: "
                f"the features are stale, run `dvc repro extract` first")
        parts.append(matrix)
        ids.append(row_ids.astype(str))
        stamps.append(known.loc[row_ids.astype(str)])
    stacked = np.concatenate(parts) if isinstance(parts[0], np.ndarray) else vstack(parts, format="csr")
    rows = _Rows(np.concatenate(ids), pd.concat(stamps, ignore_index=True))
    _check_unique(rows.text_ids, np.repeat(list(feature_dirs), [len(i) for i in ids]).tolist(), array)
    return stacked, rows


def _check_unique(text_ids: np.ndarray, datasets: list[str], what: str) -> None:
    ids = pd.Series(text_ids)
    repeated = ids.duplicated(keep=False)
    if repeated.any():
        where = sorted({datasets[i] for i in np.flatnonzero(repeated.to_numpy())})
        raise SaefsError(f"{what}: text_ids {ids[repeated].unique()[:3].tolist()} appear more than once "
                         f"(datasets {where}); a Feast entity key must be unique: fix the prepared data")


def write_view(path: str | os.PathLike[str], kind: ViewKind, text_ids: Sequence[str] | np.ndarray,
               event_times: pd.Series, features: csr_matrix | np.ndarray) -> None:
    """One view's parquet: keys, `created` (= the event time, so outputs reproduce) and the columns of `kind`.

    Written in row groups of ROWS_PER_GROUP, so memory stays bounded and list offsets fit int32.
    """
    schema = pa.schema([*_KEYS, *_SCHEMAS[kind]])
    ids, event_times = np.asarray(text_ids, dtype=str), pd.Series(event_times)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(ids), 1), ROWS_PER_GROUP):
            stop = start + ROWS_PER_GROUP
            times = pa.array(event_times.iloc[start:stop], _TIME)
            columns = [pa.array(ids[start:stop], pa.string()), times, times]
            if kind == "dense":
                block = np.ascontiguousarray(features[start:stop], dtype=np.float32)
                rows_of_width = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), block.shape[1])
                columns.append(rows_of_width.cast(pa.list_(pa.float32())))
            else:
                columns.extend(sparse_columns(features[start:stop])[: len(_SCHEMAS[kind])])
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))

