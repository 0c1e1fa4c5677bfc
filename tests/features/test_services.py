"""Service addresses: parsed without credentials, and an unreachable one named with its component."""

from __future__ import annotations

import pytest

from features.errors import SaefsError
from features.stores.services import check_mlflow, check_reachable, display_address, host_port
from tests.services import free_port


@pytest.mark.parametrize("address, expected", [
    ("postgresql+psycopg2://feast:secret@pg.internal:5433/feast", ("pg.internal", 5433)),
    ("postgresql://pg.internal/feast", ("pg.internal", 5432)),
    ("redis.internal:6380,db=0,password=secret", ("redis.internal", 6380)),
    ("redis.internal", ("redis.internal", 6379)),
    ("http://mlflow.internal:5000", ("mlflow.internal", 5000)),
])
def test_host_port_of_urls_and_redis_connection_strings(address: str, expected: tuple[str, int]) -> None:
    assert host_port(address) == expected


@pytest.mark.parametrize("address, expected", [
    ("postgresql+psycopg2://feast:secret@pg.internal:5433/feast", "pg.internal:5433/feast"),
    ("redis.internal:6380,db=2,password=secret", "redis.internal:6380/2"),
    ("redis.internal:6380,password=secret", "redis.internal:6380/0"),
    ("http://user:pw@mlflow.internal:5000/", "mlflow.internal:5000"),
])
def test_display_address_keeps_host_port_and_database_but_no_credential(address: str, expected: str) -> None:
    assert display_address(address) == expected


def test_unreachable_service_names_component_and_address_but_no_password() -> None:
    port = free_port()
    with pytest.raises(SaefsError, match=rf"^Feast registry \(PostgreSQL\) at 127\.0\.0\.1:{port} is unreachable") \
            as err:
        check_reachable("Feast registry (PostgreSQL)", f"postgresql+psycopg2://feast:secret@127.0.0.1:{port}/feast")
    assert "secret" not in str(err.value)
    with pytest.raises(SaefsError, match="unset environment variable"):
        check_reachable("Feast online store (Redis)", "${SAEFS_REDIS}")


def test_local_mlflow_stores_need_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    check_mlflow("sqlite:///mlflow.db")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SaefsError, match=r"MLflow artifact store \(S3\) at 127\.0\.0\.1:\d+ is unreachable"):
        check_mlflow("sqlite:///mlflow.db")
