"""Benchmark the Feast feature store: online latency, historical throughput, SQLite bytes sparse vs dense.

    python -m benchmarks.feature_store [--texts 1000] [--width 16384] [--repeats 200]

With the pipeline's outputs present (`dvc repro materialize`: data/feast/catalog.json, the
registry and the online store) latency and historical throughput are measured on the real store,
for its largest sparse view. Otherwise on a scratch store of synthetic codes of a 16k-latent SAE
with 500-900 active latents per text (sum-pooled TopK codes; CALIBRATION.md).

Storage is compared in one run, in a scratch store built from the same feature_repo/ definitions:
the sparse view (latent ids + values) of `--texts` texts, and a dense `Array(Float32)` view of
the same codes (the naive layout), materialized one after the other, each measured by how much
the SQLite file grows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.sparse import csr_matrix

import pipelines  # noqa: F401  (offline environment)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # feature_repo/ is a folder of the repo, not installed
from feature_repo.objects import repo_objects  # noqa: E402
from features.stores.feast.catalog import ViewSpec, read_catalog  # noqa: E402
from features.stores.feast.columns import EVENT_TIME, JOIN_KEY, to_csr  # noqa: E402
from features.stores.feast.offline import write_view  # noqa: E402
from features.stores.feast.retrieval import historical_frame  # noqa: E402
from features.stores.feast.store import apply_objects, materialize_views, open_store  # noqa: E402
from pipelines.paths import feast_catalog, feast_online_store, feast_registry  # noqa: E402
from pipelines.stores import FEATURE_REPO  # noqa: E402

SPARSE, DENSE = "bench__sparse", "bench__dense"


def synthetic_codes(texts: int, width: int, seed: int = 0) -> csr_matrix:
    """Pooled codes with 500-900 distinct active latents per text and positive, heavy-tailed values."""
    rng = np.random.default_rng(seed)
    active = rng.integers(500, 901, size=texts)
    indices = np.concatenate([np.sort(rng.choice(width, size=k, replace=False)) for k in active]).astype(np.int32)
    values = rng.lognormal(mean=0.0, sigma=1.0, size=len(indices)).astype(np.float32)
    return csr_matrix((values, indices, np.concatenate([[0], np.cumsum(active)])), shape=(texts, width))


def real_largest_view() -> tuple[ViewSpec, pd.DataFrame] | None:
    """The pipeline's largest sparse view and its rows, when `dvc repro materialize` has run."""
    if not all(path.is_file() for path in (feast_catalog(), feast_registry(), feast_online_store())):
        return None
    sparse = [view for view in read_catalog(feast_catalog()) if view.kind == "sparse"]
    if not sparse:
        return None
    view = max(sparse, key=lambda v: Path(v.path).stat().st_size)
    return view, pq.read_table(view.path).to_pandas()


def scratch_store(root: Path, codes: csr_matrix, text_ids: list[str], event_time: pd.Timestamp):
    """A copy of feature_repo/ with a sparse and a dense view of the same codes."""
    shutil.copytree(FEATURE_REPO, root / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    sources = root / "data" / "feast" / "sources"
    sources.mkdir(parents=True)
    times = pd.Series([event_time] * len(text_ids))
    write_view(sources / f"{SPARSE}.parquet", "sparse", text_ids, times, codes)
    write_view(sources / f"{DENSE}.parquet", "dense", text_ids, times, codes.toarray())
    catalog = [ViewSpec(SPARSE, "sparse", str(sources / f"{SPARSE}.parquet"), codes.shape[1], len(text_ids)),
               ViewSpec(DENSE, "dense", str(sources / f"{DENSE}.parquet"), codes.shape[1], len(text_ids))]
    store = open_store(root / "feature_repo")
    apply_objects(store, repo_objects(catalog, root))
    return store


def growth_per_1000(store, online_db: Path, view: str, texts: int) -> tuple[float, float]:
    """SQLite bytes per 1,000 texts that materializing `view` adds, and the seconds it took."""
    before = online_db.stat().st_size if online_db.exists() else 0
    started = time.perf_counter()
    materialize_views(store, [view])
    seconds = time.perf_counter() - started
    return (online_db.stat().st_size - before) * 1000 / texts, seconds


def percentiles_ms(read: Callable[[list[str]], object], ids: list[str], batch: int,
                   repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    read(list(rng.choice(ids, size=batch)))  # warm-up: first calls load the registry and open SQLite
    timings = []
    for _ in range(repeats):
        chosen = list(rng.choice(ids, size=batch, replace=len(ids) < batch))
        started = time.perf_counter()
        read(chosen)
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 99))


def online_reader(store, service: str) -> Callable[[list[str]], dict]:
    features = store.get_feature_service(service)
    return lambda ids: store.get_online_features(features=features, entity_rows=[{JOIN_KEY: i} for i in ids]).to_dict()


def report_latency(store, service: str, ids: list[str], repeats: int, width: int) -> None:
    read = online_reader(store, service)
    for batch, count in ((1, repeats), (100, max(10, repeats // 10))):
        p50, p99 = percentiles_ms(read, ids, batch, count)
        print(f"  online {service}, {batch:>3} entities: p50 {p50:7.2f} ms, p99 {p99:7.2f} ms ({count} reads)")
    rows = read(ids[:100])
    if "latent_ids" in rows:  # what a scorer does next with a sparse read
        started = time.perf_counter()
        to_csr(rows["latent_ids"], rows.get("latent_values"), width)
        print(f"  100 fetched sparse rows -> CSR: {(time.perf_counter() - started) * 1000:.1f} ms")


def entity_rows(rows: pd.DataFrame, count: int) -> pd.DataFrame:
    """`count` training rows: every text, asked again an hour later per round (each joins the same features)."""
    repeats = -(-count // len(rows))
    entities = pd.concat([rows[[JOIN_KEY, EVENT_TIME]].assign(**{EVENT_TIME: rows[EVENT_TIME] + pd.Timedelta(hours=i)})
                          for i in range(repeats)], ignore_index=True)
    return entities.head(count)


def report_historical(store, service: str, entities: pd.DataFrame) -> None:
    historical_frame(store, service, entities.head(10))  # warm-up
    started = time.perf_counter()
    frame, width = historical_frame(store, service, entities)
    matrix = to_csr(frame["latent_ids"], frame.get("latent_values"), width)
    seconds = time.perf_counter() - started
    print(f"  historical {service}: {len(entities)} rows in {seconds:.2f} s = {len(entities) / seconds:,.0f} rows/s "
          f"(matrix {matrix.shape}, {getattr(matrix, 'nnz', matrix.size):,} values)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000, help="texts in the scratch store (storage comparison)")
    parser.add_argument("--width", type=int, default=16384, help="SAE width of the synthetic codes")
    parser.add_argument("--repeats", type=int, default=200, help="single-entity reads per latency figure")
    parser.add_argument("--historical-rows", type=int, default=10000, help="entity rows of the historical retrieval")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores")

    real = real_largest_view()
    if real is not None:
        spec, rows = real
        rows = rows.head(args.texts)
        codes = to_csr(rows["latent_ids"], rows["latent_values"], spec.width)
        text_ids, event_time = rows[JOIN_KEY].tolist(), rows[EVENT_TIME].iloc[0]
        print(f"source: {spec.name} (largest sparse view of data/feast, {spec.n_rows} texts, width {spec.width})")
    else:
        codes = synthetic_codes(args.texts, args.width)
        text_ids, event_time = [f"bench-{i:06d}" for i in range(args.texts)], pd.Timestamp("2025-01-01", tz="UTC")
        print(f"source: synthetic codes, {args.texts} texts, width {args.width} (no materialized store in data/feast)")
    active = np.diff(codes.indptr)
    print(f"  active latents per text: mean {active.mean():.0f}, p95 {np.percentile(active, 95):.0f}")

    with tempfile.TemporaryDirectory(prefix="saefs-bench-") as tmp:
        root = Path(tmp)
        store = scratch_store(root, codes, text_ids, event_time)
        online_db = root / feast_online_store()
        sparse_bytes, sparse_s = growth_per_1000(store, online_db, SPARSE, len(text_ids))
        dense_bytes, dense_s = growth_per_1000(store, online_db, DENSE, len(text_ids))
        print("storage (SQLite online store, per 1,000 texts):")
        print(f"  sparse ids + values: {sparse_bytes / 1e6:7.2f} MB (materialized in {sparse_s:.1f} s)")
        print(f"  dense Array(Float32): {dense_bytes / 1e6:7.2f} MB (materialized in {dense_s:.1f} s)")
        print(f"  dense / sparse: {dense_bytes / sparse_bytes:.1f}x")
        print("latency and throughput:")
        if real is None:
            report_latency(store, SPARSE, text_ids, args.repeats, codes.shape[1])
            report_latency(store, DENSE, text_ids, max(20, args.repeats // 4), codes.shape[1])
            texts = pd.DataFrame({JOIN_KEY: text_ids, EVENT_TIME: event_time})
            report_historical(store, SPARSE, entity_rows(texts, args.historical_rows))
    if real is not None:
        spec, all_rows = real
        store = open_store(FEATURE_REPO)
        report_latency(store, spec.name, all_rows[JOIN_KEY].tolist(), args.repeats, spec.width)
        report_historical(store, spec.name, entity_rows(all_rows, max(args.historical_rows, len(all_rows))))


if __name__ == "__main__":
    main()
