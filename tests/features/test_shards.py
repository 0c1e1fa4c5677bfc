from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse import random as sparse_random

from features.errors import SaefsError
from features.stores.shards import MANIFEST, ShardWriter, read_csr, read_dense

N_ROWS, SHARD_ROWS = 23, 5
PIECES = [3, 7, 1, 9, 3]  # appends of uneven sizes, crossing shard boundaries


def random_csr(density: float, seed: int) -> csr_matrix:
    return csr_matrix(sparse_random(N_ROWS, 40, density=density, format="csr", random_state=seed, dtype=np.float32))


def make_rows(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "row_ids": [f"text-{i:03d}" for i in range(N_ROWS)],
        "sparse": {"l1-sum": random_csr(0.2, seed), "l1-top20": random_csr(0.1, seed + 1)},
        "dense": {
            "l1-hidden-last": rng.normal(size=(N_ROWS, 6)).astype(np.float32),
            "n_tokens": rng.integers(1, 50, size=N_ROWS),
        },
    }


def append_rows(writer: ShardWriter, rows: dict[str, Any], start: int = 0) -> None:
    """Append rows[start:] in PIECES-sized appends."""
    bounds = np.cumsum([0, *PIECES])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        lo = max(lo, start)
        if lo < hi:
            writer.append(
                rows["row_ids"][lo:hi],
                sparse={name: matrix[lo:hi] for name, matrix in rows["sparse"].items()},
                dense={name: array[lo:hi] for name, array in rows["dense"].items()},
            )


def assert_folder_holds(folder: Path, rows: dict[str, Any]) -> None:
    for name, expected in rows["sparse"].items():
        matrix, row_ids = read_csr(folder, name)
        assert row_ids.tolist() == rows["row_ids"]
        assert matrix.dtype == np.float32 and matrix.indices.dtype == np.int32
        assert (matrix != expected).nnz == 0
    for name, expected in rows["dense"].items():
        array, row_ids = read_dense(folder, name)
        assert row_ids.tolist() == rows["row_ids"]
        np.testing.assert_array_equal(array, expected)


def test_round_trip_over_shards(tmp_path: Path) -> None:
    rows = make_rows()
    with ShardWriter(tmp_path, SHARD_ROWS) as writer:
        append_rows(writer, rows)
    shards = sorted(p.name for p in tmp_path.glob("shard-*.npz"))
    assert shards == [f"shard-{i:05d}.npz" for i in range(5)]  # 5 + 5 + 5 + 5 + 3 rows
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] is True
    assert_folder_holds(tmp_path, rows)


def test_explicit_zeros_are_not_stored(tmp_path: Path) -> None:
    matrix = csr_matrix((np.array([1.0, 0.0], dtype=np.float32), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    with ShardWriter(tmp_path, SHARD_ROWS) as writer:
        writer.append(["a"], sparse={"codes": matrix})
    assert read_csr(tmp_path, "codes")[0].nnz == 1


def failing_on_call(number: int, real_savez: Any) -> Any:
    calls = {"count": 0}

    def savez(file: Any, **arrays: Any) -> None:
        calls["count"] += 1
        if calls["count"] == number:
            Path(file).write_bytes(b"half a shard")
            raise OSError("disk died")
        real_savez(file, **arrays)

    return savez


def test_a_failed_run_resumes_after_the_last_finished_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = make_rows()
    monkeypatch.setattr(np, "savez", failing_on_call(3, np.savez))
    with pytest.raises(OSError, match="disk died"), ShardWriter(tmp_path, SHARD_ROWS) as writer:
        append_rows(writer, rows)
    monkeypatch.undo()
    with pytest.raises(SaefsError, match=r"unfinished \(2 shards, 10 rows\)"):
        read_csr(tmp_path, "l1-sum")
    # what a killed (not merely failing) run leaves behind: a temporary folder and an unlisted shard
    (tmp_path / ".shard-00002.npz.k1ll3d.tmp").mkdir()
    (tmp_path / ".shard-00002.npz.k1ll3d.tmp" / "shard-00002.npz").write_bytes(b"half a shard")
    (tmp_path / "shard-00002.npz").write_bytes(b"renamed but never listed")

    with ShardWriter(tmp_path, SHARD_ROWS) as writer:
        done = writer.resume(rows["row_ids"])
        assert done == 2 * SHARD_ROWS
        assert not (tmp_path / ".shard-00002.npz.k1ll3d.tmp").exists() and not (tmp_path / "shard-00002.npz").exists()
        append_rows(writer, rows, start=done)
    assert_folder_holds(tmp_path, rows)


def test_readers_see_only_listed_shards(tmp_path: Path) -> None:
    rows = make_rows()
    with ShardWriter(tmp_path, SHARD_ROWS) as writer:
        append_rows(writer, rows)
    (tmp_path / "shard-00099.npz").write_bytes(b"not a result")
    (tmp_path / ".shard-00005.npz.x.tmp").mkdir()
    assert_folder_holds(tmp_path, rows)


def test_resuming_with_another_input_is_refused(tmp_path: Path) -> None:
    rows = make_rows()
    with ShardWriter(tmp_path, SHARD_ROWS) as writer:
        append_rows(writer, rows)
    other_ids = [f"other-{i}" for i in range(N_ROWS)]
    with pytest.raises(SaefsError, match=r"holds 23 rows of a different input.*delete the folder"):
        ShardWriter(tmp_path, SHARD_ROWS).resume(other_ids)


def test_another_job_starts_over_and_the_same_job_resumes(tmp_path: Path) -> None:
    rows = make_rows()
    with ShardWriter(tmp_path, SHARD_ROWS, fingerprint="poolings=sum") as writer:
        append_rows(writer, rows)
    assert ShardWriter(tmp_path, SHARD_ROWS, fingerprint="poolings=sum").resume(rows["row_ids"]) == N_ROWS
    changed = ShardWriter(tmp_path, SHARD_ROWS, fingerprint="poolings=sum,max")
    assert changed.resume(rows["row_ids"]) == 0
    assert not list(tmp_path.glob("shard-*.npz"))


def test_reading_names_what_is_there(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, SHARD_ROWS) as writer:
        writer.append(["a"], sparse={"codes": csr_matrix(np.ones((1, 2)))}, dense={"n_tokens": np.array([3])})
    with pytest.raises(SaefsError, match=r"no sparse array 'nope'; it has \['codes'\]"):
        read_csr(tmp_path, "nope")
    with pytest.raises(SaefsError, match="no manifest.json"):
        read_dense(tmp_path / "missing", "n_tokens")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"sparse": {"a.b": csr_matrix(np.ones((1, 2)))}}, r"bad array names \['a\.b'\]"),
        ({"dense": {"row_ids": np.ones(1)}}, r"bad array names \['row_ids'\]"),
        ({"sparse": {"x": csr_matrix(np.ones((1, 2)))}, "dense": {"x": np.ones(1)}}, r"bad array names \['x'\]"),
        ({"dense": {"n_tokens": np.ones(2)}}, r"1 row ids but arrays with other row counts: \{'n_tokens': 2\}"),
    ],
)
def test_malformed_appends_are_refused(tmp_path: Path, arrays: dict[str, Any], message: str) -> None:
    with pytest.raises(SaefsError, match=message):
        ShardWriter(tmp_path, SHARD_ROWS).append(["a"], **arrays)


def test_appends_must_keep_the_same_arrays(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, SHARD_ROWS)
    writer.append(["a"], dense={"n_tokens": np.ones(1)})
    with pytest.raises(SaefsError, match=r"differ from the ones already in"):
        writer.append(["b"], dense={"n_words": np.ones(1)})


@pytest.mark.parametrize(("width", "stored"), [(2**16, np.uint16), (2**16 + 1, np.int32), (2**20, np.int32)])
def test_latent_ids_take_two_bytes_up_to_64k_latents(tmp_path: Path, width: int, stored: type) -> None:
    matrix = csr_matrix(([1.5, 2.5], ([0, 1], [3, width - 1])), shape=(2, width), dtype=np.float32)
    with ShardWriter(tmp_path, SHARD_ROWS) as writer:
        writer.append(["a", "b"], sparse={"codes": matrix})
    with np.load(tmp_path / "shard-00000.npz") as npz:
        assert npz["codes.indices"].dtype == stored
    loaded, _ = read_csr(tmp_path, "codes")
    assert loaded.indices.dtype == np.int32 and (loaded != matrix).nnz == 0


def test_checkpoints_travel_with_their_shard_and_resume(tmp_path: Path) -> None:
    rows, folder = make_rows(), tmp_path / "ckpt"
    writer = ShardWriter(folder, SHARD_ROWS, "job")
    for lo in range(0, 15, SHARD_ROWS):  # three shards, each with the running row count after it
        hi = lo + SHARD_ROWS
        writer.append(rows["row_ids"][lo:hi], dense={"n_tokens": rows["dense"]["n_tokens"][lo:hi]},
                      checkpoint={"rows_so_far": np.asarray(hi)})
    assert writer.stored_checkpoint() == {"rows_so_far": 15}
    writer.append(rows["row_ids"][15:17], dense={"n_tokens": rows["dense"]["n_tokens"][15:17]},
                  checkpoint={"rows_so_far": np.asarray(17)})  # pending: no shard ends there yet

    resumed = ShardWriter(folder, SHARD_ROWS, "job")  # a killed run: the pending rows are lost
    assert resumed.resume(rows["row_ids"]) == 15 and resumed.stored_checkpoint() == {"rows_so_far": 15}
    with pytest.raises(SaefsError, match="stores checkpoints with its shards: pass one with every append"):
        resumed.append(rows["row_ids"][15:17], dense={"n_tokens": rows["dense"]["n_tokens"][15:17]})
    with pytest.raises(SaefsError, match=r"would cross a shard boundary \(6 rows buffered, shard_rows=5\)"):
        resumed.append(rows["row_ids"][15:21], dense={"n_tokens": rows["dense"]["n_tokens"][15:21]},
                       checkpoint={"rows_so_far": np.asarray(21)})
    resumed.append(rows["row_ids"][15:18], dense={"n_tokens": rows["dense"]["n_tokens"][15:18]},
                   checkpoint={"rows_so_far": np.asarray(18)})
    resumed.close()  # the last, partial shard keeps the final state
    assert ShardWriter(folder, SHARD_ROWS, "job").stored_checkpoint() == {"rows_so_far": 18}
    assert read_dense(folder, "n_tokens")[1].tolist() == rows["row_ids"][:18]
