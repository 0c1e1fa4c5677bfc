"""Data parallelism over torch.distributed (gloo, CPU or GPU hosts): one model replica per worker.

Rows are cut into blocks of `block_rows` (the shard size); in round r, worker w takes block
r * world + w. After each round the writer (rank 0) gathers the round's blocks and writes them in
block order, so the output is the single-process output, row for row and shard for shard.

Workers are started by `torchrun` (several machines: `torchrun --nnodes N --rdzv-endpoint ...`),
or by `launch` on this machine; a process started without torchrun is a world of one. torch is
imported by the functions that use a process group, so the process that only launches does without.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from features.errors import SaefsError

if TYPE_CHECKING:
    from features.sources.sae import QualityMeter

# A worker that dies is noticed by torchrun, which stops the others; this only bounds a hung peer.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting WORLD_SIZE) started this process."""
    return "WORLD_SIZE" in os.environ


def join_world() -> World:
    """The world torchrun set up (gloo process group), or a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size())


def leave_world() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def launch(module: str, args: Sequence[str], workers: int) -> None:
    """Run `python -m module args` as `workers` processes on this machine (torchrun --standalone)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
               "-m", module, *args]
    # Each worker owns an equal share of the cores, as torchrun would default to one thread each.
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {"OMP_NUM_THREADS": str(threads)} | os.environ
    code = subprocess.run(command, env=env, check=False).returncode
    if code:
        raise SaefsError(f"{workers} workers of `python -m {module} {' '.join(args)}` failed (exit code {code}); "
                         "the first worker's error is above")


def broadcast(value: Any, world: World) -> Any:
    """The writer's `value`, on every worker."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, world: World) -> list[Any] | None:
    """Every worker's `value` in rank order on the writer; None elsewhere."""
    if world.size == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world.size if world.is_writer else None
    dist.gather_object(value, out, dst=0)
    return out


def rounds(first: int, n_rows: int, block_rows: int, world: World) -> Iterator[list[tuple[int, int] | None]]:
    """Per round, each rank's row range [start, stop) (None when the rows ran out before its turn)."""
    starts = list(range(first, n_rows, block_rows))
    for offset in range(0, len(starts), world.size):
        turn = starts[offset : offset + world.size]
        yield [(start, min(start + block_rows, n_rows)) for start in turn] + [None] * (world.size - len(turn))


def merge_meters(meters: Sequence[dict[Any, QualityMeter]]) -> dict[Any, QualityMeter]:
    """Sum the workers' SAE quality meters into the first (token counts, error and moment sums, ever-active)."""
    merged = meters[0]
    for other in meters[1:]:
        for key, meter in merged.items():
            meter.add(other[key])
    return merged
