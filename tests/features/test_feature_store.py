"""features.stores.feast without Feast: sparse columns, names, catalog, offline sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy.sparse import csr_matrix

from features.core.binarize import binarize_codes
from features.core.naming import codes_name, hidden_name
from features.errors import SaefsError
from features.stores.feast.catalog import ViewSpec, read_catalog, write_catalog
from features.stores.feast.columns import sparse_columns, to_csr
from features.stores.feast.names import hidden_view_name, view_name
from features.stores.feast.offline import FeatureGrid, build_offline_sources
from features.stores.shards import ShardWriter

WIDTH, D_MODEL = 64, 8
EVENT_TIMES = {"alpha": "2025-01-01", "beta": "2025-03-01"}


def random_codes(rows: int, seed: int, width: int = WIDTH, empty: tuple[int, ...] = (0,)) -> csr_matrix:
    """Non-negative pooled codes with a few exactly-1.0 values (binarization edge) and some empty rows."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((rows, width)) < 0.15, rng.choice([0.5, 1.0, 2.5], size=(rows, width)), 0.0)
    dense[list(empty)] = 0.0
    return csr_matrix(dense.astype(np.float32))


def write_dataset(root: Path, model: str, dataset: str, rows: int, seed: int) -> dict[str, object]:
    """A prepared parquet and an extract-style feature folder (codes of l1/sae64, sum; hidden l1 last)."""
    ids = [f"{dataset}-{i:03d}" for i in range(rows)]
    prepared = root / "data" / "prepared" / f"{dataset}.parquet"
    prepared.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "text_id": ids, "text": [f"text {i}" for i in range(rows)], "label": np.arange(rows) % 2,
        "label_name": np.where(np.arange(rows) % 2, "yes", "no"),
        "split": np.where(np.arange(rows) < rows - 3, "train", "test"),
        "lang": "en", "event_timestamp": pd.Timestamp(EVENT_TIMES[dataset], tz="UTC"),
    }).iloc[::-1].to_parquet(prepared)  # reversed: rows are matched by id, not by position
    codes = random_codes(rows, seed)
    hidden = np.random.default_rng(seed).normal(size=(rows, D_MODEL)).astype(np.float32)
    folder = root / "data" / "features" / model / dataset
    with ShardWriter(folder, shard_rows=7) as writer:
        writer.append(ids, sparse={codes_name(1, "64", "sum"): codes}, dense={hidden_name(1, "last"): hidden})
    return {"ids": ids, "codes": codes, "hidden": hidden, "prepared": prepared, "folder": folder}


@pytest.mark.parametrize("as_input", ["arrow", "lists", "pandas"])
def test_sparse_columns_round_trip_keeps_empty_rows(as_input: str) -> None:
    codes = random_codes(9, seed=1, empty=(0, 4, 8))
    ids, values = sparse_columns(codes)
    assert ids.type.value_type.bit_width == 32 and str(values.type.value_type) == "float"
    if as_input == "lists":  # what get_online_features(...).to_dict() gives, with None for an unknown text
        ids, values = ids.to_pylist() + [None], values.to_pylist() + [None]
    elif as_input == "pandas":  # what get_historical_features(...).to_df() gives
        ids, values = pd.Series(ids.to_pandas().tolist() + [None]), pd.Series(values.to_pandas().tolist() + [None])
    back = to_csr(ids, values, WIDTH)
    unknown_rows = 0 if as_input == "arrow" else 1
    expected = _vstack([codes, csr_matrix((unknown_rows, WIDTH), dtype=np.float32)])
    assert back.shape == expected.shape and (back != expected).nnz == 0
    assert [len(row) for row in sparse_columns(codes)[0].to_pylist()][::4] == [0, 0, 0]


def test_to_csr_of_ids_only_gives_ones_and_checks_the_width() -> None:
    binary = to_csr([[3, 1], [], None, [63]], None, WIDTH)
    assert binary.toarray()[[0, 0, 3], [1, 3, 63]].tolist() == [1.0, 1.0, 1.0] and binary.nnz == 3
    with pytest.raises(SaefsError, match="outside a width of 10"):
        to_csr([[3, 12]], None, 10)
    with pytest.raises(SaefsError, match="disagree in length"):
        to_csr([[1, 2]], [[0.5]], WIDTH)


@pytest.mark.parametrize(("threshold", "op", "name"), [
    (None, ">", "gemma3_270m__l9__sae4k__sum__raw"),
    (1.0, ">", "gemma3_270m__l9__sae4k__sum__bin1"),
    (0.5, ">", "gemma3_270m__l9__sae4k__sum__bin0p5"),
    (1.0, ">=", "gemma3_270m__l9__sae4k__sum__binge1"),
    (0.001, ">", "gemma3_270m__l9__sae4k__sum__bin0p001"),
])
def test_view_names_carry_the_grid_cell(threshold: float | None, op: str, name: str) -> None:
    assert view_name("gemma3_270m", 9, "4k", "sum", threshold, op) == name  # type: ignore[arg-type]


def test_hidden_view_names() -> None:
    assert hidden_view_name("gemma3_270m", 9, "last") == "gemma3_270m__l9__hidden__last"


def test_catalog_round_trip_and_clear_errors(tmp_path: Path) -> None:
    views = [ViewSpec("m__l1__sae64__sum__bin1", "binary", "data/x.parquet", 64, 10, "m", 1, "64", "sum", 1.0, ">"),
             ViewSpec("m__l1__hidden__last", "dense", "data/h.parquet", 8, 10, "m", 1, None, "last")]
    write_catalog(tmp_path / "catalog.json", views)
    assert read_catalog(tmp_path / "catalog.json") == views
    assert views[0].tags() == {"kind": "binary", "width": "64", "model": "m", "layer": "1", "sae": "64",
                               "pooling": "sum", "threshold": "1.0", "op": ">"}
    with pytest.raises(SaefsError, match="appear twice"):
        write_catalog(tmp_path / "twice.json", [views[1], views[1]])
    with pytest.raises(SaefsError, match="run `dvc repro build_features` first"):
        read_catalog(tmp_path / "missing.json")


def test_offline_sources_hold_every_dataset_row_with_its_event_time(tmp_path: Path) -> None:
    data = {name: write_dataset(tmp_path, "m", name, rows, seed) for seed, (name, rows) in
            enumerate([("alpha", 12), ("beta", 9)])}
    grid = FeatureGrid(layers=[1], widths=["64"], poolings=["sum"], hidden_poolings=["last"],
                       thresholds=[None, 1.0], op=">")
    out = tmp_path / "data" / "feast" / "sources" / "m"
    views = build_offline_sources("m", {n: d["folder"] for n, d in data.items()},
                                  {n: d["prepared"] for n, d in data.items()}, grid, out)

    assert [(v.name, v.kind, v.width, v.n_rows) for v in views] == [
        ("m__l1__sae64__sum__raw", "sparse", 64, 21), ("m__l1__sae64__sum__bin1", "binary", 64, 21),
        ("m__l1__hidden__last", "dense", D_MODEL, 21)]
    assert read_catalog(out / "catalog.json") == views and all(Path(v.path).parent == out for v in views)
    raw, binary, hidden = (pq.read_table(v.path).to_pandas() for v in views)
    codes = _vstack([data["alpha"]["codes"], data["beta"]["codes"]])
    assert raw["text_id"].tolist() == data["alpha"]["ids"] + data["beta"]["ids"]
    assert raw["event_timestamp"].dt.strftime("%Y-%m-%d").tolist() == ["2025-01-01"] * 12 + ["2025-03-01"] * 9
    assert (raw["created"] == raw["event_timestamp"]).all()
    assert (to_csr(raw["latent_ids"], raw["latent_values"], 64) != codes).nnz == 0
    assert (to_csr(binary["latent_ids"], None, 64) != binarize_codes(codes, 1.0)).nnz == 0
    assert "latent_values" not in binary.columns
    assert np.array_equal(np.stack(hidden["hidden"]), np.concatenate([data["alpha"]["hidden"], data["beta"]["hidden"]]))


def _vstack(parts: list[csr_matrix]) -> csr_matrix:
    from scipy.sparse import vstack

    return vstack(parts, format="csr")


def test_offline_sources_refuse_stale_features(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, "m", "alpha", 10, 0)
    prepared = pd.read_parquet(data["prepared"])
    prepared.iloc[:9].to_parquet(data["prepared"])  # one text fewer than the features
    with pytest.raises(SaefsError, match="features are stale, run `dvc repro extract`"):
        build_offline_sources("m", {"alpha": data["folder"]}, {"alpha": data["prepared"]},
                              FeatureGrid([1], ["64"], ["sum"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_offline_sources_refuse_a_text_id_in_two_datasets(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, "m", "alpha", 5, 0)
    with pytest.raises(SaefsError, match="appear more than once"):  # a Feast entity key must be unique
        build_offline_sources("m", {"alpha": data["folder"], "again": data["folder"]},
                              {"alpha": data["prepared"], "again": data["prepared"]},
                              FeatureGrid([1], ["64"], ["sum"]), tmp_path / "out")
