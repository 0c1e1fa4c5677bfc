"""build_features -> feast_apply -> materialize in a scratch project, then online and historical reads.

Imports feast once (about 16 s); the stages run in this process, as DVC would run them one by one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.sparse import vstack

from features.errors import SaefsError
from features.stores.feature_store import (
    apply_repo,
    binarize_codes,
    hidden_view_name,
    historical_matrix,
    on_demand_view_name,
    open_store,
    to_csr,
    view_name,
)
from pipelines import build_features, feast_apply, materialize, paths
from pipelines.params import ParamsError, parse_params
from tests.features.test_feature_store import EVENT_TIMES, write_dataset
from tests.helpers import REPO, embedded_params, write_params

MODEL, WIDTH = "tiny", 64
RAW, BIN1 = view_name(MODEL, 1, "64", "sum"), view_name(MODEL, 1, "64", "sum", 1.0)
HIDDEN, ON_DEMAND = hidden_view_name(MODEL, 1, "last"), on_demand_view_name(RAW)


def copy_repo(root: Path) -> Path:
    return Path(shutil.copytree(REPO / "feature_repo", root / "feature_repo",
                                ignore=shutil.ignore_patterns("__pycache__", "data")))


def build_offline_sources(root: Path) -> dict[str, dict[str, Any]]:
    """In `root` (the working directory): the Feast repo, shards of two datasets, params, and build_features."""
    copy_repo(root)
    data = {name: write_dataset(root, MODEL, name, rows, seed)
            for seed, (name, rows) in enumerate([("alpha", 30), ("beta", 20)])}
    params = embedded_params(
        models={MODEL: {"source": "path:tiny"}},
        datasets={name: {"source": f"file:{name}.csv", "labels": [0, 1]} for name in data},
        sae={MODEL: {"layers": [1], "widths": ["64"], "source": "train"}},
    )
    params["extract"] |= {"poolings": ["sum"]}
    params["build_features"] = {"binarize": [None, 1.0], "binarize_op": ">", "hidden": ["last"]}
    params["train_probes"] |= {"poolings": ["sum"], "hidden": ["last"]}
    write_params(root, params)
    build_features.run(MODEL)
    build_features.run("labels")
    return data


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A scratch project after the three stages: its store, the shards' matrices, whether materialize left the
    registry as feast_apply wrote it."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        from feast import FeatureStore  # its import puts "once" filters first: put ours before them, in here

        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "On demand feature view is an experimental feature", RuntimeWarning)
        patch.chdir(root)
        data = build_offline_sources(root)
        feast_apply.run("feature_repo")
        registry = root / paths.feast_registry()
        applied = hashlib.sha256(registry.read_bytes()).hexdigest()
        materialize.run("feature_repo")
        built = {
            "store": FeatureStore(repo_path=str(root / "feature_repo")),
            "ids": data["alpha"]["ids"] + data["beta"]["ids"],
            "codes": vstack([data["alpha"]["codes"], data["beta"]["codes"]], format="csr"),
            "hidden": np.concatenate([data["alpha"]["hidden"], data["beta"]["hidden"]]),
            "registry_unchanged": hashlib.sha256(registry.read_bytes()).hexdigest() == applied,
            "root": root,
        }
    return built


def entity_frame(ids: list[str]) -> pd.DataFrame:
    """Every text at its own event time, then a beta text asked for before its features existed, then an unknown."""
    times = [EVENT_TIMES[text_id.split("-")[0]] for text_id in ids]
    return pd.DataFrame({
        "text_id": [*ids, ids[-1], "nowhere-000"],
        "event_timestamp": pd.to_datetime([*times, "2025-02-01", "2025-06-01"], utc=True),
    })


def test_stages_register_views_and_services_without_materialize_touching_the_registry(project) -> None:
    store = project["store"]
    assert sorted(v.name for v in store.list_feature_views()) == sorted([RAW, BIN1, HIDDEN, "labels"])
    assert [v.name for v in store.list_on_demand_feature_views()] == [ON_DEMAND]
    assert sorted(s.name for s in store.list_feature_services()) == sorted([RAW, BIN1, HIDDEN, "labels", ON_DEMAND])
    assert project["registry_unchanged"]  # feast_apply's DVC output stays as it wrote it
    assert (project["root"] / "data" / "feast" / "catalog.json").is_file()


def test_receipts_say_what_was_registered_and_materialized_where(project) -> None:
    root = project["root"]
    applied = json.loads((root / paths.feast_applied()).read_text())
    assert applied["registry"] == {"type": "file", "address": str(paths.feast_registry())}
    assert applied["feature_views"] == sorted([RAW, BIN1, HIDDEN, "labels"])
    assert applied["on_demand_feature_views"] == [ON_DEMAND] and len(applied["feature_services"]) == 5
    materialized = json.loads((root / paths.feast_materialized()).read_text())
    assert materialized["online_store"] == {"type": "sqlite", "address": str(paths.feast_online_store())}
    assert materialized["rows"] == {RAW: 50, BIN1: 50, HIDDEN: 50}  # labels are offline only


def test_a_feast_configuration_other_than_the_params_one_is_refused(project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project["root"])
    applied = (project["root"] / paths.feast_applied()).read_bytes()
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", "feature_repo/feature_store.cluster.yaml")
    with pytest.raises(SaefsError, match=r"FEAST_FS_YAML_FILE_PATH=feature_repo/feature_store\.cluster\.yaml but "
                       r"params\.yaml feast_apply\.feature_store_yaml is feature_repo/feature_store\.yaml"):
        feast_apply.run("feature_repo")
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(project["root"] / "feature_repo" / "feature_store.yaml"))
    materialize.run("feature_repo")  # the same file, spelt otherwise: agreed
    monkeypatch.delenv("FEAST_FS_YAML_FILE_PATH")
    original = Path("params.yaml").read_text()
    write_params(project["root"], {**yaml.safe_load(original),
                                   "feast_apply": {"feature_store_yaml": "feature_repo/feature_store.redis.yaml"}})
    try:
        with pytest.raises(SaefsError, match=r"feast_apply\.feature_store_yaml: feature_repo/feature_store\.redis"
                           r"\.yaml not found"):
            materialize.run("feature_repo")
    finally:
        Path("params.yaml").write_text(original)
    assert (project["root"] / paths.feast_applied()).read_bytes() == applied


def test_online_features_equal_the_shards(project) -> None:
    store, ids, codes = project["store"], project["ids"], project["codes"]
    rows = [0, 7, 31, 49]  # row 0 of each dataset has no active latent
    entity_rows = [{"text_id": ids[i]} for i in rows]
    raw = store.get_online_features(features=store.get_feature_service(RAW), entity_rows=entity_rows).to_dict()
    assert (to_csr(raw["latent_ids"], raw["latent_values"], WIDTH) != codes[rows]).nnz == 0
    binary = store.get_online_features(features=store.get_feature_service(BIN1), entity_rows=entity_rows).to_dict()
    assert (to_csr(binary["latent_ids"], None, WIDTH) != binarize_codes(codes[rows], 1.0)).nnz == 0
    hidden = store.get_online_features(features=[f"{HIDDEN}:hidden"], entity_rows=entity_rows).to_dict()
    np.testing.assert_array_equal(np.array(hidden["hidden"], dtype=np.float32), project["hidden"][rows])


def test_historical_features_keep_every_entity_row(project) -> None:
    store, ids = project["store"], project["ids"]
    entities = entity_frame(ids)
    df = store.get_historical_features(entity_df=entities, features=store.get_feature_service(RAW)).to_df()
    assert len(df) == len(entities)  # the file offline store would drop the row that predates its features
    by_row = df.set_index(["text_id", "event_timestamp"])["latent_ids"]
    assert not isinstance(by_row.loc[(ids[-1], pd.Timestamp("2025-02-01", tz="UTC"))], list | np.ndarray)


def test_historical_matrix_equals_the_shards(project) -> None:
    store, ids, codes = project["store"], project["ids"], project["codes"]
    entities = entity_frame(ids)
    matrix, frame = historical_matrix(store, RAW, entities)
    assert frame["text_id"].tolist() == entities["text_id"].tolist()
    assert (matrix[: len(ids)] != codes).nnz == 0 and matrix[len(ids):].nnz == 0 and matrix.shape[1] == WIDTH
    binary, _ = historical_matrix(store, BIN1, entities)
    assert (binary[: len(ids)] != binarize_codes(codes, 1.0)).nnz == 0
    hidden, _ = historical_matrix(store, HIDDEN, entities)
    np.testing.assert_array_equal(hidden[: len(ids)], project["hidden"])
    assert np.isnan(hidden[len(ids):]).all()
    labels = store.get_historical_features(entity_df=entities, features=store.get_feature_service("labels")).to_df()
    assert labels.set_index("text_id").loc[ids[:4], "label"].tolist() == [0, 1, 0, 1]


def test_on_demand_view_binarizes_at_the_request_threshold(project) -> None:
    store, ids, codes = project["store"], project["ids"], project["codes"]
    rows, thresholds = [3, 35, 12], [1.0, 0.4, 2.0]
    online = store.get_online_features(
        features=store.get_feature_service(ON_DEMAND),
        entity_rows=[{"text_id": ids[i], "threshold": t} for i, t in zip(rows, thresholds, strict=True)]).to_dict()
    for got, row, threshold in zip(online["active_ids"], rows, thresholds, strict=True):
        assert got == binarize_codes(codes[row], threshold).indices.tolist()
    entities = pd.DataFrame({"text_id": [ids[i] for i in rows], "threshold": thresholds,
                             "event_timestamp": pd.Timestamp("2025-06-01", tz="UTC")})
    offline, _ = historical_matrix(store, ON_DEMAND, entities)
    expected = vstack([binarize_codes(codes[r], t) for r, t in zip(rows, thresholds, strict=True)], format="csr")
    assert (offline != expected).nnz == 0


def test_repo_without_a_catalog_defines_only_the_entity(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path)  # no data/feast/catalog.json next to this copy
    store = open_store(repo)
    apply_repo(store)
    assert [e.name for e in store.list_entities()] == ["text"]
    assert store.list_feature_views() == [] and store.list_feature_services() == []


def test_build_features_params_name_the_bad_key() -> None:
    params = embedded_params()
    params.pop("build_features")
    with pytest.raises(ParamsError, match=r"build_features: Field required"):
        parse_params(params)
    params["build_features"] = {"binarize": [None, 1.0], "binarize_opp": ">", "hidden": []}
    with pytest.raises(ParamsError, match=r"build_features\.binarize_opp: unknown key \(allowed here: binarize, "):
        parse_params(params)
    params["build_features"] = {"binarize": [None, 1.0, 1.0], "binarize_op": ">", "hidden": []}
    with pytest.raises(ParamsError, match=r"build_features\.binarize: .*repeats a threshold"):
        parse_params(params)
    params["build_features"] = {"binarize": [None, 1.0], "binarize_op": ">=", "hidden": ["last", "mean"]}
    assert parse_params(params).build_features.binarize_op == ">="


def test_an_unknown_text_is_missing_online_never_an_all_zero_vector(project) -> None:
    store = project["store"]
    rows = [{"text_id": project["ids"][1]}, {"text_id": "alpha-0000000000000000"}]
    raw = store.get_online_features(features=store.get_feature_service(RAW), entity_rows=rows).to_dict()
    assert raw["latent_ids"][0] is not None and raw["latent_ids"][1] is None and raw["latent_values"][1] is None


def test_materializing_twice_changes_nothing(project, monkeypatch: pytest.MonkeyPatch) -> None:
    store, ids = project["store"], project["ids"]
    entity_rows = [{"text_id": text_id} for text_id in ids]
    before = store.get_online_features(features=store.get_feature_service(RAW), entity_rows=entity_rows).to_dict()
    monkeypatch.chdir(project["root"])
    materialize.run("feature_repo")
    after = store.get_online_features(features=store.get_feature_service(RAW), entity_rows=entity_rows).to_dict()
    assert after == before
