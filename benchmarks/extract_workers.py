"""Benchmark `extract` on 2 torchrun workers against 1 process, on the same texts, in one run.

    python benchmarks/extract_workers.py --cell gemma3_270m/spam --repeats 2

Needs `dvc repro extract@<model>-<dataset>` first (the prepared model, its SAEs and the texts).
Each run is the whole stage (`python -m pipelines.extract <cell>`) in a scratch folder that links
those inputs, with `scale_out.extract_workers` 1 or 2, alternating so that other load on the
machine hits both alike. `--background-load N` keeps N busy processes running meanwhile, as other
jobs on a shared machine would. Prints the wall clock of each (process start to exit, model loading
included) and the extraction time the stage reports, their ratios, and whether every shard and
the manifest came out byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

import pipelines  # noqa: F401  (offline environment)
from pipelines import paths
from pipelines.extract import REPORT

CODE = Path(__file__).resolve().parents[1]  # the saefs code the stage runs; its data: the current directory's


def scratch(root: Path, model: str, dataset: str, workers: int) -> Path:
    """A project folder whose model, SAEs and prepared texts link to this checkout's, with `workers` extractors."""
    project = root / f"workers{workers}"
    for source in (paths.model_dir(model), paths.sae_dir(model), paths.prepared(dataset)):
        (project / source).parent.mkdir(parents=True, exist_ok=True)
        (project / source).symlink_to(source.resolve())
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["scale_out"]["extract_workers"] = workers
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def run_stage(project: Path, cell: str) -> tuple[float, float]:
    """Wall-clock seconds of the stage from a fresh output folder, and the extraction seconds it reports."""
    model, dataset = cell.split("/")
    out_dir = project / paths.features_dir(model, dataset)
    shutil.rmtree(out_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(CODE)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.extract", cell], cwd=project, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"`python -m pipelines.extract {cell}` failed in {project}:\n{done.stderr[-3000:]}")
    return wall, json.loads((project / paths.extract_metrics(model, dataset)).read_text())["seconds"]


def identical(one: Path, two: Path) -> bool:
    """Every file of two output folders but the report (it holds timings) has the same bytes."""
    names = sorted(path.name for path in one.iterdir() if path.name != REPORT)
    same_names = names == sorted(path.name for path in two.iterdir() if path.name != REPORT)
    return same_names and all((one / name).read_bytes() == (two / name).read_bytes() for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="gemma3_270m/spam", help="<model>/<dataset>")
    parser.add_argument("--repeats", type=int, default=2, help="runs per number of workers, alternating")
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="busy processes sharing the cores during the runs (default: none)")
    args = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.background_load)]
    try:
        measure(args)
    finally:
        for hog in hogs:
            hog.kill()


def measure(args: argparse.Namespace) -> None:
    model, dataset = args.cell.split("/")
    times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="saefs-workers-") as tmp:
        projects = {workers: scratch(Path(tmp), model, dataset, workers) for workers in times}
        for repeat in range(args.repeats):
            for workers, project in projects.items():
                times[workers].append(run_stage(project, args.cell))
                wall, seconds = times[workers][-1]
                print(f"run {repeat + 1}, {workers} worker(s): {wall:.1f} s wall, {seconds:.1f} s extracting")
        same = identical(*(project / paths.features_dir(model, dataset) for project in projects.values()))
    texts = len(pd.read_parquet(paths.prepared(dataset)))
    load = os.getloadavg()[0]
    print(f"{args.cell}: {texts} texts, {os.cpu_count()} cores, {args.background_load} busy processes beside, "
          f"load average {load:.1f} at the end")
    for label, column in (("wall clock", 0), ("extraction", 1)):
        one = statistics.median(t[column] for t in times[1])
        two = statistics.median(t[column] for t in times[2])
        print(f"  {label:<10}: 1 worker {one:6.1f} s, 2 workers {two:6.1f} s: {one / two:.2f}x faster")
    print(f"  shards and manifest byte-identical: {same}")


if __name__ == "__main__":
    main()
