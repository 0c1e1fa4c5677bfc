"""The benchmarks that read a built pipeline run on the scratch project's (tests/pipelines/conftest.py) own params."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO
from tests.scratch import dvc


def test_the_behaviour_benchmark_scores_every_task_kind_the_stage_scores(scratch: Path) -> None:
    # the scratch params hold a multiple-choice task (items) and a judgement task (judge); the benchmark once read
    # an item source from every task and failed on a judgement task with an AttributeError
    dvc(scratch, "repro", "prepare_model@tiny", "prepare_data@alpha", "prepare_data@beta")
    command = [sys.executable, str(REPO / "benchmarks" / "behaviour.py"), "--model", "tiny", "--items", "4"]
    proc = subprocess.run(command, cwd=scratch, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for task in ("items", "judge"):
        line = next((line for line in lines if line.startswith(f"tiny {task}: 4 items")), None)
        assert line is not None, proc.stdout
        assert "answers agree 100%" in line, line
    assert any(line.startswith("all tasks:") for line in lines), proc.stdout
