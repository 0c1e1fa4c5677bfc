"""Reachability of the services a profile names (Redis, PostgreSQL, MLflow server, S3 buckets).

Stages check them before they write anything, so an unreachable service fails at once with the
component and its address, and leaves local outputs as they were. Credentials never appear in
messages: addresses are shown as host:port (plus the bucket).
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

from features.errors import SaefsError

TIMEOUT_S = 3.0
DEFAULT_PORTS = {"postgresql": 5432, "redis": 6379, "http": 80, "https": 443, "s3": 443}


def host_port(address: str) -> tuple[str, int]:
    """host and port of a URL (`postgresql+psycopg2://u:p@h:5432/db`, `http://h:5000`) or of Redis' `h:6379,db=0`."""
    if "://" not in address:
        address = "redis://" + address.split(",", 1)[0]
    parts = urlsplit(address)
    scheme = parts.scheme.split("+", 1)[0]
    if not parts.hostname:
        raise SaefsError(f"{address!r} names no host: expected e.g. postgresql://user@host:5432/db or host:6379")
    return parts.hostname, parts.port or DEFAULT_PORTS.get(scheme, 80)


def display_address(address: str) -> str:
    """`host:port/database` (a Redis connection string's `db`, 0 by default; a URL's path, if it names one): an
    address to log, record and compare, never a credential."""
    host, port = host_port(address)
    if "://" in address:
        database = urlsplit(address).path.strip("/")
    else:
        options = dict(option.partition("=")[::2] for option in address.split(",")[1:])
        database = options.get("db", "0").strip()
    return f"{host}:{port}" + (f"/{database}" if database else "")


def check_reachable(component: str, address: str, timeout: float = TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to `address`, or raise naming the component and host:port."""
    if "${" in address:
        raise SaefsError(f"{component}: address {address!r} has an unset environment variable; export it "
                         "(README, Scale-out)")
    host, port = host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise SaefsError(f"{component} at {host}:{port} is unreachable ({err.strerror or err}): start it, or point "
                         "the profile's configuration at a running one") from None


def check_bucket(component: str, url: str, endpoint_url: str | None = None) -> None:
    """The S3 bucket of `url` (s3://bucket/prefix) exists and answers, at `endpoint_url` (default AWS)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = urlsplit(url).netloc
    where = f"s3://{bucket} at {endpoint_url or 'AWS S3'}"
    if endpoint_url:
        check_reachable(f"{component} (s3://{bucket})", endpoint_url)
    try:
        boto3.client("s3", endpoint_url=endpoint_url).head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as err:
        raise SaefsError(f"{component} bucket {where} cannot be used ({err}): create it or fix its credentials") \
            from None


def check_feast(config: Any) -> None:
    """The Feast registry (when it is SQL) and online store (when it is Redis) of a RepoConfig answer."""
    registry = config.registry
    if getattr(registry, "registry_type", "file") == "sql":
        check_reachable("Feast registry (PostgreSQL)", registry.path)
    if config.online_store.type == "redis":
        check_reachable("Feast online store (Redis)", config.online_store.connection_string)


def check_mlflow(tracking_uri: str) -> None:
    """The MLflow tracking store (PostgreSQL or a server) and, with MLFLOW_S3_ENDPOINT_URL, its S3 endpoint."""
    scheme = urlsplit(tracking_uri).scheme.split("+", 1)[0]
    if scheme in ("postgresql", "mysql", "http", "https"):
        check_reachable(f"MLflow tracking store ({scheme})", tracking_uri)
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if endpoint:
        check_reachable("MLflow artifact store (S3)", endpoint)


def check_dvc_remote(root: str | os.PathLike[str] = ".") -> None:
    """The default DVC remote of the project at `root`, when it is an S3 bucket, exists and answers."""
    from dvc.config import Config

    dvc_dir = os.path.join(root, ".dvc")
    if not os.path.isdir(dvc_dir):
        return
    config = Config(dvc_dir=dvc_dir)
    name = config["core"].get("remote")
    remote = config["remote"].get(name, {}) if name else {}
    if str(remote.get("url", "")).startswith("s3://"):
        check_bucket(f"DVC remote '{name}'", remote["url"], remote.get("endpointurl"))
