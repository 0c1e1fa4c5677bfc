"""Benchmark the scoring service over loopback: latency p50/p99 and throughput, stored and new texts.

    python benchmarks/serve.py [--dataset spam] [--requests 200] [--new-requests 40] [--port 8765]

Starts `saefs serve` (python -m pipelines.serve serve) on 127.0.0.1 in a child process on this
checkout's outputs (after `dvc repro`: the online store, the registry's champion), waits for
/ready, then sends a bounded number of requests at concurrency 1 and 8 (threads, one HTTP
connection each):

  stored  GET /score/{text_id} of the dataset's test-split texts (already in the online store)
  new     POST /score with one text never seen before, of at least `extract.max_tokens` tokens
          (so every request pays a full 64-token forward): extract -> push -> online read -> probe

Measured in the same run as a floor: GET /health (loopback HTTP plus FastAPI, no scoring work).
The service writes new texts' features to the online store (data/feast/online/online_store.db, or
Redis on the cluster profile): run it on a copy of a store you mind. Targets (issue 7, embedded
profile, 2 CPU cores, concurrency 1): stored p99 under 50 ms, new-text p99 under 1 s; at
concurrency 8 no errors.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

import pipelines  # noqa: F401  (offline environment)
from features.lm import load_tokenizer
from features.models import model_location
from pipelines import paths
from pipelines.params import load_params

READY_TIMEOUT_S = 600  # loading the champion's language model takes ~10-60 s on a busy 2-core machine


@dataclass(frozen=True)
class Result:
    p50_ms: float
    p99_ms: float
    per_second: float
    errors: int
    requests: int


def run_load(send: Callable[[httpx.Client, int], httpx.Response], base: str, requests: int,
             concurrency: int) -> Result:
    """`requests` calls of `send(client, i)` spread over `concurrency` threads, each with its own connection."""
    clients = [httpx.Client(base_url=base, timeout=120) for _ in range(concurrency)]
    for client in clients:  # warm-up: open the connection, let the server reach its steady state
        send(client, -1 - clients.index(client))

    def worker(slot: int) -> tuple[list[float], int]:
        timings, errors = [], 0
        for i in range(slot, requests, concurrency):
            started = time.perf_counter()
            response = send(clients[slot], i)
            timings.append((time.perf_counter() - started) * 1000)
            errors += response.status_code != 200
        return timings, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    timings = np.concatenate([np.asarray(t) for t, _ in parts])
    return Result(float(np.percentile(timings, 50)), float(np.percentile(timings, 99)), requests / wall,
                  sum(e for _, e in parts), requests)


def new_texts(pool: list[str], tokenizer, min_tokens: int, count: int, seed: int = 0) -> list[str]:
    """Texts no store has seen: shuffled words of the dataset's texts, each at least `min_tokens` tokens long."""
    rng = np.random.default_rng(seed)
    words = " ".join(pool).split()
    out = []
    while len(out) < count:
        text = f"{len(out)} " + " ".join(rng.choice(words, size=min_tokens))
        if len(tokenizer(text)["input_ids"]) >= min_tokens:
            out.append(text)
    return out


def start_server(port: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "pipelines.serve", "serve", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)


def wait_ready(base: str, server: subprocess.Popen, log_path: Path) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            response = httpx.get(f"{base}/ready", timeout=30)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(1)
    sys.exit(f"not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a served dataset (default: serve.datasets[0])")
    parser.add_argument("--requests", type=int, default=200, help="stored-text and /health requests per concurrency")
    parser.add_argument("--new-requests", type=int, default=40, help="new-text requests per concurrency")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    params = load_params()
    dataset = args.dataset or params.serve.datasets[0]
    prepared = pd.read_parquet(paths.prepared(dataset))
    stored_ids = prepared.loc[prepared["split"] == "test", "text_id"].tolist()
    base = f"http://127.0.0.1:{args.port}"
    log_path = Path(tempfile.gettempdir()) / f"saefs-serve-bench-{os.getpid()}.log"
    load_before = os.getloadavg()
    server = start_server(args.port, log_path)
    try:
        started = time.perf_counter()
        champions = wait_ready(base, server, log_path)["champions"]
        ready_s = time.perf_counter() - started
        champion = httpx.get(f"{base}/score/{stored_ids[0]}", params={"dataset": dataset}, timeout=60).json()
        model = champion["feature_service"].split("__")[0]
        tokenizer = load_tokenizer(model_location(paths.model_dir(model))[0])
        max_tokens = params.extract.max_tokens
        texts = new_texts(prepared["text"].tolist(), tokenizer, max_tokens, 2 * args.new_requests + 16)
        print(f"saefs-{dataset} v{champion['model_version']} ({champion['feature_service']}); champions {champions}; "
              f"ready {ready_s:.0f} s after start; {len(stored_ids)} stored test texts")
        print(f"load average before: {load_before[0]:.2f} (1 min), {os.cpu_count()} CPUs")
        scenarios = {
            "health (floor)": (lambda c, i: c.get("/health"), args.requests),
            "stored text": (lambda c, i: c.get(f"/score/{stored_ids[i % len(stored_ids)]}",
                                               params={"dataset": dataset}), args.requests),
        }
        offset = {1: 0, 8: args.new_requests + 8}  # distinct texts per run; warm-up texts at negative indices
        results = {}
        for concurrency in (1, 8):
            runs = dict(scenarios)
            runs[f"new text ({max_tokens} tokens)"] = (
                lambda c, i, k=concurrency: c.post("/score", json={"texts": [texts[offset[k] + i]],
                                                                   "dataset": dataset}), args.new_requests)
            for name, (send, count) in runs.items():
                results[name, concurrency] = result = run_load(send, base, count, concurrency)
                print(f"  c={concurrency} {name:<22} p50 {result.p50_ms:8.1f} ms  p99 {result.p99_ms:8.1f} ms  "
                      f"{result.per_second:7.1f} req/s  errors {result.errors}/{result.requests}")
        floor = results["health (floor)", 1].p50_ms
        stored, new = results["stored text", 1], results[f"new text ({max_tokens} tokens)", 1]
        print(f"stored-text p50 is {stored.p50_ms / floor:.1f}x the /health floor ({floor:.1f} ms)")
        print(f"targets at c=1: stored p99 {stored.p99_ms:.1f} ms < 50 ms: {stored.p99_ms < 50}; "
              f"new-text p99 {new.p99_ms:.0f} ms < 1000 ms: {new.p99_ms < 1000}; "
              f"errors at c=8: {sum(r.errors for (_, c), r in results.items() if c == 8)}")
        print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
