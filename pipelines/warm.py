"""A warm interpreter for stage processes: heavy libraries imported once, each stage a fork of it.

`dvc repro` starts one process per stage instance, and each used to spend 3 to 16 seconds importing
torch, transformers, sae-lens, Feast, MLflow or Great Expectations before doing any work, for about
fifty instances per fresh run. `python -m pipelines <stage> [item]` hands the stage to a server that
has those libraries imported (started on first use, gone IDLE_SECONDS after its last stage ends): it
forks, and the child runs `pipelines.<stage>` as `python -m pipelines.<stage>` would, with the
caller's arguments, working directory, environment and stdin/stdout/stderr, and its exit status
comes back to the caller. The server imports third-party libraries only: the project's own modules
are imported fresh by every child, so an edited stage never runs stale code. A server serves one
interpreter and one environment of the variables those libraries read at import (its socket name
is their hash), so a changed environment gets a server of its own.

SAEFS_WARM=0 runs stages in the calling process instead, as does any failure to reach a server.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENV_SWITCH = "SAEFS_WARM"
IDLE_SECONDS = 60.0  # after the last stage ends; SAEFS_WARM_IDLE overrides it
POLL_SECONDS = 2.0
START_SECONDS = 120.0  # how long a caller waits for a new server to import its libraries
# Imported once by the server; what most stages import. Third-party only (see the module docstring).
PRELOAD = (
    "numpy", "pandas", "pyarrow.parquet", "scipy.sparse", "yaml", "pydantic", "tqdm.auto", "psutil",
    "torch", "transformers", "sae_lens", "sklearn.linear_model", "sklearn.model_selection", "sklearn.pipeline",
    "sklearn.feature_extraction.text", "sklearn.tree", "mlflow", "mlflow.sklearn", "feast", "great_expectations",
    "matplotlib.pyplot", "jinja2", "skops.io", "mlflow.store.tracking.sqlalchemy_store",
)
# Variables read at import time by the preloaded libraries (offline switches, thread counts, caches).
ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "TOKENIZERS_", "MLFLOW_", "FEAST_", "GX_", "TORCH", "OMP_", "MKL_",
                "CUDA_", "PYTORCH_", "PYTHON", "SAEFS_", "WANDB_", "DO_NOT_TRACK", "MPLBACKEND")


def _key(env: dict[str, str]) -> str:
    relevant = sorted((k, v) for k, v in env.items() if k.startswith(ENV_PREFIXES) and k != ENV_SWITCH)
    return hashlib.sha256(json.dumps([sys.executable, sys.version, relevant]).encode()).hexdigest()[:16]


def socket_path(env: dict[str, str]) -> Path:
    """Short (unix sockets allow ~100 bytes) and private to this user."""
    return Path(tempfile.gettempdir()) / f"saefs-{os.getuid()}" / f"{_key(env)}.sock"


# --- the caller ---------------------------------------------------------------------------------

def run_stage(stage: str, args: list[str]) -> int:
    """Run `pipelines.<stage>` with `args` in a fork of the warm server, or here when that is off or fails."""
    if os.environ.get(ENV_SWITCH, "1") != "0" and hasattr(socket, "send_fds"):
        try:
            return _run_remote(stage, args)
        except (OSError, TimeoutError) as err:
            print(f"saefs: no warm server ({err}); running {stage} in this process", file=sys.stderr)
    return _run_here(stage, args)


def _run_here(stage: str, args: list[str]) -> int:
    sys.argv = [f"pipelines.{stage}", *args]
    try:
        runpy.run_module(f"pipelines.{stage}", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def _connect(path: Path) -> socket.socket:
    deadline = time.monotonic() + START_SECONDS
    started = False
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(path))
            return conn
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            if not started:
                _start_server(path)
                started = True
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server at {path} did not start within {START_SECONDS:.0f} s") from None
            time.sleep(0.05)


def _start_server(path: Path) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    log = path.with_suffix(".log").open("ab")
    # A session of its own and no inherited stdout: whoever waits for this caller's output must not wait for it.
    subprocess.Popen([sys.executable, "-m", "pipelines.warm", str(path)], stdin=subprocess.DEVNULL, stdout=log,
                     stderr=log, start_new_session=True, close_fds=True)


def _run_remote(stage: str, args: list[str]) -> int:
    conn = _connect(socket_path(dict(os.environ)))
    with conn:
        request = json.dumps({"stage": stage, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
        reply = conn.makefile("r")
        pid = int(reply.readline())  # the child running the stage: signals to this caller go to it
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda number, _frame: os.kill(pid, number))
        status = reply.readline()
    # No status: the child died without reporting (killed); report it as a failure.
    return int(status) if status.strip() else 1


# --- the server ---------------------------------------------------------------------------------

FIRST_PARTY = ("pipelines", "features", "feature_repo")


def serve(path: Path) -> None:
    """Bind first (callers queue while the libraries import), then fork a child per stage until idle."""
    listener = _bind(path)
    if listener is None:
        return
    try:
        for name in PRELOAD:
            try:
                __import__(name)
            except ImportError:
                pass  # a library this install lacks: the stages that need it will say so
        _warm_up()
        children: set[int] = set()
        last = time.monotonic()
        listener.settimeout(POLL_SECONDS)
        idle = float(os.environ.get("SAEFS_WARM_IDLE", IDLE_SECONDS))
        while children or time.monotonic() - last < idle:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                children, last = _reap(children, last)
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                _child(conn)
            conn.close()
            children.add(pid)
            last = time.monotonic()
    finally:
        path.unlink(missing_ok=True)
        listener.close()


def _warm_up() -> None:
    """Save a tiny probe as the stages log theirs (mlflow.sklearn, skops format), so that each fork finds what the
    first save fills on demand: MLflow's map of the installed packages, which it reads to check every model's
    requirements, and skops' tables of trusted types. A stage that logged a probe paid 2 to 3 s for them."""
    try:
        import mlflow.sklearn
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return
    with tempfile.TemporaryDirectory() as folder:
        try:
            mlflow.sklearn.save_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), Path(folder) / "probe",
                                      serialization_format="skops", skops_trusted_types=[], pip_requirements=[])
        except Exception as err:  # noqa: BLE001  (a speed-up only: the stages work without it)
            print(f"saefs: warm-up save failed ({err}); stages that log probes pay for it", file=sys.stderr)


def _bind(path: Path) -> socket.socket | None:
    """The listening socket; None when a live server already holds `path` (a stale file is replaced)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            probe.close()
            listener.close()
            return None  # another caller started a server at the same moment: it serves
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)  # left by a server that was killed
            listener.bind(str(path))
    listener.listen(16)
    return listener


def _reap(children: set[int], last: float) -> tuple[set[int], float]:
    """Collect finished stage processes; the idle clock restarts when the last one ends."""
    for pid in list(children):
        if os.waitpid(pid, os.WNOHANG)[0]:
            children.discard(pid)
            last = time.monotonic()
    return children, last


def _child(conn: socket.socket) -> None:
    """Become the stage process the caller would have started; report its exit status; never return."""
    code = 1
    try:
        size = int.from_bytes(_receive(conn, 8, fds=3), "big")
        request = json.loads(_receive(conn, size))
    except ConnectionError:
        os._exit(code)  # a caller that connected and left (a liveness probe): nothing to run, nobody to tell
    try:
        os.setpgid(0, 0)  # a process group of its own: the stage and the workers it starts die together
        conn.sendall(f"{os.getpid()}\n".encode())
        threading.Thread(target=_die_with, args=(conn,), daemon=True).start()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
        for name in [m for m in sys.modules if m.split(".")[0] in FIRST_PARTY]:
            del sys.modules[name]  # this module's own package included: the caller's checkout is imported afresh
        sys.stdout.reconfigure(line_buffering=True)  # live logs, as from a process started by the caller
        code = _run_here(request["stage"], request["args"])
    except BaseException:  # noqa: BLE001  (the caller must hear of any failure; the trace goes to its stderr)
        import traceback

        traceback.print_exc()
    finally:
        try:
            # What a normal interpreter exit runs, in its order: join the threads (and run their exit hooks,
            # e.g. loky shutting its workers down), then the atexit handlers (log flushes, MLflow).
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(f"{code}\n".encode())
        finally:
            os._exit(code)


def _die_with(conn: socket.socket) -> None:
    """The caller sends nothing after its request and holds the connection until the stage ends: when it
    closes, the caller is gone (killed with DVC, say), and the stage dies as its own process would have, with
    the worker processes it started (joblib's would otherwise hold the caller's stdout open for minutes)."""
    try:
        conn.recv(1)
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)


def _receive(conn: socket.socket, size: int, fds: int = 0) -> bytes:
    """Exactly `size` bytes; with `fds`, the caller's descriptors arrive with them and become this process's 0, 1, 2."""
    data = b""
    while len(data) < size:
        if fds:
            chunk, received, _, _ = socket.recv_fds(conn, size - len(data), fds)
            for target, fd in enumerate(received):
                os.dup2(fd, target)
                os.close(fd)
            fds = 0 if received else fds
        else:
            chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the caller hung up")
        data += chunk
    return data


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
