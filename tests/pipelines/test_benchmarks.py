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
