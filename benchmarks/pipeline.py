"""Benchmark the whole pipeline as a fresh clone runs it: `dvc repro` in a scratch copy, then a second one.

    python benchmarks/pipeline.py [--keep]

Copies the working tree (tracked and untracked files, not ignored ones: no data, no DVC cache, no
MLflow store, as a fresh clone has) into a scratch folder, links this checkout's .venv, runs `dvc
repro` there and then `dvc repro` again with nothing changed, and prints each stage's cost from the
records the stages wrote (metrics/cost, pipelines.cost), the stage-time table, the total, and the
load average before and after. Install time is not part of it (`make install` is separate).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from features.reporting.report import cost_by_stage, cost_table  # noqa: E402
from pipelines import paths  # noqa: E402


def scratch_copy(target: Path) -> None:
    """The files a clone would have, plus what is not committed yet (so a change can be measured before it lands)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    shutil.rmtree(target / paths.COST, ignore_errors=True)  # only this run's records count
    (target / ".venv").symlink_to(REPO / ".venv")
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)  # DVC wants a git repository


def timed_repro(folder: Path, log: Path) -> float:
    env = os.environ | {"PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(["dvc", "repro"], cwd=folder, env=env, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="saefs-pipeline-"))
    try:
        scratch_copy(folder)
        load_before = os.getloadavg()
        first = timed_repro(folder, folder / "repro.log")
        load_after = os.getloadavg()
        second = timed_repro(folder, folder / "repro-again.log")
        records = {path.relative_to(folder / paths.COST).with_suffix("").as_posix(): json.loads(path.read_text())
                   for path in sorted((folder / paths.COST).rglob("*.json"))}
        table = cost_table(records)
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
            print(table.to_string(index=False))
            print()
            print(cost_by_stage(table).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"\nfresh dvc repro: {first / 60:.1f} min ({first:.0f} s; stages' own wall time "
              f"{table['wall_s'].sum():.0f} s, of which start-up {table['startup_s'].sum():.0f} s); "
              f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
        print(f"second dvc repro, nothing changed: {second:.1f} s")
    finally:
        if args.keep:
            print(f"scratch copy kept at {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
