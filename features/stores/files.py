"""Atomic writes: a reader (or DVC) never sees a half-written file or folder, nor a missing one.

A file is renamed over its old version (`os.replace`). A folder cannot be renamed over a
non-empty one, so the new folder and the old one swap names in one step (Linux `renameat2` with
`RENAME_EXCHANGE`), and the old one is deleted afterwards: a crash at any point leaves the old
folder or the new one, complete, at the final path. Where that call is unavailable (another OS,
a filesystem without it) the old folder is first renamed aside: a crash between the two renames
leaves no folder at the final path, but the old one stays whole beside it, in the temporary folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}  # old kernel, filesystem without it


def _renameat2() -> Any:
    """glibc's renameat2 (2.28+), or None where the C library has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the names of `a` and `b` atomically; False (nothing changed) where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace_folder(new: Path, path: Path) -> None:
    """Put folder `new` at `path`, where a folder is; the old one ends at `new`, to be deleted."""
    if exchange(new, path):
        return
    aside = new.with_name(new.name + ".old")
    os.replace(path, aside)  # fallback: a window with no folder at `path`, the old one whole at `aside`
    os.replace(new, path)
    os.replace(aside, new)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it onto `path`, on error remove it.

    Works for files and folders: the caller writes whatever it likes at the yielded path. The
    temporary folder (`.<name>.*.tmp`, beside `path`) also receives the replaced old version, and
    is removed last.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def remove_temporaries(path: str | os.PathLike[str]) -> None:
    """Delete what a killed `atomic_path(path)` left beside `path` (in an output DVC keeps between runs)."""
    path = Path(path)
    for temporary in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(temporary, ignore_errors=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(path: str | os.PathLike[str], df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
