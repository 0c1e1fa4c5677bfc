"""The warm stage runner: a stage runs in a fork of a server with the libraries imported, as its own process would."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import warm
from tests.helpers import REPO

STAGE = '''
import os, sys
print("cwd", os.getcwd())
print("args", sys.argv[1:])
print("env", os.environ.get("STAGE_TEST_VALUE"))
print("server", os.getppid())
print("preloaded", "sae_lens" in sys.modules)
print("version", {version})
print("to stderr", file=sys.stderr)
sys.exit({code})
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout of its own (pipelines/ and features/ copied), so that a stage can be edited between runs."""
    root = tmp_path_factory.mktemp("warm")
    for package in ("pipelines", "features"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def caller_env(project: Path, **env: str) -> dict[str, str]:
    """A server of this module's own (SAEFS_* variables are part of its key), gone 5 s after its last stage."""
    return dict(os.environ) | {"SAEFS_TEST_SERVER": str(project), "SAEFS_WARM_IDLE": "5", **env}


def run(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=project, env=caller_env(project, **env),
                          capture_output=True, text=True, timeout=300)


def within(seconds: float, call):
    """call()'s result, failing the test if it has not returned within `seconds`."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def write_stage(project: Path, version: int, code: int) -> None:
    (project / "pipelines" / "probe_stage.py").write_text(STAGE.format(version=version, code=code))


def test_a_stage_runs_in_a_warm_fork_with_the_callers_arguments_and_sees_every_edit(project: Path) -> None:
    write_stage(project, version=1, code=3)
    first = run(project, "probe_stage", "m/d", "--flag", STAGE_TEST_VALUE="x")
    assert first.returncode == 3, first.stderr
    lines = first.stdout.splitlines()
    server = lines.pop(3)
    assert lines == [f"cwd {project}", "args ['m/d', '--flag']", "env x", "preloaded True", "version 1"]
    assert "to stderr" in first.stderr
    write_stage(project, version=2, code=0)  # an edited stage: the warm server must not run the old one
    second = run(project, "probe_stage", STAGE_TEST_VALUE="y")
    assert second.returncode == 0 and "version 2" in second.stdout and "env y" in second.stdout
    assert server in second.stdout.splitlines()  # a fork of the same server: the libraries were not imported again


WARMED = '''
import sys
from mlflow.utils import requirements_utils
print("skops", "skops.io" in sys.modules)
print("package map", requirements_utils._MODULES_TO_PACKAGES is not None)
'''


def test_a_fork_finds_what_logging_a_probe_first_fills_done_by_the_server(project: Path) -> None:
    """MLflow reads every installed package's metadata for the first model a process saves, and skops builds its
    type tables on import: the server pays both once, not each stage that logs a probe."""
    (project / "pipelines" / "warmed_stage.py").write_text(WARMED)
    done = run(project, "warmed_stage")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["skops True", "package map True"]


def test_warm_off_runs_the_stage_in_the_callers_process(project: Path) -> None:
    write_stage(project, version=3, code=0)
    done = run(project, "probe_stage", SAEFS_WARM="0")
    assert done.returncode == 0 and "preloaded False" in done.stdout and "version 3" in done.stdout


def test_a_socket_left_by_a_killed_server_is_replaced(project: Path) -> None:
    from pipelines import OFFLINE_ENV

    env = caller_env(project, SAEFS_TEST_STALE="1")
    path = warm.socket_path(OFFLINE_ENV | env)  # the caller's environment after `import pipelines` set its defaults
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.unlink(missing_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening, closed: what a killed server leaves
    dead.close()
    write_stage(project, version=4, code=0)
    done = run(project, "probe_stage", SAEFS_TEST_STALE="1")
    assert done.returncode == 0 and "preloaded True" in done.stdout, done.stderr
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.connect(str(path))  # the new server listens where the dead one was (refused if the file were still stale)
    live.close()


COSTED = '''
import sys
from pipelines import cost, stage_main

def run(item):
    cost.work(texts=2)

if __name__ == "__main__":
    sys.exit(stage_main(run, None, doc="", arg="item"))
'''


@pytest.mark.parametrize("how", [["pipelines.costed_stage"], ["pipelines", "costed_stage"]])
def test_a_stage_run_as_a_module_records_its_cost_under_its_own_name(project: Path, how: list[str]) -> None:
    (project / "pipelines" / "costed_stage.py").write_text(COSTED)
    target = project / "metrics" / "cost" / "costed_stage" / "m" / "d.json"
    target.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", *how, "m/d"], cwd=project, env=caller_env(project),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"texts": 2' in target.read_text()  # not under metrics/cost/__main__


LOKY = '''
from joblib import Parallel, delayed
print(sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4))))
'''


def test_a_stage_with_worker_processes_exits_when_done(project: Path) -> None:
    """joblib's loky workers outlive a Parallel call; the fork must shut them down as an interpreter exit does
    (threads and their exit hooks, then atexit), or it waits for them for ever."""
    (project / "pipelines" / "loky_stage.py").write_text(LOKY)
    done = run(project, "loky_stage")
    assert done.returncode == 0 and done.stdout.split() == ["6"], done.stderr


SLOW = '''
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # holds the caller's stdout
print(os.getpid(), worker.pid, flush=True)
time.sleep(3)
open(sys.argv[1], "w").write("the stage outlived its caller")
'''


def test_a_killed_caller_takes_its_stage_down(project: Path) -> None:
    """SIGKILL of `python -m pipelines <stage>` (DVC killed, a crash test) ends the stage it runs in the server's
    fork as it would end a stage of its own: nothing written after."""
    import signal

    (project / "pipelines" / "slow_stage.py").write_text(SLOW)
    marker = project / "outlived.txt"
    caller = subprocess.Popen([sys.executable, "-m", "pipelines", "slow_stage", str(marker)], cwd=project,
                              env=caller_env(project), stdout=subprocess.PIPE, text=True)
    stage, worker = map(int, caller.stdout.readline().split())
    assert stage != caller.pid  # a fork of the server, not the caller itself
    os.kill(caller.pid, signal.SIGKILL)
    caller.wait(30)
    assert within(10, caller.stdout.read) == ""  # no worker of the stage keeps the caller's output open
    time.sleep(5)
    assert not marker.exists()
    for pid in (stage, worker):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
