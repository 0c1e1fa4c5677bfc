"""Content fingerprints of what a stage reads that dvc.yaml cannot name: the files a user points params at
(`file:` data, `path:` models and SAEs), and the stage's own code.

DVC reruns a stage when a declared dependency changes, but these paths live inside params values
(`source: file:my.csv`), where dvc.yaml cannot name them. A fingerprint records the source spec and,
for a local file or folder, the SHA-256 of its bytes: written as a small JSON file that the consuming
stage depends on, it changes exactly when the user's data or weights do.

Code is fingerprinted the same way: the import closure of a stage's entry module (`import_closure`),
each file with its SHA-256, in one file per stage. Listing the modules in dvc.yaml instead would cost
four dvc.lock lines per module and stage (about 9,000 lines), which DVC parses and rewrites after
every stage it runs.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from features.errors import SaefsError

LOCAL_KINDS = ("file", "path", "folder")  # source kinds that name a local file or folder
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
    """`{"source": spec, "sha256": ...}` for a `file:`/`path:` spec and a `fortune:` language's folders (None for
    packaged or hub sources, which their spec and the pinned packages identify)."""
    kind, _, location = spec.partition(":")
    if kind == "fortune":  # its files live outside the repository, unpacked by `make install`
        from features.sources import fortunes

        lang, _, root = location.partition(":")
        folders = fortunes.language_folders(lang, Path(root) if root else None)
        sha = hashlib.sha256("".join(content_hash(f) for f in folders.values()).encode()).hexdigest()
        return {"source": spec, "sha256": sha}
    return {"source": spec, "sha256": content_hash(location) if kind in LOCAL_KINDS else None}


def _imported_names(path: Path) -> tuple[str, ...]:
    stat = path.stat()
    return _parsed_imports(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4096)  # every stage's closure reads the same modules: each is parsed once per version
def _parsed_imports(path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """Every module name `path` imports, lazy imports inside functions included (they run when the function
    does); imports under `if TYPE_CHECKING:` never run and are left out. `from a import b` yields `a` and
    `a.b` (b may be a submodule)."""
    names = []
    todo: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while todo:  # statements only: an import is one, and expressions (most of the tree) hold none
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        else:
            todo += [child for child in ast.iter_child_nodes(node)
                     if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case)]
    return tuple(names)


def import_closure(module: str, root: Path, packages: tuple[str, ...]) -> set[str]:
    """Files (relative to `root`, posix) of the modules of `packages` that `module` imports, transitively,
    each package's `__init__.py` included (importing a.b.c runs a/__init__.py and a/b/__init__.py first)."""

    def module_file(name: str) -> Path | None:
        base = root.joinpath(*name.split("."))
        return next((c for c in (base / "__init__.py", base.with_suffix(".py")) if c.is_file()), None)

    seen: set[Path] = set()
    named: set[str] = set()  # most names recur across modules: resolve each once
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        if parts[0] not in packages or name in named:
            continue
        named.add(name)
        for depth in range(1, len(parts) + 1):
            found = module_file(".".join(parts[:depth]))
            if found and found not in seen:
                seen.add(found)
                todo += _imported_names(found)
    return {found.relative_to(root).as_posix() for found in seen}


def code_fingerprint(files: set[str], root: Path) -> dict[str, str]:
    """`{file: SHA-256 of its bytes}` (what `sha256sum` prints) of the given files, relative to `root`, sorted."""
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in sorted(files)}


def locked_outputs(lock_file: Path, stages: list[str], under: str = "data/") -> dict[str, str]:
    """The DVC hash (md5, `.dir` for a folder) of each output under `under` of `stages`, as `lock_file` (dvc.lock)
    records them; stages it does not list yet are left out."""
    import yaml

    locked = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.is_file() else {}
    return {out["path"]: out["md5"] for stage in stages for out in locked.get(stage, {}).get("outs", [])
            if out["path"].startswith(under) and "md5" in out}
