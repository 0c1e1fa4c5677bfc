"""Sharded storage of per-text feature matrices with crash-safe resumption.

A folder holds:
  shard-00000.npz, ...  `shard_rows` rows each (the last may be shorter). One shard carries every
                        array of its rows, so matrices written together can never disagree:
                        for each named sparse matrix `<name>.indptr` (int64), `<name>.indices`
                        (uint16 up to 65,536 columns, else int32),
                        `<name>.data` (float32) and `<name>.shape`; for each named dense
                        array (pooled hidden states, token counts) `<name>`; `row_ids` (str); and,
                        when the writer is given checkpoints, `<name>.checkpoint` for each array of
                        the caller's running state after the shard's last row (e.g. metric sums).
  manifest.json         the finished shards in order, rewritten after each one, and `complete`
                        once the writer is closed. A file the manifest does not list is not a
                        result: readers ignore it and the next writer deletes it.

Every file is written under a temporary name in the same folder, then renamed (atomic on
POSIX), so a killed run leaves finished shards intact and restarts after the last one.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.lib.npyio import NpzFile
from scipy.sparse import csr_matrix, vstack

from features.errors import SaefsError
from features.stores.files import atomic_path, write_json

MANIFEST = "manifest.json"
FORMAT = "saefs-shards/1"
ROW_IDS = "row_ids"
_CHECKPOINT = ".checkpoint"  # suffix of the checkpoint arrays in a shard
_NAME = re.compile(r"[A-Za-z0-9_\-]+")  # no dots: '<name>.<part>' keys must stay unambiguous


@dataclass
class _Manifest:
    shards: list[dict[str, Any]] = field(default_factory=list)  # {"file": name, "rows": count}
    sparse: list[str] = field(default_factory=list)
    dense: list[str] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT
    fingerprint: str = ""  # identifies the job (inputs and settings); another job starts over

    @property
    def n_rows(self) -> int:
        return sum(int(shard["rows"]) for shard in self.shards)


@dataclass(frozen=True)
class _Block:
    """Rows buffered for writing: ids plus every named array, all with the same row count."""

    row_ids: np.ndarray
    sparse: dict[str, csr_matrix]
    dense: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.row_ids)

    @staticmethod
    def concat(blocks: Sequence[_Block]) -> _Block:
        first = blocks[0]
        return _Block(
            row_ids=np.concatenate([b.row_ids for b in blocks]),
            sparse={name: vstack([b.sparse[name] for b in blocks], format="csr") for name in first.sparse},
            dense={name: np.concatenate([b.dense[name] for b in blocks]) for name in first.dense},
        )

    def row_slice(self, start: int, stop: int | None = None) -> _Block:
        return _Block(
            row_ids=self.row_ids[start:stop],
            sparse={name: matrix[start:stop] for name, matrix in self.sparse.items()},
            dense={name: array[start:stop] for name, array in self.dense.items()},
        )


class ShardWriter:
    """Appends rows and writes a shard every `shard_rows` rows; reopening a folder resumes it.

    Use as a context manager, or call `close()` after the last append: only then is the folder
    marked complete (an exception inside the `with` block leaves it resumable instead).
    """

    def __init__(self, out_dir: str | Path, shard_rows: int, fingerprint: str = "") -> None:
        if shard_rows < 1:
            raise SaefsError(f"shard_rows must be >= 1, got {shard_rows}")
        self.out_dir = Path(out_dir)
        self.shard_rows = shard_rows
        self.out_dir.mkdir(parents=True, exist_ok=True)
        found = _read_manifest(self.out_dir)
        # Shards of another job (other settings or inputs) are not a head start: start over.
        self._manifest = found if found and found.fingerprint == fingerprint else _Manifest(fingerprint=fingerprint)
        self._pending: list[_Block] = []
        _remove_unlisted(self.out_dir, self._manifest)
        self._checkpoint = self.stored_checkpoint() or None

    def resume(self, row_ids: Sequence[str]) -> int:
        """How many leading rows of `row_ids` are already stored; the caller appends the rest."""
        stored = _read_row_ids(self.out_dir, self._manifest)
        if list(stored) != list(row_ids[: len(stored)]):
            raise SaefsError(
                f"{self.out_dir} holds {len(stored)} rows of a different input than the one being written: "
                "delete the folder to start over"
            )
        return len(stored)

    def stored_checkpoint(self) -> dict[str, np.ndarray]:
        """The checkpoint stored with the last finished shard ({} when there is none)."""
        if not self._manifest.shards:
            return {}
        with np.load(self.out_dir / self._manifest.shards[-1]["file"]) as npz:
            return {key.removesuffix(_CHECKPOINT): npz[key] for key in npz.files if key.endswith(_CHECKPOINT)}

    def append(
        self,
        row_ids: Sequence[str],
        sparse: Mapping[str, csr_matrix] | None = None,
        dense: Mapping[str, np.ndarray] | None = None,
        checkpoint: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Buffer rows (ids, named sparse matrices, named dense arrays) and write every full shard.

        `checkpoint`: the caller's running state after these rows, stored with the shard that ends
        with them, for a resumed run to continue from (`stored_checkpoint`). Since a shard can only
        store the state after its own last row, such appends must not cross a shard boundary.
        """
        block = _Block(
            row_ids=np.asarray(row_ids, dtype=str),
            sparse={name: csr_matrix(matrix, dtype=np.float32) for name, matrix in (sparse or {}).items()},
            dense={name: np.asarray(array) for name, array in (dense or {}).items()},
        )
        self._check_block(block)
        self._check_checkpoint(block, checkpoint)
        if checkpoint is not None:
            self._checkpoint = {name: np.array(array) for name, array in checkpoint.items()}  # the caller's goes on
        self._pending.append(block)
        while sum(map(len, self._pending)) >= self.shard_rows:
            buffered = _Block.concat(self._pending)
            self._write_shard(buffered.row_slice(0, self.shard_rows))
            self._pending = [buffered.row_slice(self.shard_rows)] if len(buffered) > self.shard_rows else []

    def close(self) -> None:
        """Write the last, partial shard and mark the folder complete."""
        if self._pending:
            self._write_shard(_Block.concat(self._pending))
            self._pending = []
        self._manifest.complete = True
        _write_manifest(self.out_dir, self._manifest)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()

    def _check_block(self, block: _Block) -> None:
        _check_names(block.sparse, block.dense)
        layout = (sorted(block.sparse), sorted(block.dense))
        if not (self._manifest.shards or self._pending):
            self._manifest.sparse, self._manifest.dense = layout
        elif layout != (self._manifest.sparse, self._manifest.dense):
            raise SaefsError(
                f"arrays {layout[0]} (sparse) / {layout[1]} (dense) differ from the ones already in "
                f"{self.out_dir}: {self._manifest.sparse} / {self._manifest.dense}"
            )
        row_counts = {name: array.shape[0] for name, array in [*block.sparse.items(), *block.dense.items()]}
        mismatched = {name: count for name, count in row_counts.items() if count != len(block)}
        if mismatched:
            raise SaefsError(f"{len(block)} row ids but arrays with other row counts: {mismatched}")

    def _check_checkpoint(self, block: _Block, checkpoint: Mapping[str, np.ndarray] | None) -> None:
        """A checkpoint must end a shard or the rows so far; once given, every append carries one."""
        if checkpoint is None:
            if self._checkpoint is not None:
                raise SaefsError(f"{self.out_dir} stores checkpoints with its shards: pass one with every append")
            return
        _check_names(checkpoint, {})
        buffered = sum(map(len, self._pending)) + len(block)
        if buffered > self.shard_rows:
            raise SaefsError(
                f"an append with a checkpoint would cross a shard boundary ({buffered} rows buffered, "
                f"shard_rows={self.shard_rows}): append at most the rows that fill the current shard"
            )

    def _write_shard(self, block: _Block) -> None:
        name = f"shard-{len(self._manifest.shards):05d}.npz"
        arrays: dict[str, np.ndarray] = {ROW_IDS: block.row_ids, **block.dense}
        arrays.update({f"{key}{_CHECKPOINT}": array for key, array in (self._checkpoint or {}).items()})
        for key, matrix in block.sparse.items():
            arrays.update(_csr_arrays(key, matrix))
        with atomic_path(self.out_dir / name) as temporary:
            np.savez(temporary, allow_pickle=False, **arrays)
        self._manifest.shards.append({"file": name, "rows": len(block)})
        self._manifest.complete = False
        _write_manifest(self.out_dir, self._manifest)


def read_csr(out_dir: str | Path, name: str) -> tuple[csr_matrix, np.ndarray]:
    """The named sparse matrix over all shards of a complete folder, and its row ids."""
    manifest = _complete_manifest(Path(out_dir), name, kind="sparse")
    parts = [(_load_csr(npz, name), npz[ROW_IDS]) for npz in _iter_shards(Path(out_dir), manifest)]
    return vstack([matrix for matrix, _ in parts], format="csr"), np.concatenate([ids for _, ids in parts])


def read_dense(out_dir: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The named dense array over all shards of a complete folder, and its row ids."""
    manifest = _complete_manifest(Path(out_dir), name, kind="dense")
    parts = [(npz[name], npz[ROW_IDS]) for npz in _iter_shards(Path(out_dir), manifest)]
    return np.concatenate([array for array, _ in parts]), np.concatenate([ids for _, ids in parts])


def _check_names(sparse: Mapping[str, Any], dense: Mapping[str, Any]) -> None:
    clashing = sorted(set(sparse) & set(dense))
    malformed = sorted(name for name in {*sparse, *dense} if not _NAME.fullmatch(name) or name == ROW_IDS)
    if clashing or malformed:
        raise SaefsError(
            f"bad array names {clashing or malformed}: sparse and dense names must be distinct, "
            f"made of letters, digits, '_' and '-', and not {ROW_IDS!r}"
        )


def _csr_arrays(name: str, matrix: csr_matrix) -> dict[str, np.ndarray]:
    matrix = matrix.copy()
    matrix.eliminate_zeros()
    return {
        f"{name}.indptr": matrix.indptr.astype(np.int64),
        f"{name}.indices": matrix.indices.astype(_index_dtype(matrix.shape[1])),
        f"{name}.data": matrix.data.astype(np.float32),
        f"{name}.shape": np.asarray(matrix.shape, dtype=np.int64),
    }


def _index_dtype(width: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    """Latent ids in 2 bytes up to 64k latents (a third less on disk than int32), else 4."""
    return np.uint16 if width <= 2**16 else np.int32


def _load_csr(npz: NpzFile, name: str) -> csr_matrix:
    shape = tuple(int(n) for n in npz[f"{name}.shape"])
    indices = npz[f"{name}.indices"].astype(np.int32)
    return csr_matrix((npz[f"{name}.data"], indices, npz[f"{name}.indptr"]), shape=shape)


def _complete_manifest(out_dir: Path, name: str, kind: str) -> _Manifest:
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise SaefsError(f"{out_dir} has no {MANIFEST}: run the stage that writes these shards first")
    if not manifest.complete:
        raise SaefsError(
            f"{out_dir} is unfinished ({len(manifest.shards)} shards, {manifest.n_rows} rows): "
            "rerun the stage that writes it to resume"
        )
    names = manifest.sparse if kind == "sparse" else manifest.dense
    if name not in names:
        raise SaefsError(f"{out_dir} has no {kind} array {name!r}; it has {names}")
    return manifest


def _iter_shards(out_dir: Path, manifest: _Manifest) -> Iterator[NpzFile]:
    """The listed shards in order, each open only while the caller handles it."""
    for shard in manifest.shards:
        with np.load(out_dir / shard["file"]) as npz:
            yield npz


def _read_row_ids(out_dir: Path, manifest: _Manifest) -> np.ndarray:
    ids = [npz[ROW_IDS] for npz in _iter_shards(out_dir, manifest)]
    return np.concatenate(ids) if ids else np.array([], dtype=str)


def _read_manifest(out_dir: Path) -> _Manifest | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = _Manifest(**json.loads(path.read_text()))
    if manifest.format != FORMAT:
        raise SaefsError(f"{path} has format {manifest.format!r}; this code reads {FORMAT!r}")
    return manifest


def _write_manifest(out_dir: Path, manifest: _Manifest) -> None:
    write_json(out_dir / MANIFEST, asdict(manifest))


def _remove_unlisted(out_dir: Path, manifest: _Manifest) -> None:
    """Delete leftovers of a killed run: temporary folders and shards the manifest never listed."""
    for temporary in out_dir.glob(".*.tmp"):
        shutil.rmtree(temporary)
    listed = {shard["file"] for shard in manifest.shards}
    for shard in out_dir.glob("shard-*.npz"):
        if shard.name not in listed:
            shard.unlink()
