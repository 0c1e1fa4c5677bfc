"""The cluster profile against real servers on 127.0.0.1: Redis, PostgreSQL and moto's S3 (tests/services.py).

A slice of the pipeline: DVC push and pull through a bucket; feast_apply and materialize with the
registry in PostgreSQL and the online store in Redis (feature_repo/feature_store.cluster.yaml);
a probe trained on features read from Redis, tracked and registered in a PostgreSQL-backed MLflow
with its artifacts in the bucket, then loaded by alias to score them; unreachable services.
The 2-worker extraction is tested in test_sae_stages.py (it needs no server).
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from features import tracking
from features.errors import SaefsError
from features.feature_store import open_store, to_csr
from features.probes import make_probe
from features.services import check_bucket, check_dvc_remote
from features.shards import ShardWriter
from pipelines import check_services, feast_apply, materialize, paths
from tests.features.test_feature_store import random_codes
from tests.features.test_probes import FAST
from tests.pipelines.test_feature_stages import MODEL, RAW, WIDTH, build_offline_sources
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
                           "SAEFS_FEAST_REGISTRY": services.postgres("feast"),
                           "FEAST_FS_YAML_FILE_PATH": str(root / CLUSTER_YAML)}.items():
            patch.setenv(key, value)
        data = build_offline_sources(root)
        feast_apply.run("feature_repo")
        materialize.run("feature_repo")
        yield {"root": root, "store": open_store("feature_repo"), "data": data}


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

