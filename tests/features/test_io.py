"""Atomic writes of files and folders, and what a crash between their steps leaves at the final path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from features.stores import files as io
from features.stores.files import atomic_path, write_csv, write_json
from tests.helpers import REPO


def _folder(path: Path, version: str, files: int = 5) -> None:
    path.mkdir(parents=True)
    for i in range(files):
        (path / f"part{i}.txt").write_text(f"{version} {i}\n")


def _contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def _replace_and_crash_in(target: Path, crash_in: str) -> None:
    """Replace folder `target` with a 'new' one in a child process that dies (os._exit, no cleanup) on entering
    `crash_in` of features.stores.files: `rmtree` after deleting one file, or `rename` (the step that moves folders)."""
    script = textwrap.dedent(f"""
        import os, shutil
        from pathlib import Path
        from features.stores import files as io

        def crash(*args, **kwargs):
            os._exit(9)

        def crash_halfway(path, *args, **kwargs):  # a crash in the middle of deleting a folder
            os.unlink(sorted(Path(path).rglob("*.txt"))[0])
            os._exit(9)

        if {crash_in!r} == "rmtree":
            io.shutil.rmtree = crash_halfway
        else:
            io.exchange = io.os.replace = crash
        with io.atomic_path({str(target)!r}) as tmp:
            tmp.mkdir()
            for i in range(5):
                (tmp / f"part{{i}}.txt").write_text(f"new {{i}}\\n")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 9


def test_a_file_is_replaced_whole(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"v": 1})
    write_csv(tmp_path / "a.csv", pd.DataFrame({"x": [1, 2]}))
    write_json(tmp_path / "a.json", {"v": 2})
    assert (tmp_path / "a.json").read_text() == '{\n  "v": 2\n}\n'
    assert (tmp_path / "a.csv").read_text() == "x\n1\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.json"]  # no temporary left


def test_a_folder_is_replaced_whole_and_the_old_one_removed(tmp_path: Path) -> None:
    _folder(tmp_path / "out", "old", files=7)
    with atomic_path(tmp_path / "out") as tmp:
        _folder(tmp, "new")
    assert _contents(tmp_path / "out") == {f"part{i}.txt": f"new {i}\n" for i in range(5)}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_swap_is_one_atomic_exchange_on_linux(tmp_path: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("renameat2 is Linux's")
    _folder(tmp_path / "a", "a")
    _folder(tmp_path / "b", "b")
    assert io.exchange(tmp_path / "a", tmp_path / "b")
    assert _contents(tmp_path / "a")["part0.txt"] == "b 0\n" and _contents(tmp_path / "b")["part0.txt"] == "a 0\n"


@pytest.mark.parametrize("crash_in", ["rename", "rmtree"])
def test_a_crash_while_replacing_a_folder_leaves_a_whole_one(tmp_path: Path, crash_in: str) -> None:
    _folder(tmp_path / "out", "old")
    _replace_and_crash_in(tmp_path / "out", crash_in)
    # before the swap: the old folder, whole; after it (deleting the old one): the new one, whole
    version = "old" if crash_in == "rename" else "new"
    assert _contents(tmp_path / "out") == {f"part{i}.txt": f"{version} {i}\n" for i in range(5)}


def test_without_renameat2_the_fallback_replaces_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "_RENAMEAT2", None)
    _folder(tmp_path / "out", "old")
    with atomic_path(tmp_path / "out") as tmp:
        _folder(tmp, "new")
    assert _contents(tmp_path / "out")["part4.txt"] == "new 4\n" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_crash_in_the_fallback_keeps_the_old_folder_whole_beside(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "_RENAMEAT2", None)
    renames = []

    def crash_on_second(src: Path, dst: Path) -> None:  # the crash, where the fallback's window is
        renames.append(dst)
        if len(renames) == 2:
            raise SystemExit("crash")
        os.rename(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_on_second)
    monkeypatch.setattr(io.shutil, "rmtree", lambda *a, **k: None)  # a crash runs no cleanup
    _folder(tmp_path / "out", "old")
    with pytest.raises(SystemExit), atomic_path(tmp_path / "out") as tmp:
        _folder(tmp, "new")
    assert _contents(renames[0]) == {f"part{i}.txt": f"old {i}\n" for i in range(5)}
