"""Content fingerprints of the files a user points params at (`file:` data, `path:` models and SAEs).

DVC reruns a stage when a declared dependency changes, but these paths live inside params values
(`source: file:my.csv`), where dvc.yaml cannot name them. A fingerprint records the source spec and,
for a local file or folder, the SHA-256 of its bytes: written as a small JSON file that the consuming
stage depends on, it changes exactly when the user's data or weights do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from features.errors import SaefsError

LOCAL_KINDS = ("file", "path")  # source kinds that name a local file or folder
CHUNK = 1 << 20


def content_hash(path: str | Path, pattern: str = "*") -> str:
    """SHA-256 of a file's bytes, or of a folder's files matching `pattern` (relative names and bytes, sorted)."""
    path = Path(path)
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob(pattern) if p.is_file())
    else:
        raise SaefsError(f"{path} does not exist: fix the params entry that names it, or create it")
    digest = hashlib.sha256()
    for name, file in files:
        digest.update(name.encode() + b"\x00")
        with file.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
        digest.update(b"\x00")
    return digest.hexdigest()


def source_fingerprint(spec: str) -> dict[str, Any]:
    """`{"source": spec, "sha256": ...}` for a `file:`/`path:` spec (None for packaged or hub sources, which
    their spec and the pinned packages identify)."""
    kind, _, location = spec.partition(":")
    return {"source": spec, "sha256": content_hash(location) if kind in LOCAL_KINDS else None}
