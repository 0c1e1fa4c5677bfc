"""check_stores: receipts of results that live in the MLflow store are dropped when the store lost them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from features.stores import tracking
from features.stores.files import write_json
from pipelines import check_stores, paths
from tests.pipelines.test_promote import project  # noqa: F401  (the fixture `store` builds on)

mlflow = pytest.importorskip("mlflow")
MODEL = "gemma3_270m"


@pytest.fixture
def store(request: pytest.FixtureRequest) -> tuple[str, str]:
    """test_promote's project (a probe logged to a scratch store), registered as champion, with both receipts."""
    params, model_uri = request.getfixturevalue("project")
    uri = params["promote"]["tracking_uri"]
    version = tracking.register(model_uri, "saefs-spam")
    tracking.set_alias("saefs-spam", tracking.CHAMPION, version)
    write_json(paths.probes_receipt("spam", MODEL), {"tracking_store": uri, "models": [model_uri]})
    write_json(paths.promotion_receipt("spam"), {"tracking_store": uri, "registered_model": "saefs-spam",
                                                "version": version, "champion": version})
    return uri, model_uri


def test_receipts_the_store_honours_stay(store) -> None:
    assert check_stores.run() == []
    assert json.loads(paths.stores_checked().read_text()) == {"tracking_store": store[0]}


def test_a_logged_probe_whose_artifacts_are_gone_drops_the_probes_receipt(store) -> None:
    _, model_uri = store
    location = mlflow.MlflowClient().get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    shutil.rmtree(location)
    assert check_stores.run() == [paths.probes_receipt("spam", MODEL)]
    assert paths.promotion_receipt("spam").is_file()


def unasked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any question to the MLflow store."""
    def asked(*_args, **_kwargs):
        raise AssertionError("the store was asked")

    for name in ("configure", "logged_model_files", "missing_registration"):
        monkeypatch.setattr(tracking, name, asked)


def test_a_second_check_with_nothing_changed_does_not_ask_the_store(store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_stores.run() == []
    stamped = json.loads(paths.stores_stamp().read_text())
    assert list(stamped["model_files"].values()) == [True] and stamped["receipts"]
    with monkeypatch.context() as patch:
        unasked(patch)
        assert check_stores.run() == []
    mlflow.MlflowClient().set_registered_model_tag("saefs-spam", "note", "a write to the store")
    with monkeypatch.context() as patch:
        unasked(patch)
        with pytest.raises(AssertionError, match="the store was asked"):  # the database changed: checked in full
            check_stores.run()
    assert check_stores.run() == []


def test_a_probe_deleted_after_a_check_drops_its_receipt_at_the_next(store) -> None:
    _, model_uri = store
    assert check_stores.run() == []
    location = mlflow.MlflowClient().get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    shutil.rmtree(location)  # the database unchanged: the stamp's MLmodel file tells
    assert check_stores.run() == [paths.probes_receipt("spam", MODEL)]


def test_only_a_local_sqlite_store_with_local_artifacts_is_stamped(tmp_path: Path) -> None:
    local = (f"sqlite:///{tmp_path}/mlflow.db",) * 2
    assert check_stores.stamp(("postgresql://db:5432/mlflow",) * 2, {}, []) is None
    assert check_stores.stamp((local[0], "http://registry:5000"), {}, []) is None
    assert check_stores.stamp(local, {}, ["s3://bucket/m-1/artifacts/MLmodel"]) is None
    assert check_stores.stamp(local, {}, [])["databases"] == {f"{tmp_path}/mlflow.db{end}": None
                                                             for end in ("", "-journal", "-wal")}


def test_a_lost_champion_alias_or_version_drops_the_promotion_receipt(store) -> None:
    mlflow.MlflowClient().delete_registered_model_alias("saefs-spam", tracking.CHAMPION)
    assert check_stores.run() == [paths.promotion_receipt("spam")]
    receipt = {"tracking_store": store[0], "registered_model": "saefs-spam", "version": 7, "champion": None}
    write_json(paths.promotion_receipt("spam"), receipt)
    assert check_stores.run() == [paths.promotion_receipt("spam")]


def test_another_tracking_store_drops_every_receipt(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    assert sorted(check_stores.run()) == sorted([paths.probes_receipt("spam", MODEL), paths.promotion_receipt("spam")])


def test_a_gone_online_store_drops_the_materialize_receipt(store, tmp_path: Path) -> None:
    """The SQLite online store is no DVC output (the scoring service writes into it): its receipt stands for it."""
    online = tmp_path / "online_store.db"
    online.write_bytes(b"")
    write_json(paths.feast_materialized(), {"online_store": {"type": "sqlite", "address": str(online)}, "rows": {}})
    assert check_stores.run() == [] and paths.feast_materialized().is_file()
    online.unlink()
    assert check_stores.run() == [paths.feast_materialized()] and not paths.feast_materialized().exists()
    write_json(paths.feast_materialized(), {"online_store": {"type": "redis", "address": "localhost:6379/0"}})
    assert check_stores.run() == []  # a Redis store is not checked here
