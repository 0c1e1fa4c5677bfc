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

from feature_repo.objects import repo_objects
from features.core.binarize import binarize_codes
from features.errors import SaefsError
from features.stores.feast.catalog import read_catalog
from features.stores.feast.columns import to_csr
from features.stores.feast.names import hidden_view_name, view_name
from features.stores.feast.retrieval import historical_frame
from features.stores.feast.store import apply_objects, open_store
from pipelines import build_features, feast_apply, materialize, paths
from pipelines.params import ParamsError, parse_params
from tests.features.test_feature_store import EVENT_TIMES, write_dataset
from tests.helpers import REPO, embedded_params, write_params

MODEL, WIDTH = "tiny", 64
RAW, BIN1 = view_name(MODEL, 1, "64", "sum"), view_name(MODEL, 1, "64", "sum", 1.0)
HIDDEN = hidden_view_name(MODEL, 1, "last")


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
    return data


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A scratch project after the three stages: its store, the shards' matrices, whether materialize left the
    registry as feast_apply wrote it."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        from feast import FeatureStore  # its import puts "once" filters first: put ours before them, in here

        warnings.simplefilter("ignore", DeprecationWarning)
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
    assert sorted(v.name for v in store.list_feature_views()) == sorted([RAW, BIN1, HIDDEN])
    assert sorted(s.name for s in store.list_feature_services()) == sorted([RAW, BIN1, HIDDEN])
    assert project["registry_unchanged"]  # feast_apply's DVC output stays as it wrote it
    assert (project["root"] / "data" / "feast" / "catalog.json").is_file()


def test_receipts_say_what_was_registered_and_materialized_where(project) -> None:
    root = project["root"]
    applied = json.loads((root / paths.feast_applied()).read_text())
    assert applied["registry"] == {"type": "file", "address": str(paths.feast_registry())}
    assert applied["feature_views"] == sorted([RAW, BIN1, HIDDEN]) and len(applied["feature_services"]) == 3
    materialized = json.loads((root / paths.feast_materialized()).read_text())
    assert materialized["online_store"] == {"type": "sqlite", "address": str(paths.feast_online_store())}
    assert materialized["rows"] == {RAW: 50, BIN1: 50, HIDDEN: 50}


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


def test_historical_frames_equal_the_shards(project) -> None:
    store, ids, codes = project["store"], project["ids"], project["codes"]
    entities = entity_frame(ids)
    raw, width = historical_frame(store, RAW, entities)
    matrix = to_csr(raw["latent_ids"], raw["latent_values"], width)
    assert (matrix[: len(ids)] != codes).nnz == 0 and matrix[len(ids):].nnz == 0 and width == WIDTH
    binary, _ = historical_frame(store, BIN1, entities)
    assert list(binary.columns) == ["latent_ids"]
    assert (to_csr(binary["latent_ids"], None, WIDTH)[: len(ids)] != binarize_codes(codes, 1.0)).nnz == 0
    hidden, _ = historical_frame(store, HIDDEN, entities)
    np.testing.assert_array_equal(np.stack(hidden["hidden"][: len(ids)]), project["hidden"])
    assert hidden["hidden"][len(ids):].isna().all()


def test_apply_deletes_what_the_catalog_no_longer_lists(project, tmp_path: Path) -> None:
    store, root = open_store(copy_repo(tmp_path)), project["root"]
    apply_objects(store, repo_objects(read_catalog(root / paths.feast_catalog()), root))
    assert sorted(v.name for v in store.list_feature_views()) == sorted([RAW, BIN1, HIDDEN])
    apply_objects(store, repo_objects([], root))  # without views the repo defines only the entity
    assert [e.name for e in store.list_entities()] == ["text"] and store.list_data_sources() == []
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
