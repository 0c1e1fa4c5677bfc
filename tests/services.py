"""Real Redis, PostgreSQL, an S3-compatible server (moto) and an MLflow server on 127.0.0.1, for integration tests.

`running_services()` starts them on free ports in a scratch folder and stops them on exit, also
when a test fails. The MLflow server is a team's: runs and registry in PostgreSQL
(`--backend-store-uri postgresql+psycopg2://...`), artifacts proxied to the bucket
(`--artifacts-destination s3://...`), so its clients need no S3 credentials. PostgreSQL refuses
to run as root: as root, it runs as the `postgres` user. The binaries come from Debian packages
(`.ci/run` installs redis-server; PostgreSQL 15 is found on PATH or under /usr/lib/postgresql);
without them the integration tests skip and say which is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "saefs"
DATABASES = ("feast", "feast_pipeline", "mlflow", "mlflow_server")  # mlflow: for clients that use it directly
BUCKETS = ("saefs-dvc", "saefs-mlflow")
SERVED_ARTIFACTS = "s3://saefs-mlflow/served"  # the MLflow server's --artifacts-destination
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class Services:
    redis: str  # Feast connection string, host:port
    postgres_port: int
    s3_endpoint: str
    mlflow: str  # tracking URI of the MLflow server, http://127.0.0.1:port

    def postgres(self, database: str) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.postgres_port}/{database}"


def missing_binaries() -> list[str]:
    return [name for name in ("redis-server", "postgres", "initdb") if _binary(name) is None]


def _binary(name: str) -> str | None:
    """On PATH, else in Debian's versioned PostgreSQL folder (the newest)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return shutil.which(name) or (str(candidates[-1]) if candidates else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check: Callable[[], object], what: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Until `check` passes; a server that exits or stays unready fails with the end of its log (the scratch
    folder that holds it is removed when the services stop)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except Exception as err:  # noqa: BLE001 - anything but success means "not ready yet"
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start ({err}); the end of its log:\n{log.read_text()[-3000:]}") \
                    from err
            time.sleep(0.2)


@contextlib.contextmanager
def running_services() -> Iterator[Services]:
    root = Path(tempfile.mkdtemp(prefix="saefs-services-"))
    # setpriv execs (no child to forward signals to), so a signal reaches postgres itself
    setpriv = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    as_postgres = setpriv if os.geteuid() == 0 else []
    processes: list[subprocess.Popen] = []

    def start(command: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(root / log, "wb") as out:
            processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env,
                                              start_new_session=True))  # its own group: its children stop with it
        return processes[-1]

    try:
        redis_port, pg_port, s3_port = free_port(), free_port(), free_port()
        redis = start([_binary("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no"], "redis.log")
        moto = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], "moto.log")
        pgdata = root / "pgdata"
        if as_postgres:
            shutil.chown(root, "postgres")
        subprocess.run([*as_postgres, _binary("initdb"), "-D", str(pgdata), "-U", USER, "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True)
        postgres = start([*as_postgres, _binary("postgres"), "-D", str(pgdata), "-p", str(pg_port), "-k", str(root),
                          "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], "postgres.log")
        mlflow_port = free_port()
        services = Services(f"127.0.0.1:{redis_port}", pg_port, f"http://127.0.0.1:{s3_port}",
                            f"http://127.0.0.1:{mlflow_port}")

        import boto3
        import psycopg2
        import redis as redis_client

        _wait(lambda: redis_client.Redis(port=redis_port).ping(), "redis-server", redis, root / "redis.log")
        _wait(lambda: psycopg2.connect(host="127.0.0.1", port=pg_port, user=USER, dbname="postgres").close(),
              "postgres", postgres, root / "postgres.log")
        connection = psycopg2.connect(host="127.0.0.1", port=pg_port, user=USER, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            for database in DATABASES:
                cursor.execute(f"CREATE DATABASE {database}")
        connection.close()
        s3 = boto3.client("s3", endpoint_url=services.s3_endpoint, **{
            "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]})
        _wait(s3.list_buckets, "moto S3 server", moto, root / "moto.log")
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
        mlflow = start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                        "--workers", "1", "--backend-store-uri", services.postgres("mlflow_server"),
                        "--artifacts-destination", SERVED_ARTIFACTS],
                       "mlflow.log", env={**os.environ, **S3_ENV, "MLFLOW_S3_ENDPOINT_URL": services.s3_endpoint,
                                          "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # 7 GenAI job workers
        _wait(lambda: urllib.request.urlopen(f"{services.mlflow}/health", timeout=2).close(), "mlflow server",
              mlflow, root / "mlflow.log", timeout=180)
        yield services
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):  # postgres: fast shutdown, not waiting for clients to leave
                os.killpg(process.pid, signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
