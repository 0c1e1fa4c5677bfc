"""Which machine a measurement was made on: timings and matmul rates are only comparable on the same one."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path


@cache  # read once per process: every throughput record and model load asks
def cpu_name() -> str:
    """The CPU's model name with its family, model and stepping: a virtual machine may name two generations alike
    ("AMD EPYC" for a Zen 3 and a Zen 5, whose matmul rates differ threefold)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return " ".join([fields.get("model name", platform.machine())]
                    + [f"{name} {fields[name]}" for name in ("cpu family", "model", "stepping") if name in fields])


def machine_name() -> str:
    """The CPU and how many cores the system shows."""
    return f"{cpu_name()} | {os.cpu_count()} cpus"
