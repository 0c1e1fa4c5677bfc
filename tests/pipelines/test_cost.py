"""Stage cost records: what stage_main writes to metrics/cost, merged from worker processes, never on failure."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from features.errors import SaefsError
from features.forward import throughput
from features.machine import machine_name
from pipelines import cost, paths, stage_main


@pytest.fixture(autouse=True)
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(throughput.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(cost.WORK_ENV, raising=False)
    return tmp_path


def busy(item: str) -> None:
    """A stage that does work itself and in a worker process it starts (as extract's torchrun workers)."""
    cost.work(texts=3, tokens=30)
    cost.work(tokens=12)
    worker = "from pipelines import cost; cost.work(tokens=100); cost.forward('w', {'tokens_per_second': 5.0})"
    subprocess.run([sys.executable, "-c", worker], check=True)
    cost.forward("extract", throughput.throughput(42, 0.5, throughput.forward_flops_per_token([torch.nn.Linear(4, 4)])))
    if item == "bad/input":
        raise SaefsError("bad input")


def test_a_stage_records_times_work_and_its_workers_work() -> None:
    assert stage_main(busy, ["m/d"], doc="", arg="item") == 0
    record = json.loads(paths.stage_cost("test_cost", "m/d").read_text())
    assert record["work"] == {"texts": 3, "tokens": 142}  # the worker's 100 merged into the stage's 42
    assert record["forward"]["w"] == {"tokens_per_second": 5.0}
    rate = record["forward"]["extract"]
    assert rate["tokens_per_second"] == 84.0 and rate["gflop_per_second"] == pytest.approx(84 * 40 / 1e9, abs=0.01)
    assert 0 < rate["matmul_limit_gflop_per_second"] and "load_average" in rate
    assert record["wall_seconds"] >= record["startup_seconds"] > 0
    assert record["cpu_seconds"] > 0 and record["peak_rss_mb"] > 0 and len(record["load_average"]) == 2
    assert record["machine"] == machine_name() and machine_name().endswith(f" | {os.cpu_count()} cpus")
    assert not list(paths.COST.rglob(".*"))  # the workers' scratch file is gone


def burn(seconds: float) -> float:
    """Spin on the CPU for `seconds` of this process's CPU time; the CPU time spent."""
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass
    return time.process_time() - started


def fits_in_a_pool(item: str) -> None:
    """A stage whose work runs in joblib's worker processes (as train_probes' and transfer's fits), which are still
    alive when the stage's record is written; it leaves what it measured for the test."""
    from joblib import Parallel, delayed

    workers = sum(Parallel(n_jobs=2)(delayed(burn)(0.6) for _ in range(2)))
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path("measured.json").write_text(json.dumps({"workers": workers, "own": own.ru_utime + own.ru_stime +
                                                 ended.ru_utime + ended.ru_stime}))


def test_the_cpu_time_counts_worker_processes_still_running() -> None:
    # joblib keeps its workers for the next call, so no one waits for them before the record is written: their CPU
    # time was not in the record (train_probes read 0.3-0.4 CPU seconds per wall second while two workers fitted)
    assert stage_main(fits_in_a_pool, ["m/d"], doc="", arg="item") == 0
    record = json.loads(paths.stage_cost("test_cost", "m/d").read_text())
    measured = json.loads(Path("measured.json").read_text())
    assert measured["workers"] >= 1.2
    assert record["cpu_seconds"] >= measured["own"] + 0.9 * measured["workers"]


def test_a_failed_stage_writes_no_cost_and_off_or_per_stage_choose_the_file() -> None:
    assert stage_main(busy, ["bad/input"], doc="", arg="item") == 2
    assert not paths.stage_cost("test_cost", "bad/input").exists()
    assert stage_main(busy, ["x/y"], doc="", arg="item", cost="off") == 0
    assert not paths.COST.exists() or not list(paths.COST.rglob("*.json"))
    assert stage_main(busy, ["x/y"], doc="", arg="item", cost="per_stage") == 0
    assert json.loads(paths.stage_cost("test_cost").read_text())["work"]["tokens"] == 142


def test_work_outside_a_stage_is_not_recorded_anywhere() -> None:
    cost.work(tokens=1)
    cost.forward("x", {})
    assert not paths.COST.exists()


def test_the_matmul_limit_is_the_best_rate_measured_on_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    rates = [50.0, 40.0, 90.0]
    monkeypatch.setattr(throughput, "measure_matmul_gflops", lambda: rates.pop(0))
    assert throughput.matmul_limit() == throughput.matmul_limit() == 50.0  # measured once, then cached
    assert throughput.remember_matmul_rate(40.0) == 50.0  # a slower (busier) measurement does not lower it
    # a stage faster than the cached limit shows it was measured on a busy machine: it is measured again
    rate = throughput.throughput(tokens=60, seconds=1.0, flops_per_token=10**9)
    assert rate["matmul_limit_gflop_per_second"] == 50.0 and rates == [90.0]
    rate = throughput.throughput(tokens=70, seconds=1.0, flops_per_token=10**9)
    assert rate["matmul_limit_gflop_per_second"] == 90.0
    assert rate["fraction_of_matmul_limit"] == pytest.approx(70 / 90, abs=1e-3)
    monkeypatch.setattr(throughput.torch, "get_num_threads", lambda: 99)  # another thread count: another limit
    rates.append(10.0)
    assert throughput.matmul_limit() == 10.0


def test_forward_flops_count_two_per_weight_of_the_blocks_run() -> None:
    blocks = [torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(4, 4)]
    assert throughput.forward_flops_per_token(blocks) == 2 * (32 + 20)
    assert throughput.forward_flops_per_token(blocks[:1], extra_params=10) == 2 * 42


def test_the_start_up_of_a_new_process_is_its_age_not_the_boot_times_rounding() -> None:
    # psutil's create_time adds Linux's boot time, given in whole seconds: on a boot whose fraction was 0.67 s,
    # every stage's start-up read 0.67 s too long. A process that reports its age at once is as old as the time
    # its parent saw pass since starting it, to the kernel clock's tick.
    started = time.monotonic()
    age = float(subprocess.run([sys.executable, "-c", "from pipelines import cost; print(cost.process_age())"],
                               check=True, capture_output=True, text=True).stdout)
    assert 0 < age <= time.monotonic() - started + 0.02
