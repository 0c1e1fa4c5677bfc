"""The benchmarks that read a built pipeline run on the scratch project (tests/pipelines/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.scratch import dvc

# benchmark -> (arguments sized for the tiny model, a line its report must print)
ON_A_BUILT_PIPELINE = {
    "extract": (["--model", "tiny", "--dataset", "alpha", "--texts", "16", "--layers", "1", "--widths", "64"],
                "pooled features of both paths agree"),
    "train_probes": (["--item", "tiny/alpha", "--resamples", "2"], "logging:"),
    "latent_cards": (["--model", "tiny", "--texts", "20", "--lookups", "50"], "lookup of a card by id"),
    "sae_training": (["--model", "tiny", "--layer", "1", "--width", "64", "--samples", "4000"], "lean:"),
    "transfer": (["--texts-per-language", "60", "--resamples", "2", "--width", "64"], "prediction rows equal: True"),
}


def run_benchmark(scratch: Path, name: str, *args: str) -> str:
    command = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args]
    proc = subprocess.run(command, cwd=scratch, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("name", sorted(ON_A_BUILT_PIPELINE))
def test_a_benchmark_runs_on_the_scratch_pipeline_and_reports(scratch: Path, name: str) -> None:
    # the tests of the code shape only ask each benchmark for --help; this runs the ones that read a built pipeline
    dvc(scratch, "repro")
    args, line = ON_A_BUILT_PIPELINE[name]
    out = run_benchmark(scratch, name, *args)
    assert any(line in printed for printed in out.splitlines()), out


def test_the_behaviour_benchmark_scores_every_task_kind_the_stage_scores(scratch: Path) -> None:
    # the scratch params hold a multiple-choice task (items) and a judgement task (judge); the benchmark once read
    # an item source from every task and failed on a judgement task with an AttributeError
    dvc(scratch, "repro", "prepare_model@tiny", "prepare_data@alpha", "prepare_data@beta")
    out = run_benchmark(scratch, "behaviour", "--model", "tiny", "--items", "4")
    lines = out.splitlines()
    for task in ("items", "judge"):
        line = next((line for line in lines if line.startswith(f"tiny {task}: 4 items")), None)
        assert line is not None, out
        assert "answers agree 100%" in line, line
    assert any(line.startswith("all tasks:") for line in lines), out


def test_the_extract_benchmark_counts_against_the_best_matmul_rate_the_machine_has_shown(scratch: Path,
                                                                                         tmp_path: Path) -> None:
    # the benchmark divided by its own run's measurement, which a busy moment makes low: one run read 84% of the
    # limit where the machine's best rate gave 70%. A machine that once showed an unreachable rate reads ~0%.
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAEFS_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", "from features.forward.throughput import remember_matmul_rate; "
                    "remember_matmul_rate(1e6)"], check=True, cwd=scratch, env=env)
    dvc(scratch, "repro")
    args, _ = ON_A_BUILT_PIPELINE["extract"]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "extract.py"), *args], cwd=scratch,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    limit = next(line for line in proc.stdout.splitlines() if line.startswith("fp32 matmul limit"))
    assert limit.split()[3] == "1000000.0", limit
    assert "(0.0% of the matmul limit" in proc.stdout, proc.stdout
