"""Crash safety on the scratch pipeline: SIGKILL extract, materialize and train_probes part-way, rerun, compare.

Each stage runs under `dvc repro` while the test watches from outside (files appearing, a file
growing, log lines) and kills the stage's process at three points in turn, early, midway and late;
after the kills a last run must leave outputs equal to those of the
uninterrupted run. While each run lasts, every file seen at an output's final path must already
be whole: JSON must parse (a manifest lists the shards so far), any other file must equal the
uninterrupted run's (they are deterministic), and the SQLite online store must be there and
answer a query with all its rows.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from pipelines import paths
from tests.scratch import build_scratch_repo, dvc, tiny_params

EXTRACT, MATERIALIZE, PROBES = "extract@tiny-alpha", "materialize", "train_probes@tiny-alpha"
OUTPUTS = {  # what each stage writes (dvc.yaml), relative to the repo
    EXTRACT: [paths.features_dir("tiny", "alpha"), paths.extract_metrics("tiny", "alpha")],
    MATERIALIZE: [paths.feast_online_dir()],
    PROBES: [paths.probe_metrics("alpha", "tiny"), paths.probe_plots("alpha", "tiny")],
}
# JSON outputs are compared without the fields, at any depth, that describe one run rather than the
# result: timings (`seconds`, `tokens_per_second`), MLflow's id of each logged probe (`model_uri`), and
# what extract's report counts over the rows of its last run only, which after a resume is not every
# row (documented in pipelines/extract.py). Every other file is compared byte for byte.
RUN_FIELDS = {"seconds", "tokens_per_second", "model_uri", "texts_extracted_now", "tokens", "truncated",
              "unknown_tokens", "sae_quality"}
STORE_QUERY_S = 0.05  # how often the live store is queried during materialize (each poll would slow the stage)

Trigger = Callable[[Path, list[str]], bool]  # (repo, log lines so far) -> kill now


def _files(repo: Path, stage: str) -> list[Path]:
    """The files now at the stage's final output paths (temporaries `.<name>.*.tmp` are not final paths)."""
    found = []
    for output in OUTPUTS[stage]:
        path = repo / output
        if path.is_file():
            found.append(output)
        elif path.is_dir():
            found += [p.relative_to(repo) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return found


def _without_run_fields(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_run_fields(v) for k, v in value.items() if k not in RUN_FIELDS}
    return [_without_run_fields(v) for v in value] if isinstance(value, list) else value


def _comparable(relative: Path, data: bytes) -> object:
    return _without_run_fields(json.loads(data)) if relative.suffix == ".json" else data


def _snapshot(repo: Path, stage: str) -> dict[Path, object]:
    return {relative: _comparable(relative, (repo / relative).read_bytes()) for relative in _files(repo, stage)}


def _store_rows(store: Path) -> dict[str, int]:
    """Texts per table of a SQLite online store, opened afresh as a newly started service would."""
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT COUNT(DISTINCT entity_key) FROM "{t}"').fetchone()[0] for t in tables}


def _stage_processes(pid: int) -> list[int]:
    """Descendants of `pid` running a stage (`python -m pipelines <stage>` or `python -m pipelines.<stage>`), from
    /proc. Killing `python -m pipelines <stage>` kills the stage it runs in a fork of the warm server too."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # gone meanwhile
                continue
            for child in children:
                todo.append(child)
                with_cmd = Path(f"/proc/{child}/cmdline")
                if with_cmd.exists() and b"-m\0pipelines" in with_cmd.read_bytes():
                    found.append(child)
    return found


class Watched:
    """One `dvc repro -f -s <stage>`, watched until it ends; killed (SIGKILL) when `trigger` first holds."""

    def __init__(self, repo: Path, stage: str, expected: dict[Path, object], trigger: Trigger | None,
                 store_rows: dict[str, int] | None = None) -> None:
        self.repo, self.stage, self.expected, self.trigger, self.store_rows = repo, stage, expected, trigger, store_rows
        self.lines: list[str] = []
        self.seen: dict[Path, set[tuple[int, int, int]]] = {}  # versions (inode, size, mtime) checked per file
        self.store_queried, self.problems, self.killed = 0.0, [], False

    def run(self) -> int:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", self.stage], cwd=self.repo,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        reader = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        reader.start()
        while proc.poll() is None:
            self._check()
            if self.trigger and not self.killed and self.trigger(self.repo, self.lines):
                for pid in _stage_processes(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                    self.killed = True
            time.sleep(0.005)
        reader.join()
        self._check()
        return proc.returncode

    def _check(self) -> None:
        for relative in _files(self.repo, self.stage):
            try:
                stat = (self.repo / relative).stat()
                version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if version in self.seen.setdefault(relative, set()):
                    continue
                data = (self.repo / relative).read_bytes()
            except FileNotFoundError:  # replaced or removed between listing and reading: the next poll sees it
                continue
            self.seen[relative].add(version)
            if relative.suffix == ".json":
                try:
                    json.loads(data)
                except ValueError:
                    self.problems.append(f"{relative}: seen half-written ({len(data)} bytes)")
            elif data != self.expected.get(relative):
                self.problems.append(f"{relative}: seen incomplete or unexpected ({len(data)} bytes)")
        if self.store_rows is not None and time.monotonic() - self.store_queried > STORE_QUERY_S:
            # the live store, queried as a newly started service would, throughout the rebuild
            self.store_queried = time.monotonic()
            try:
                rows = _store_rows(self.repo / paths.feast_online_store())
            except sqlite3.Error as error:
                rows = {"error": str(error)}
            if rows != self.store_rows:
                self.problems.append(f"online store answered {rows}")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = build_scratch_repo(tmp_path_factory.mktemp("crash"), tiny_params())
    dvc(repo, "repro", PROBES, MATERIALIZE)
    return {"repo": repo, "expected": {stage: _snapshot(repo, stage) for stage in OUTPUTS},
            "store_rows": _store_rows(repo / paths.feast_online_store())}


def _kill_then_finish(scratch: dict, stage: str, triggers: list[Trigger], **watch: object) -> None:
    repo, expected = scratch["repo"], scratch["expected"][stage]
    runs = [Watched(repo, stage, expected, trigger, **watch) for trigger in [*triggers, None]]
    for number, run in enumerate(runs):
        code = run.run()
        log = "".join(run.lines)[-3000:]
        assert (code != 0, run.killed) == ((True, True) if run.trigger else (False, False)), f"run {number}: {log}"
        assert not run.problems, f"run {number}: {run.problems}"
    assert _snapshot(repo, stage) == expected
    assert any(run.seen for run in runs)  # the watch saw files at their final paths (train_probes: its last run)


@pytest.mark.slow  # the scratch pipeline: minutes
def test_extract_killed_after_each_shard_resumes_to_the_same_features(scratch: dict) -> None:
    out = scratch["repo"] / paths.features_dir("tiny", "alpha")
    for path in out.iterdir():  # extract resumes from its shards (DVC keeps them): start this one from none
        path.unlink()

    def shard_appeared(n: int) -> Trigger:
        return lambda repo, lines: (out / f"shard-{n:05d}.npz").exists()

    # 100 rows in shards of 40: resume after one shard, after two, and once every shard is written (before the report)
    _kill_then_finish(scratch, EXTRACT, [shard_appeared(0), shard_appeared(1), shard_appeared(2)])


@pytest.mark.slow  # the scratch pipeline: minutes
def test_materialize_killed_while_the_store_grows_keeps_a_whole_readable_store(scratch: dict) -> None:
    full = (scratch["repo"] / paths.feast_online_store()).stat().st_size

    def new_store_reached(fraction: float) -> Trigger:  # the rebuilt store grows beside the live one
        def reached(repo: Path, lines: list[str]) -> bool:
            grown = [size(p) for p in (repo / paths.feast_online_dir()).glob(".online_store.db.*.tmp/*")]
            return bool(grown) and max(grown) >= fraction * full
        return reached

    def size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:  # SQLite's journal comes and goes between the listing and the stat
            return 0

    _kill_then_finish(scratch, MATERIALIZE, [new_store_reached(f) for f in (0.0, 0.3, 0.6)],
                                  store_rows=scratch["store_rows"])


@pytest.mark.slow  # the scratch pipeline: minutes
def test_train_probes_killed_between_cells_reruns_to_the_same_results(scratch: dict) -> None:
    def cells_fitted(n: int) -> Trigger:
        return lambda repo, lines: sum(" macro F1 " in line for line in lines) >= n

    def best_cell_chosen(repo: Path, lines: list[str]) -> bool:  # after fitting, before the baselines and writing
        return any("best cell by validation" in line for line in lines)

    # train_probes writes nothing before its end: kill after the first cell, midway through the grid, and late
    _kill_then_finish(scratch, PROBES, [cells_fitted(1), cells_fitted(4), best_cell_chosen])


@pytest.mark.slow  # the scratch pipeline: minutes
def test_rows_the_service_pushed_survive_a_rebuild(scratch: dict) -> None:
    from features.serving.online import online_frame, push_codes
    from features.stores.feast.store import open_store

    repo = scratch["repo"]
    view = "tiny__l2__sae64__sum__raw"
    store = open_store(repo / "feature_repo")
    codes = csr_matrix(np.array([[0, 1.5, 0, 2.5] + [0] * 60], dtype=np.float32))
    push_codes(store, [view], "sparse", ["alpha-scored-later"], codes, datetime.now(UTC))
    assert MATERIALIZE not in json.loads(dvc(repo, "status", "--json", MATERIALIZE))  # a push changes no DVC output
    dvc(repo, "repro", "-f", "-s", MATERIALIZE)
    fresh = open_store(repo / "feature_repo")  # a new connection: the old one holds the replaced file
    frame = online_frame(fresh, fresh.get_feature_service(view), "sparse", ["alpha-scored-later"])
    assert list(frame["latent_ids"][0]) == [1, 3] and list(frame["latent_values"][0]) == [1.5, 2.5]
    receipt = json.loads((repo / paths.feast_materialized()).read_text())
    assert receipt["carried_pushed_texts"] == {f"saefs_{view}": 1}
    assert _store_rows(repo / paths.feast_online_store())[f"saefs_{view}"] == scratch["store_rows"][f"saefs_{view}"] + 1



def _online_table(path: Path, rows: list[tuple[bytes, bytes, str]]) -> None:
    """A table as Feast's SQLite online store lays it out: (entity_key, value, event_ts) of one feature."""
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE "saefs_v" (entity_key BLOB, feature_name TEXT, value BLOB, value_text TEXT, '
                     "vector_value BLOB, event_ts timestamp, created_ts timestamp, "
                     "PRIMARY KEY(entity_key, feature_name))")
        conn.executemany('INSERT INTO "saefs_v" (entity_key, feature_name, value, event_ts, created_ts) '
                         "VALUES (?, 'latent_ids', ?, ?, ?)", [(*row, row[2]) for row in rows])


@pytest.mark.parametrize("offline_changed", [False, True])
def test_pushed_rows_are_carried_unless_the_views_offline_rows_changed(tmp_path: Path, offline_changed: bool) -> None:
    from features.stores.feast.store import carry_pushed

    offline, pushed = (b"a", b"codes", "2026-01-01"), (b"new", b"pushed codes", "2026-12-01")
    _online_table(tmp_path / "live.db", [offline, pushed])
    _online_table(tmp_path / "fresh.db", [(b"a", b"other codes" if offline_changed else b"codes", "2026-01-01")])
    carried = carry_pushed(tmp_path / "live.db", tmp_path / "fresh.db")
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        keys = sorted(row[0] for row in conn.execute('SELECT entity_key FROM "saefs_v"'))
    # another SAE or extraction under the same view name: the pushed codes would be stale
    assert (carried, keys) == (({}, [b"a"]) if offline_changed else ({"saefs_v": 1}, [b"a", b"new"]))
