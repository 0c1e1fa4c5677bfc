"""Benchmark the scoring service over loopback: latency p50/p99 and throughput, stored and new texts.

    python benchmarks/serve.py [--dataset spam] [--requests 200] [--new-requests 40] [--port 8765]
                               [--churn-s 30] [--other-version N] [--churn-only]

Starts `saefs serve` (python -m pipelines.serve serve) on 127.0.0.1 in a child process on this
checkout's outputs (after `dvc repro`: the online store, the registry's champion), waits for
/ready, then sends a bounded number of requests at concurrency 1 and 8 (threads, one HTTP
connection each):

  stored  GET /score/{text_id} of the dataset's test-split texts (already in the online store)
  new     POST /score with one text never seen before, of at least `extract.max_tokens` tokens
          (so every request pays a full 64-token forward): extract -> push -> online read -> probe

Measured in the same run as a floor: GET /health (loopback HTTP plus FastAPI, no scoring work).

Then, for `--churn-s` seconds, churn: 32 clients on stored texts and 8 on new texts at once,
while this process moves `champion` back and forth every `--move-every-s` seconds between the
champion and another version (`--other-version`, else the champion's model registered again), so
the service reloads on its poll, and rebuilds the online store from the offline sources over and
over as the `materialize` stage does (a fresh SQLite file beside the live one, the pushed rows
carried over, swapped in by one rename; Redis is rewritten in place). Every answer is checked for a half-loaded model:
its feature service must be that of its version's run, and one version must give one text one
probability. Errors (any non-200 or transport failure) must be 0. The alias is put back at the end.

The service writes new texts' features to the online store (data/feast/online/online_store.db, or
Redis on the cluster profile), and churn registers a version and rewrites the store: run it on a
copy you do not mind. Targets (issue 7, embedded profile, 2 CPU cores, concurrency 1): stored p99
under 50 ms, new-text p99 under 1 s; at concurrency 8, and under churn, no errors.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

import pipelines  # noqa: F401  (offline environment)
from features.sources.lm import load_tokenizer
from features.sources.models import model_location
from features.stores import tracking
from features.stores.feast.store import rebuild_online_store
from pipelines import paths
from pipelines.params import Params, load_params
from pipelines.stores import feature_store

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


@dataclass
class Churn:
    """What the churn phase saw: latencies and errors per kind, alias moves, store rewrites, inconsistent answers."""

    timings: dict[str, list[float]]
    errors: dict[str, int]
    moves: int
    rewrites: int
    half_loaded: list[str]
    per_version: dict[int, int]  # answers per champion version: both must appear, or the service never swapped


def churn(base: str, params: Params, dataset: str, stored_ids: list[str], texts: list[str], seconds: float,
          move_every_s: float, other_version: int | None, stored_clients: int = 32, new_clients: int = 8) -> Churn:
    """Stored and new texts at once while the champion alias moves and the online store is rewritten."""
    import mlflow

    name = tracking.registered_name(dataset)
    champion = tracking.get_alias_version(name, tracking.CHAMPION)
    if champion is None:
        sys.exit(f"{name} has no champion")
    client = mlflow.MlflowClient()
    if other_version is None:  # the champion's model again, as a new version: the service must reload it
        other_version = tracking.register(client.get_model_version(name, str(champion)).source, name)
    versions = [champion, other_version]
    services = {v: client.get_run(client.get_model_version(name, str(v)).run_id).data.tags["feature_service"]
                for v in versions}
    store = feature_store(params.feast_apply)
    stop = threading.Event()
    lock = threading.Lock()
    timings: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    answers: list[tuple[str, int, str, str, float]] = []  # (kind, version, feature service, text_id, probability)
    counts = {"moves": 0, "rewrites": 0}

    def record(kind: str, started: float, response: httpx.Response | None) -> None:
        with lock:
            timings[kind].append((time.perf_counter() - started) * 1000)
            if response is None or response.status_code != 200:
                errors[kind] += 1
                if errors[kind] <= 3:
                    print(f"    {kind} error: {'transport' if response is None else response.status_code} "
                          f"{'' if response is None else response.text[:200]}")
                return
            body = response.json()
            for result in body.get("results", [body]):
                answers.append((kind, result["model_version"], result["feature_service"], result["text_id"],
                                result["probability"]))

    def client_loop(kind: str, slot: int, stride: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            i = slot
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    if kind == "stored":
                        response = http.get(f"/score/{stored_ids[i % len(stored_ids)]}", params={"dataset": dataset})
                    else:
                        response = http.post("/score", json={"texts": [texts[i % len(texts)]], "dataset": dataset})
                except httpx.HTTPError:
                    response = None
                record(kind, started, response)
                i += stride

    def promoter() -> None:
        while not stop.wait(move_every_s):
            counts["moves"] += 1
            tracking.set_alias(name, tracking.CHAMPION, versions[counts["moves"] % 2])

    def rewriter() -> None:
        while not stop.is_set():
            rebuild_online_store(store)
            counts["rewrites"] += 1

    threads = [threading.Thread(target=client_loop, args=("stored", slot, stored_clients))
               for slot in range(stored_clients)]
    threads += [threading.Thread(target=client_loop, args=("new", slot, new_clients)) for slot in range(new_clients)]
    threads += [threading.Thread(target=promoter), threading.Thread(target=rewriter)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        tracking.set_alias(name, tracking.CHAMPION, champion)
    half_loaded = [f"{kind} {text} scored by v{version} with {service}, v{version} reads {services.get(version)}"
                   for kind, version, service, text, _ in answers if services.get(version) != service]
    probabilities: dict[tuple[int, str], set[float]] = defaultdict(set)
    for _, version, _, text, probability in answers:
        probabilities[version, text].add(round(probability, 5))
    half_loaded += [f"{text} got probabilities {sorted(p)} from v{version}"
                    for (version, text), p in probabilities.items() if len(p) > 1]
    per_version = {version: sum(1 for answer in answers if answer[1] == version) for version in versions}
    return Churn(dict(timings), dict(errors), counts["moves"], counts["rewrites"], half_loaded, per_version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a served dataset (default: serve.datasets[0])")
    parser.add_argument("--requests", type=int, default=200, help="stored-text and /health requests per concurrency")
    parser.add_argument("--new-requests", type=int, default=40, help="new-text requests per concurrency")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--churn-s", type=float, default=30, help="seconds of churn (0: none)")
    parser.add_argument("--move-every-s", type=float, default=2, help="how often churn moves the champion alias")
    parser.add_argument("--other-version", type=int, help="the version churn moves the alias to and back from")
    parser.add_argument("--churn-only", action="store_true", help="skip the concurrency 1 and 8 runs")
    args = parser.parse_args()
    params = load_params()
    tracking.configure(params.promote.tracking_uri)
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
        for concurrency in () if args.churn_only else (1, 8):
            runs = dict(scenarios)
            runs[f"new text ({max_tokens} tokens)"] = (
                lambda c, i, k=concurrency: c.post("/score", json={"texts": [texts[offset[k] + i]],
                                                                   "dataset": dataset}), args.new_requests)
            for name, (send, count) in runs.items():
                results[name, concurrency] = result = run_load(send, base, count, concurrency)
                print(f"  c={concurrency} {name:<22} p50 {result.p50_ms:8.1f} ms  p99 {result.p99_ms:8.1f} ms  "
                      f"{result.per_second:7.1f} req/s  errors {result.errors}/{result.requests}")
        if results:
            floor = results["health (floor)", 1].p50_ms
            stored, new = results["stored text", 1], results[f"new text ({max_tokens} tokens)", 1]
            print(f"stored-text p50 is {stored.p50_ms / floor:.1f}x the /health floor ({floor:.1f} ms)")
            print(f"targets at c=1: stored p99 {stored.p99_ms:.1f} ms < 50 ms: {stored.p99_ms < 50}; "
                  f"new-text p99 {new.p99_ms:.0f} ms < 1000 ms: {new.p99_ms < 1000}; "
                  f"errors at c=8: {sum(r.errors for (_, c), r in results.items() if c == 8)}")
        if args.churn_s > 0:
            print(f"churn for {args.churn_s:g} s: 32 stored-text and 8 new-text clients, champion moved every "
                  f"{args.move_every_s:g} s, online store rewritten; load average {os.getloadavg()[0]:.2f}")
            seen = churn(base, params, dataset, stored_ids, texts, args.churn_s, args.move_every_s,
                         args.other_version)
            for kind, timings in seen.timings.items():
                p50, p99 = np.percentile(timings, [50, 99])
                print(f"  churn {kind:<7} p50 {p50:8.1f} ms  p99 {p99:8.1f} ms  {len(timings) / args.churn_s:7.1f} "
                      f"req/s  errors {seen.errors.get(kind, 0)}/{len(timings)}")
            print(f"  {seen.moves} alias moves, {seen.rewrites} store rewrites, answers per version "
                  f"{seen.per_version}, {len(seen.half_loaded)} from a half-loaded model"
                  f"{': ' + '; '.join(seen.half_loaded[:5]) if seen.half_loaded else ''}")
        print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
