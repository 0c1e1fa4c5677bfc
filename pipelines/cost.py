"""What each stage instance cost: wall and CPU time, start-up (imports), memory, and the work it did.

`stage_main` opens a record around every stage; the stage adds its work (`work(tokens=..., texts=...)`)
and, where a model forward bounds it, its rate against the matmul limit (`forward(...)`). The record is
written to metrics/cost/<stage>[/<item>].json (declared in dvc.yaml, so `dvc metrics show` lists it).
Processes a stage starts itself (torchrun workers) inherit SAEFS_COST_WORK and append their work to
that file instead; the stage merges it, so one record covers the whole stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from features.machine import machine_name

WORK_ENV = "SAEFS_COST_WORK"

_record: dict[str, Any] | None = None  # the open record of this process's stage, if it runs one


def work(**counts: float) -> None:
    """Add to the stage's work counters (texts, tokens, fits, items...); a no-op outside a stage."""
    if _record is not None:
        for key, value in counts.items():
            _record["work"][key] = _record["work"].get(key, 0) + value
    elif shared := os.environ.get(WORK_ENV):
        with open(shared, "a") as file:
            file.write(json.dumps({"work": counts}) + "\n")


def forward(name: str, rate: dict[str, float]) -> None:
    """Record a model-bound step's throughput (features.forward.throughput.throughput) under `name`."""
    if _record is not None:
        _record["forward"][name] = rate
    elif shared := os.environ.get(WORK_ENV):
        with open(shared, "a") as file:
            file.write(json.dumps({"forward": {name: rate}}) + "\n")


def process_age() -> float:
    """Seconds since this process started. From the kernel's boot-relative clock where Linux has one: psutil's
    `create_time` adds the boot time, which Linux gives in whole seconds, so its age is up to a second too long
    (0.67 s on the machine where this was found, on every stage of a repro)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # after the command's name
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime
    except (OSError, AttributeError, IndexError, ValueError):  # no /proc (macOS): psutil's, coarser
        return time.time() - psutil.Process().create_time()


def cpu_seconds() -> float:
    """CPU seconds of this process and of every process it started: those it has waited for, and those still
    running, such as the worker pools of joblib (train_probes, transfer), which outlive the stage's work and are
    never waited for before the record is written. Their time was missing from the records before."""
    own, ended = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    # read after getrusage, so a child reaped in between is left out rather than counted twice
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it ended meanwhile
            times = child.cpu_times()  # its own, and that of the children it waited for
            total += times.user + times.system + times.children_user + times.children_system
    return total


@contextmanager
def recording(path: Path | None) -> Iterator[None]:
    """Record the stage run inside the block to `path` (None, or a worker process: record nothing).

    The file is written only when the stage succeeds: a failed stage's outputs are not kept either.
    """
    global _record
    if path is None or os.environ.get(WORK_ENV):
        yield
        return
    started = time.perf_counter()
    startup = process_age()  # interpreter start and imports before the stage
    shared = path.parent / f".{path.name}.work"
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.unlink(missing_ok=True)
    os.environ[WORK_ENV] = str(shared)
    _record = {"work": {}, "forward": {}}
    load_start = os.getloadavg()[0]
    try:
        yield
        record = _record | {"wall_seconds": round(time.perf_counter() - started + startup, 1),
                            "startup_seconds": round(startup, 1),
                            "cpu_seconds": round(cpu_seconds(), 1),  # since the process started
                            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                            "machine": machine_name()}  # timings compare only on the same one
        _record = None  # merged work below goes through the plain dict
        if shared.is_file():
            for line in shared.read_text().splitlines():
                entry = json.loads(line)
                for key, value in entry.get("work", {}).items():
                    record["work"][key] = record["work"].get(key, 0) + value
                record["forward"] |= entry.get("forward", {})
        from features.stores.files import write_json

        write_json(path, record)
    finally:
        _record = None
        os.environ.pop(WORK_ENV, None)
        shared.unlink(missing_ok=True)
