"""Feast feature views of pooled SAE codes: names, sparse columns, offline sources, the catalog, retrieval.

A view holds one grid cell of one model for every dataset's texts, keyed by `text_id`:

  sparse  `latent_ids: Array(Int32)` + `latent_values: Array(Float32)`, the active latents of the
          pooled codes (`gemma3_270m__l9__sae4k__sum__raw`)
  binary  `latent_ids` only: the latents above a threshold (`...__sum__bin1`, `...__sum__binge0p5`)
  dense   `hidden: Array(Float32)`, a pooled hidden state (`gemma3_270m__l9__hidden__last`)
  labels  `label`, `split`, `lang`, `dataset` of every text (`labels`), for training only

and, per raw view, an on-demand view (`...__sum__binreq`) whose `active_ids` are the latents
above a threshold sent with the request.

`build_offline_sources` writes one parquet per view and a catalog (JSON) that lists them;
`feature_repo/` turns the catalog into Feast objects. Feast itself is imported only by the
functions that talk to a store (it costs ~16 s), so the rest stays cheap to import.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import timedelta
from itertools import chain, product
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import csr_matrix, vstack

from features.core.naming import codes_name, hidden_name, parse_width
from features.errors import SaefsError
from features.stores.files import atomic_path, remove_temporaries, write_json
from features.stores.services import check_feast, display_address
from features.stores.shards import read_csr, read_dense

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

BinarizeOp = Literal[">", ">="]
ViewKind = Literal["sparse", "binary", "dense", "labels"]  # catalog views; on-demand views are "request_binary"

ENTITY = "text"
JOIN_KEY = "text_id"
EVENT_TIME = "event_timestamp"
CREATED = "created"
IDS, VALUES, HIDDEN = "latent_ids", "latent_values", "hidden"
REQUEST_IDS = "active_ids"  # not `latent_ids`: offline, Feast returns the input view's columns beside the output
LABELS_VIEW = "labels"
LABEL_COLUMNS = ("label", "split", "lang", "dataset")
FEATURE_COLUMNS: dict[str, tuple[str, ...]] = {
    "sparse": (IDS, VALUES), "binary": (IDS,), "dense": (HIDDEN,), "labels": LABEL_COLUMNS,
    "request_binary": (REQUEST_IDS,),
}
CATALOG_FILE = "catalog.json"
CATALOG_FORMAT = "saefs-feast-catalog/1"
ROWS_PER_GROUP = 8192  # parquet row group; also bounds the int32 list offsets of one block

_TIME = pa.timestamp("us", tz="UTC")
_KEYS = [pa.field(JOIN_KEY, pa.string()), pa.field(EVENT_TIME, _TIME), pa.field(CREATED, _TIME)]
_SCHEMAS = {  # feature columns of each view kind written by write_view
    "sparse": [pa.field(IDS, pa.list_(pa.int32())), pa.field(VALUES, pa.list_(pa.float32()))],
    "binary": [pa.field(IDS, pa.list_(pa.int32()))],
    "dense": [pa.field(HIDDEN, pa.list_(pa.float32()))],
}
_LABELS_SCHEMA = pa.schema([*_KEYS, pa.field("label", pa.int64()), pa.field("split", pa.string()),
                            pa.field("lang", pa.string()), pa.field("dataset", pa.string())])


# --- binarization and names ---------------------------------------------------------------------

def binarize_codes(codes: csr_matrix, threshold: float, op: BinarizeOp = ">") -> csr_matrix:
    """Ones where a code passes `threshold` (strictly above by default; the paper's code used both)."""
    if op not in get_args(BinarizeOp):
        raise SaefsError(f"binarize op {op!r} is not one of {list(get_args(BinarizeOp))}")
    out = csr_matrix(codes, dtype=np.float32, copy=True)
    passed = out.data > threshold if op == ">" else out.data >= threshold
    out.data = passed.astype(np.float32)
    out.eliminate_zeros()
    return out


def threshold_tag(threshold: float | None, op: BinarizeOp = ">") -> str:
    """`raw` for continuous codes, else `bin<t>` (`>`) or `binge<t>` (`>=`), with 0.5 spelt 0p5."""
    if threshold is None:
        return "raw"
    number = np.format_float_positional(float(threshold), trim="-").replace(".", "p").replace("-", "m")
    return f"{'bin' if op == '>' else 'binge'}{number}"


def view_name(model: str, layer: int, width: str, pooling: str, threshold: float | None = None,
              op: BinarizeOp = ">") -> str:
    """`gemma3_270m__l9__sae4k__sum__raw`, `...__sum__bin1`, `...__sum__binge0p5`."""
    return f"{model}__{codes_name(layer, width, pooling)}__{threshold_tag(threshold, op)}"


def hidden_view_name(model: str, layer: int, pooling: str) -> str:
    """`gemma3_270m__l9__hidden__last`."""
    return f"{model}__{hidden_name(layer, pooling)}"


def on_demand_view_name(raw_view: str, op: BinarizeOp = ">") -> str:
    """The request-time binarization of a raw view: `...__sum__binreq` (`>`) or `...__sum__binreqge` (`>=`)."""
    return f"{raw_view.removesuffix('__raw')}__binreq{'' if op == '>' else 'ge'}"


# --- CSR <-> Feast sparse columns ---------------------------------------------------------------

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


def _dense_rows(column: Any, width: int) -> np.ndarray:
    """[rows, width] float32 from a list column; rows without features are NaN."""
    lists = _list_array(column, pa.float32(), HIDDEN)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    if not np.isin(lengths, (0, width)).all():
        raise SaefsError(f"{HIDDEN} rows must have {width} values, found lengths {sorted(set(lengths) - {0, width})}")
    out = np.full((len(lists), width), np.nan, dtype=np.float32)
    out[lengths == width] = _flat_numpy(lists).reshape(-1, width)
    return out


# --- the catalog --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewSpec:
    """One Feast view: what it holds and where its offline parquet lies (relative to the project root)."""

    name: str
    kind: ViewKind
    path: str
    width: int  # SAE latents (sparse, binary), d_model (dense), 0 (labels)
    n_rows: int
    model: str | None = None
    layer: int | None = None
    sae: str | None = None  # SAE width as named in params ("4k")
    pooling: str | None = None
    threshold: float | None = None  # binary views
    op: BinarizeOp | None = None  # binary views; for raw sparse views, the op of their request-time binarization

    @property
    def features(self) -> tuple[str, ...]:
        return FEATURE_COLUMNS[self.kind]

    def tags(self) -> dict[str, str]:
        """Feast tags (strings) that let a reader of the registry rebuild matrices (kind, width) and find the cell."""
        return {key: str(value) for key, value in asdict(self).items()
                if value is not None and key not in ("name", "path", "n_rows")}


def write_catalog(path: str | os.PathLike[str], views: Sequence[ViewSpec]) -> None:
    names = [view.name for view in views]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SaefsError(f"views {repeated} appear twice in the catalog for {path}: each name must be unique")
    write_json(path, {"format": CATALOG_FORMAT, "views": [asdict(view) for view in views]})


def read_catalog(path: str | os.PathLike[str]) -> list[ViewSpec]:
    path = Path(path)
    if not path.is_file():
        raise SaefsError(f"{path} not found: run `dvc repro build_labels build_features` first (they write the "
                         "Feast sources and their catalogs)")
    raw = json.loads(path.read_text())
    if raw.get("format") != CATALOG_FORMAT:
        raise SaefsError(f"{path} has format {raw.get('format')!r}; this code reads {CATALOG_FORMAT!r}: rebuild it")
    known = {f.name for f in fields(ViewSpec)}
    return [ViewSpec(**{key: value for key, value in view.items() if key in known}) for view in raw["views"]]


# --- offline sources ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureGrid:
    """The cells of one model to publish: SAE codes per (layer, width, pooling), hidden states per (layer, pooling)."""

    layers: Sequence[int]
    widths: Sequence[str]
    poolings: Sequence[str]
    hidden_poolings: Sequence[str] = ()
    thresholds: Sequence[float | None] = (None,)  # None: the continuous (raw) view
    op: BinarizeOp = ">"


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


def build_labels_source(prepared: Mapping[str, str | os.PathLike[str]],
                        out_dir: str | os.PathLike[str]) -> list[ViewSpec]:
    """Write the `labels` view (label, split, lang, dataset of every prepared text) and its catalog, atomically."""
    out_dir = Path(out_dir)
    frames = []
    for name, path in prepared.items():
        df = _read_prepared(Path(path), name, [JOIN_KEY, EVENT_TIME, "label", "split", "lang"])
        frames.append(df.assign(dataset=name))
    labels = pd.concat(frames, ignore_index=True)
    _check_unique(labels[JOIN_KEY].to_numpy(), labels["dataset"].tolist(), LABELS_VIEW)
    table = pa.Table.from_pandas(labels.assign(**{CREATED: labels[EVENT_TIME]})[[f.name for f in _LABELS_SCHEMA]],
                                 schema=_LABELS_SCHEMA, preserve_index=False)
    spec = ViewSpec(LABELS_VIEW, "labels", str(out_dir / f"{LABELS_VIEW}.parquet"), 0, table.num_rows)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        pq.write_table(table, tmp / f"{LABELS_VIEW}.parquet", row_group_size=ROWS_PER_GROUP)
        write_catalog(tmp / CATALOG_FILE, [spec])
    return [spec]


def _read_prepared(path: Path, dataset: str, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise SaefsError(f"{path} not found: run `dvc repro prepare_data@{dataset}` first")
    return pd.read_parquet(path, columns=columns)


def _event_times(path: Path, dataset: str) -> pd.Series:
    df = _read_prepared(path, dataset, [JOIN_KEY, EVENT_TIME])
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


# --- the Feast repo: load, apply, materialize, retrieve (these import feast) -------------------

@contextlib.contextmanager
def _importable(repo_dir: Path) -> Iterator[None]:
    """Import the repo's modules as `feast apply` does (top-level names, run from the repo), afresh each time."""
    names = [path.stem for path in repo_dir.glob("*.py")]
    cwd = Path.cwd()
    for name in names:
        sys.modules.pop(name, None)  # another repo copy (or an older catalog) may be cached under that name
    sys.path.insert(0, str(repo_dir))
    os.chdir(repo_dir)
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # as `feast apply`: no __pycache__ in the repo
    try:
        importlib.invalidate_caches()
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo_dir))
        sys.dont_write_bytecode = bytecode


def open_store(repo_dir: str | os.PathLike[str], yaml_file: str | os.PathLike[str] | None = None) -> FeatureStore:
    """The repo's store, configured by `yaml_file` (default: the repo's feature_store.yaml); its registry and
    online store must answer (a remote one is checked first)."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    repo_dir = Path(repo_dir).resolve()
    yaml_file = Path(yaml_file or repo_dir / "feature_store.yaml").resolve()
    if not yaml_file.is_file():
        raise SaefsError(f"Feast configuration {yaml_file} not found: run stages from the project root")
    config = load_repo_config(repo_dir, yaml_file)
    check_feast(config)  # before FeatureStore, which connects to a SQL registry at once
    return FeatureStore(repo_path=str(repo_dir), config=config)


def store_locations(store: FeatureStore) -> dict[str, dict[str, str | None]]:
    """Where the registry and the online store live: type, and a file (relative to the working directory) or
    `host:port[/database]`; never a credential. What the feast_apply and materialize receipts record."""
    registry, online = store.config.registry, store.config.online_store
    registry_type = getattr(registry, "registry_type", "file")

    def local(path: str) -> str:
        return os.path.relpath(Path(store.repo_path) / path)

    remote = getattr(online, "connection_string", None)  # Redis; other stores are recorded by type only
    registry_address = local(registry.path) if registry_type == "file" else display_address(registry.path)
    online_address = local(online.path) if online.type == "sqlite" else display_address(remote) if remote else None
    return {"registry": {"type": registry_type, "address": registry_address},
            "online_store": {"type": online.type, "address": online_address}}


def apply_repo(store: FeatureStore) -> None:
    """`feast apply` of the store's repo in this process: register its objects, delete the ones it no longer defines."""
    from feast.repo_operations import extract_objects_for_apply_delete, parse_repo

    repo_dir = Path(store.repo_path)
    with _importable(repo_dir):
        contents = parse_repo(repo_dir)
    _make_local_dirs(store)
    to_apply, to_delete, _, _ = extract_objects_for_apply_delete(store.project, store.registry, contents)
    store.apply(to_apply, objects_to_delete=to_delete, partial=False)


def _make_local_dirs(store: FeatureStore) -> None:
    """The folders of a file registry and a SQLite online store, which Feast does not create."""
    registry, online = store.config.registry, store.config.online_store
    files = [registry.path] if getattr(registry, "registry_type", "file") == "file" else []
    files += [online.path] if online.type == "sqlite" else []
    for path in files:
        (Path(store.repo_path) / path).parent.mkdir(parents=True, exist_ok=True)


def materialize_views(store: FeatureStore, names: Sequence[str] | None = None) -> dict[str, int]:
    """Load every online view's full offline history into the online store, one view at a time.

    Goes through the provider rather than `store.materialize`, which also records the interval
    in the registry: the registry is `feast_apply`'s DVC output and must not change afterwards.
    Rows are written in batches of `materialization.online_write_batch_size` (feature_store.yaml).
    Returns the rows per view.
    """
    from feast import FileSource
    from tqdm.auto import tqdm

    views = [view for view in store.list_feature_views() if view.online and (names is None or view.name in names)]
    unknown = sorted(set(names or []) - {view.name for view in views})
    if unknown:
        raise SaefsError(f"no online feature views {unknown} in the registry: run `dvc repro feast_apply` first")
    _make_local_dirs(store)
    store.provider.update_infra(store.project, tables_to_delete=[], tables_to_keep=views, entities_to_delete=[],
                                entities_to_keep=store.list_entities(), partial=True)
    counts = {}
    for view in views:
        if not isinstance(view.batch_source, FileSource):
            raise SaefsError(f"view {view.name} reads {type(view.batch_source).__name__}; saefs writes parquet files")
        stamps = pq.read_table(view.batch_source.path, columns=[EVENT_TIME])[EVENT_TIME]
        counts[view.name] = len(stamps)
        if not len(stamps):
            continue
        span = pc.min_max(stamps)  # the whole history, with a second of margin on both ends
        start, end = span["min"].as_py() - timedelta(seconds=1), span["max"].as_py() + timedelta(seconds=1)
        store.provider.materialize_single_feature_view(
            config=store.config, feature_view=view, start_date=start, end_date=end,
            registry=store.registry, project=store.project, tqdm_builder=lambda n: tqdm(total=n, disable=True))
    return counts


def rebuild_online_store(store: FeatureStore) -> tuple[dict[str, int], dict[str, int]]:
    """Reload every online view; returns the rows per view and the pushed texts carried over per view.

    A SQLite store is built afresh in a temporary sibling file, gets the rows the scoring service
    pushed for texts the offline sources lack (`_carry_pushed`), and replaces the live file in one
    rename: readers see the old store or the new one, never none or half of one, and a failure
    leaves the old one. Other stores (Redis) are overwritten in place, key by key, and carry nothing.
    """
    online = store.config.online_store
    if online.type != "sqlite":
        return materialize_views(store), {}
    live = Path(store.repo_path) / online.path  # as Feast resolves it (an absolute path stays itself)
    remove_temporaries(live)  # of a killed rebuild
    with atomic_path(live) as fresh:
        counts = materialize_views(_with_sqlite_path(store, fresh))
        return counts, _carry_pushed(live, fresh)


def _with_sqlite_path(store: FeatureStore, path: Path) -> FeatureStore:
    """The same store with its SQLite online store at `path`."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    config = store.config.model_dump(by_alias=True, exclude_unset=True)
    config["online_store"] = store.config.online_store.model_dump() | {"path": str(path)}
    return FeatureStore(repo_path=str(store.repo_path), config=RepoConfig(**config))


def _carry_pushed(live: Path, fresh: Path) -> dict[str, int]:
    """Copy into `fresh` the rows of `live` whose texts it lacks (pushed by the scoring service), view by view.

    A view whose materialized rows (same text, same event time) differ between the stores was
    computed another way (another SAE or extraction setting under the same name): its pushed rows
    would be stale, so they are dropped, with a warning. Returns the texts carried per view table.
    """
    if not live.is_file():
        return {}
    carried = {}
    with contextlib.closing(sqlite3.connect(fresh.resolve().as_uri(), uri=True)) as conn, conn:
        conn.execute("ATTACH DATABASE ? AS live", (f"{live.resolve().as_uri()}?mode=ro",))
        tables = "SELECT name FROM {}.sqlite_master WHERE type = 'table'"
        common = sorted({r[0] for r in conn.execute(tables.format("main"))}
                        & {r[0] for r in conn.execute(tables.format("live"))})
        for table in common:
            new, old = f'main."{table}"', f'live."{table}"'
            changed = conn.execute(f"SELECT 1 FROM {new} n JOIN {old} o USING (entity_key, feature_name, event_ts) "
                                   "WHERE n.value IS NOT o.value LIMIT 1").fetchone()
            absent = f"FROM {old} WHERE entity_key NOT IN (SELECT entity_key FROM {new})"
            texts = conn.execute(f"SELECT COUNT(DISTINCT entity_key) {absent}").fetchone()[0]
            if changed and texts:
                log.warning("online table %s: its offline rows changed, so %d pushed texts, computed the old way, "
                            "are dropped; score them again to add them", table, texts)
            if changed or not texts:
                continue
            columns = ", ".join(f'"{r[1]}"' for r in conn.execute(f'PRAGMA main.table_info("{table}")'))
            conn.execute(f"INSERT INTO {new} ({columns}) SELECT {columns} {absent}")
            carried[table] = texts
    return carried


def _historical_table(store: FeatureStore, feature_service_name: str,
                      entity_df: pd.DataFrame) -> tuple[pa.Table, str, int]:
    """Point-in-time rows of one single-view feature service, in entity order, with the view's kind and width."""
    service = store.get_feature_service(feature_service_name)
    if len(service.feature_view_projections) != 1:
        raise SaefsError(f"feature service {feature_service_name!r} spans "
                         f"{[p.name for p in service.feature_view_projections]}: pass a one-view service")
    tags = _view_tags(store, service.feature_view_projections[0].name)
    kind, width = tags.get("kind", ""), int(tags.get("width", 0))
    if kind not in ("sparse", "binary", "request_binary", "dense"):
        raise SaefsError(f"feature service {feature_service_name!r} serves a {kind or 'untagged'} view, not features")
    order = "__saefs_row"
    table = store.get_historical_features(entity_df=entity_df.assign(**{order: np.arange(len(entity_df))}),
                                          features=service).to_arrow()
    if table.num_rows != len(entity_df):
        raise SaefsError(f"{feature_service_name}: Feast returned {table.num_rows} rows for {len(entity_df)} "
                         "entity rows; use the duckdb offline store (the file store drops rows)")
    return table.take(pc.sort_indices(table[order])).drop_columns([order]), kind, width


def historical_matrix(store: FeatureStore, feature_service_name: str,
                      entity_df: pd.DataFrame) -> tuple[csr_matrix | np.ndarray, pd.DataFrame]:
    """Point-in-time features of `entity_df` (text_id, event_timestamp, any request fields) from one service.

    The service must name one sparse, binary or dense view (or a request-time binarization).
    Returns the feature matrix, row i for entity row i (a CSR matrix of the SAE width; empty
    rows, or NaN rows for dense views, where a text has no features as of its timestamp), and
    the entity frame as Feast returned it, in the same order.
    """
    table, kind, width = _historical_table(store, feature_service_name, entity_df)
    if kind == "dense":
        matrix: csr_matrix | np.ndarray = _dense_rows(table[HIDDEN], width)
    elif kind == "sparse":
        matrix = to_csr(table[IDS], table[VALUES], width)
    else:
        matrix = to_csr(table[FEATURE_COLUMNS[kind][0]], None, width)
    features = {IDS, VALUES, HIDDEN, REQUEST_IDS}  # an on-demand view also returns its input view's columns
    entities = table.drop_columns([c for c in table.column_names if c in features])
    return matrix, entities.to_pandas()


def historical_frame(store: FeatureStore, feature_service_name: str,
                     entity_df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The service's feature columns for `entity_df`, in entity order, exactly as the online store
    returns them (list columns: what a probe logged to MLflow takes), and the view's width."""
    table, kind, width = _historical_table(store, feature_service_name, entity_df)
    return table.select(list(FEATURE_COLUMNS[kind])).to_pandas(), width


def _view_tags(store: FeatureStore, name: str) -> dict[str, str]:
    from feast.errors import FeatureViewNotFoundException

    try:
        return dict(store.get_feature_view(name).tags)
    except FeatureViewNotFoundException:  # a request-time binarization
        return dict(store.get_on_demand_feature_view(name).tags)
