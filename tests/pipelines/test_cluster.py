"""The cluster profile against real servers on 127.0.0.1: Redis, PostgreSQL, moto's S3 and an MLflow server
(tests/services.py).

The whole pipeline: `dvc repro` of test_dvc_pipeline's scratch project on the cluster configuration
(the Feast registry in PostgreSQL, the online store in Redis, MLflow at a server backed by PostgreSQL
with its artifacts in the bucket, extraction on 2 torchrun workers), then the scoring service on
Redis and `dvc push`/`dvc pull` of every output through the bucket. A slice of it in this process:
feast_apply and materialize (feature_repo/feature_store.cluster.yaml), a probe trained on features
read from Redis and tracked by a client that writes to PostgreSQL and the bucket itself. Unreachable
services. That 2 workers write the shards of one is tested in test_sae_stages.py (it needs no server).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
import yaml

from features.core.prepare import text_id
from features.core.probes import make_probe
from features.errors import SaefsError
from features.stores import tracking
from features.stores.feast.columns import to_csr
from features.stores.feast.store import open_store
from features.stores.services import check_bucket, check_dvc_remote
from features.stores.shards import ShardWriter
from pipelines import build_features, check_services, feast_apply, materialize, paths, serve
from pipelines.params import load_params
from pipelines.stores import stale_receipts
from tests.features.test_feature_store import random_codes
from tests.features.test_probes import FAST
from tests.helpers import write_params
from tests.pipelines.test_feature_stages import BIN1, MODEL, RAW, WIDTH, build_offline_sources
from tests.scratch import ALWAYS, STAGES, build_scratch_repo, dvc, ran, tiny_params
from tests.services import S3_ENV, Services, free_port, missing_binaries, running_services

pytestmark = pytest.mark.integration
CLUSTER_YAML = "feature_repo/feature_store.cluster.yaml"


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"{missing} not installed: `apt-get install redis-server postgresql` (.ci/run does)")
    with running_services() as running:
        yield running


@pytest.fixture(scope="module")
def cluster(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A scratch project after build_features, feast_apply and materialize on the cluster configuration."""
    root = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        patch.chdir(root)
        for key, value in {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": services.s3_endpoint, "SAEFS_REDIS": services.redis,
                           "SAEFS_FEAST_REGISTRY": services.postgres("feast")}.items():
            patch.setenv(key, value)
        data = build_offline_sources(root)
        write_params(root, yaml.safe_load(Path("params.yaml").read_text())
                     | {"feast_apply": {"feature_store_yaml": CLUSTER_YAML}})
        feast_apply.run("feature_repo")
        materialize.run("feature_repo")
        yield {"root": root, "store": open_store("feature_repo", CLUSTER_YAML), "data": data}


def test_feast_registers_in_postgres_and_serves_from_redis(cluster: dict[str, Any], services: Services) -> None:
    import redis

    check_services.run("feature_repo")  # the preflight passes: every configured service answers
    store, data = cluster["store"], cluster["data"]
    assert RAW in {view.name for view in store.list_feature_views()}
    assert not (paths.feast_registry()).exists() and not paths.feast_online_store().exists()  # nothing local
    assert redis.Redis(port=int(services.redis.split(":")[1])).dbsize() > 0
    ids = data["alpha"]["ids"] + data["beta"]["ids"]
    codes = np.concatenate([data["alpha"]["codes"].toarray(), data["beta"]["codes"].toarray()])
    rows = [1, 7, 31, 49]
    online = store.get_online_features(features=store.get_feature_service(RAW),
                                       entity_rows=[{"text_id": ids[i]} for i in rows]).to_dict()
    np.testing.assert_array_equal(to_csr(online["latent_ids"], online["latent_values"], WIDTH).toarray(), codes[rows])


def test_a_store_other_than_the_receipts_say_is_named(cluster: dict[str, Any], services: Services,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert stale_receipts(cluster["store"]) == []
    monkeypatch.setenv("SAEFS_REDIS", f"{services.redis},db=3")  # reachable, but never materialized
    [line] = stale_receipts(open_store("feature_repo", CLUSTER_YAML))
    assert line.startswith(f"{paths.feast_materialized()} records the online store at redis {services.redis}/0, but "
                           f"the configuration names redis {services.redis}/3: ")
    assert line.endswith("`dvc repro -f feast_apply materialize`")
    with caplog.at_level(logging.WARNING, logger="saefs.check_services"):
        check_services.run("feature_repo")
    assert line in caplog.text


def test_probe_tracked_in_postgres_with_s3_artifacts_scores_redis_features(cluster: dict[str, Any],
                                                                          services: Services) -> None:
    import mlflow

    store, data = cluster["store"], cluster["data"]
    ids = data["alpha"]["ids"] + data["beta"]["ids"]
    labels = np.arange(len(ids)) % 2
    online = store.get_online_features(features=store.get_feature_service(RAW),
                                       entity_rows=[{"text_id": text_id} for text_id in ids]).to_df()
    frame = online[["latent_ids", "latent_values"]]
    try:
        assert tracking.configure(services.postgres("mlflow")).startswith("postgresql+psycopg2://")
        tracking.experiment("saefs/cluster", artifact_location="s3://saefs-mlflow/artifacts")
        probe = make_probe("logreg", width=WIDTH, **FAST).fit(frame, labels)
        with tracking.start_parent("train_probes:cluster"):
            info = tracking.log_probe(probe, frame, registered_model_name=f"saefs-{MODEL}")
        tracking.set_alias(f"saefs-{MODEL}", tracking.CHAMPION, info.registered_model_version)
        served = mlflow.pyfunc.load_model(f"models:/saefs-{MODEL}@champion")  # downloads from the bucket
        np.testing.assert_allclose(served.predict(frame), probe.predict_proba(frame), rtol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    s3 = boto3.client("s3", endpoint_url=services.s3_endpoint)
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="saefs-mlflow")["Contents"]]
    assert any(key.startswith("artifacts/") and key.endswith("MLmodel") for key in keys)


def test_dvc_pushes_and_pulls_features_through_the_bucket(cluster: dict[str, Any], services: Services,
                                                          tmp_path: Path) -> None:
    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, check=True, capture_output=True)

    folder = tmp_path / "data" / "features" / MODEL / "texts"
    with ShardWriter(folder, shard_rows=16) as writer:
        writer.append([f"t{i}" for i in range(40)], sparse={"codes": random_codes(40, seed=3)})
    stored = {path.relative_to(tmp_path): path.read_bytes() for path in folder.iterdir()}
    dvc("init", "--no-scm")
    dvc("config", "core.analytics", "false")
    dvc("remote", "add", "-d", "cluster", "s3://saefs-dvc/store")
    dvc("remote", "modify", "cluster", "endpointurl", services.s3_endpoint)
    dvc("add", "data/features")
    dvc("push")
    subprocess.run(["rm", "-rf", str(tmp_path / "data" / "features"), str(tmp_path / ".dvc" / "cache")], check=True)
    dvc("pull")
    assert {path: (tmp_path / path).read_bytes() for path in stored} == stored
    listed = boto3.client("s3", endpoint_url=services.s3_endpoint).list_objects_v2(Bucket="saefs-dvc")
    assert listed["KeyCount"] >= len(stored)
    check_dvc_remote(tmp_path)
    dvc("remote", "modify", "cluster", "url", "s3://saefs-gone/store")
    with pytest.raises(SaefsError, match=r"DVC remote 'cluster' bucket s3://saefs-gone at http://127\.0\.0\.1:"):
        check_dvc_remote(tmp_path)


@pytest.mark.parametrize("variable, component", [("SAEFS_REDIS", "Feast online store (Redis)"),
                                                 ("SAEFS_FEAST_REGISTRY", "Feast registry (PostgreSQL)")])
def test_unreachable_feast_service_is_named_and_leaves_the_catalog(cluster: dict[str, Any], variable: str,
                                                                   component: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    address = f"127.0.0.1:{port}" if variable == "SAEFS_REDIS" else f"postgresql+psycopg2://saefs@127.0.0.1:{port}/x"
    monkeypatch.setenv(variable, address)
    catalog = paths.feast_catalog().read_bytes()
    for stage in (feast_apply, materialize, check_services):
        with pytest.raises(SaefsError, match=rf"{re.escape(component)} at 127\.0\.0\.1:{port} is unreachable"):
            stage.run("feature_repo")
    assert paths.feast_catalog().read_bytes() == catalog


def test_apply_deletes_the_redis_keys_of_a_view_the_catalog_drops(cluster: dict[str, Any], services: Services) -> None:
    import redis

    def views_in_redis() -> set[str]:
        client = redis.Redis(port=int(services.redis.split(":")[1]))
        return {field.decode()[4:] for key in client.scan_iter() for field in client.hkeys(key)
                if field.startswith(b"_ts:")}

    assert {RAW, BIN1} <= views_in_redis()
    full = Path("params.yaml").read_text()
    params = yaml.safe_load(full)
    params["build_features"]["binarize"] = params["train_probes"]["binarize"] = [None]
    params["lodo"]["binarize"] = None  # lodo reads a view that is still built
    write_params(cluster["root"], params)
    try:
        build_features.run(MODEL)
        feast_apply.run("feature_repo")  # the SQL registry still lists BIN1, so apply deletes it online too
        assert RAW in views_in_redis() and BIN1 not in views_in_redis()
    finally:
        Path("params.yaml").write_text(full)
        build_features.run(MODEL)
        feast_apply.run("feature_repo")
        materialize.run("feature_repo")
    assert {RAW, BIN1} <= views_in_redis()


def test_unreachable_mlflow_and_missing_bucket_are_named(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SaefsError, match=rf"MLflow tracking store \(postgresql\) at 127\.0\.0\.1:{port} is unreach"):
        tracking.configure(f"postgresql+psycopg2://saefs@127.0.0.1:{port}/mlflow")
    with pytest.raises(SaefsError, match=rf"s3://saefs-dvc\) at 127\.0\.0\.1:{port} is unreachable"):
        check_bucket("DVC remote", "s3://saefs-dvc/store", f"http://127.0.0.1:{port}")
    with pytest.raises(SaefsError, match="DVC remote bucket s3://no-such-bucket at http://127.0.0.1:.* cannot be used"):
        check_bucket("DVC remote", "s3://no-such-bucket/store", services.s3_endpoint)
    check_bucket("DVC remote", "s3://saefs-dvc/store", services.s3_endpoint)



# --- the whole pipeline: `dvc repro` on the cluster profile -----------------------------------------

@pytest.fixture(scope="module")
def pipeline(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """test_dvc_pipeline's scratch project on the cluster profile, after `dvc repro` (twice) against the services;
    its own Feast registry database and Redis database, beside the slice's."""
    params = tiny_params() | {"profile": "cluster", "feast_apply": {"feature_store_yaml": CLUSTER_YAML},
                              "scale_out": {"extract_workers": 2}}
    # gates any probe passes (the labels are random), so that alpha has a champion to serve
    params["promote"] |= {"tracking_uri": services.mlflow, "min_macro_f1": 0.0, "max_drop_vs_hidden": None}
    params["serve"] |= {"datasets": ["alpha"], "torch_threads": 0, "champion_poll_s": 0.0}
    repo = build_scratch_repo(tmp_path_factory.mktemp("pipeline"), params)
    env = {"SAEFS_REDIS": f"{services.redis},db=1", "SAEFS_FEAST_REGISTRY": services.postgres("feast_pipeline")}
    first = dvc(repo, "repro", env=env)  # no S3 credentials: MLflow's server writes the bucket for its clients
    return {"repo": repo, "env": env, "first": first, "second": dvc(repo, "repro", env=env)}


def test_dvc_repro_runs_every_stage_on_the_services_then_nothing(pipeline: dict[str, Any], services: Services) -> None:
    import redis

    repo = pipeline["repo"]
    assert ran(pipeline["first"]) == STAGES and ran(pipeline["second"]) == ALWAYS
    assert pipeline["first"].count("extracting with 2 workers (torchrun)") == 2  # extract@tiny-alpha and -beta
    applied = json.loads((repo / paths.feast_applied()).read_text())
    assert applied["registry"] == {"type": "sql", "address": f"127.0.0.1:{services.postgres_port}/feast_pipeline"}
    materialized = json.loads((repo / paths.feast_materialized()).read_text())
    assert materialized["online_store"] == {"type": "redis", "address": f"{services.redis}/1"}
    assert set(materialized["rows"]) == set(applied["feature_views"])
    assert set(materialized["rows"].values()) == {200}  # every text of alpha and beta, in each view
    assert redis.Redis(port=int(services.redis.split(":")[1]), db=1).dbsize() == 200  # one hash per text
    for local in (paths.feast_registry(), paths.feast_online_store(), Path("mlflow.db"), Path("mlartifacts")):
        assert not (repo / local).exists(), f"{local} was written locally"


def test_probes_models_and_aliases_live_in_the_mlflow_server_with_artifacts_in_the_bucket(
        pipeline: dict[str, Any], services: Services) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=services.mlflow, registry_uri=services.mlflow)
    assert {"saefs/alpha", "saefs/beta", "saefs/transfer"} <= {e.name for e in client.search_experiments()}
    report = json.loads((pipeline["repo"] / paths.promotion_report("alpha")).read_text())
    assert int(client.get_model_version_by_alias("saefs-alpha", tracking.CHAMPION).version) == report["champion"]
    pages = boto3.client("s3", endpoint_url=services.s3_endpoint).get_paginator("list_objects_v2")
    keys = [item["Key"] for page in pages.paginate(Bucket="saefs-mlflow", Prefix="served/")
            for item in page.get("Contents", [])]
    assert any(key.endswith("/MLmodel") for key in keys) and any(key.endswith(".png") for key in keys)


def test_scoring_reads_the_champion_from_the_server_and_features_from_redis(
        pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(pipeline["repo"])
    for key, value in pipeline["env"].items():
        monkeypatch.setenv(key, value)
    alpha, beta = pd.read_parquet(paths.prepared("alpha")), pd.read_parquet(paths.prepared("beta"))
    try:
        scorer = serve.build_scorer(load_params())
        stored = scorer.score_stored("alpha", alpha["text_id"][:3].tolist())  # materialized into Redis by dvc repro
        assert [score.text_id for score in stored] == alpha["text_id"][:3].tolist()
        champion = json.loads(paths.promotion_report("alpha").read_text())["champion"]
        assert {score.model_version for score in stored} == {champion}
        [again] = scorer.score_texts("alpha", [alpha["text"][0]])  # recomputed, pushed to Redis, read back
        assert again.text_id == stored[0].text_id and np.isclose(again.probability, stored[0].probability, atol=1e-4)
        new = beta["text"][0]  # a text alpha's rows do not hold
        scorer.score_texts("alpha", [new])
        assert scorer.score_stored("alpha", [text_id("alpha", new)])[0].text_id == text_id("alpha", new)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_dvc_pushes_and_pulls_every_pipeline_output_through_the_bucket(pipeline: dict[str, Any],
                                                                       services: Services) -> None:
    repo = pipeline["repo"]
    dvc(repo, "remote", "add", "-d", "cluster", "s3://saefs-dvc/pipeline")
    dvc(repo, "remote", "modify", "cluster", "endpointurl", services.s3_endpoint)
    dvc(repo, "push", env=S3_ENV)
    outputs = {path.relative_to(repo): path.read_bytes() for path in (repo / "data").rglob("*") if path.is_file()}
    assert {path.parts[1] for path in outputs} >= {"models", "prepared", "saes", "features", "feast", "behaviour"}
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    dvc(repo, "pull", env=S3_ENV)
    assert {path.relative_to(repo): path.read_bytes() for path in (repo / "data").rglob("*") if path.is_file()} \
        == outputs
    # every output is back, the receipts of the probes and promotions in the server too: nothing to rerun but
    # the stages DVC always lists
    assert json.loads(dvc(repo, "status", "--json")) == {stage: ["always changed"] for stage in ALWAYS}


def test_switching_back_to_local_stores_reruns_only_the_stages_that_use_them(pipeline: dict[str, Any]) -> None:
    repo = pipeline["repo"]
    cluster = (repo / "params.yaml").read_text()
    params = yaml.safe_load(cluster) | {"profile": "embedded",
                                        "feast_apply": {"feature_store_yaml": "feature_repo/feature_store.yaml"}}
    params["promote"]["tracking_uri"] = "sqlite:///mlflow.db"
    write_params(repo, params)
    try:
        changed = set(json.loads(dvc(repo, "status", "--json")))
    finally:
        (repo / "params.yaml").write_text(cluster)
    assert changed == {"feast_apply", "materialize", *ALWAYS, "train_probes@tiny-alpha",
                       "train_probes@tiny-beta", "promote@alpha", "promote@beta", "transfer",
                       "report"}  # not a forward pass of the model
