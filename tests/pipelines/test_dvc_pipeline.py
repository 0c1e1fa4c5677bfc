"""The DVC pipeline end to end on a scratch repo: tiny local model, two small file datasets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines import paths
from tests.features.test_models import save_tiny_model
from tests.helpers import REPO, embedded_params, write_params


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for item in ("dvc.yaml", "features", "pipelines"):
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, repo / item)
    save_tiny_model(repo / "tiny")
    datasets = {}
    for name in ("alpha", "beta"):
        frame = pd.DataFrame({"text": [f"{name} text {i}" for i in range(120)], "label": [i % 2 for i in range(120)]})
        frame.to_csv(repo / f"{name}.csv", index=False)
        datasets[name] = {"source": f"file:{name}.csv", "labels": [0, 1], "max_rows": 100}
    write_params(repo, embedded_params(models={"tiny": {"source": "path:tiny"}}, datasets=datasets))
    dvc(repo, "init", "--no-scm", "-q")
    return repo


def test_repro_runs_every_stage_then_nothing(scratch: Path) -> None:
    first = ran(dvc(scratch, "repro"))
    assert first == {"prepare_model@tiny", "prepare_data@alpha", "prepare_data@beta",
                     "validate_data@alpha", "validate_data@beta"}
    assert (scratch / paths.model_dir("tiny") / "saefs_model.json").is_file()
    assert len(pd.read_parquet(scratch / paths.prepared("alpha"))) == 100
    assert ran(dvc(scratch, "repro")) == set()


def test_changing_one_datasets_max_rows_reruns_only_its_stages(scratch: Path) -> None:
    dvc(scratch, "repro")
    params = yaml.safe_load((scratch / "params.yaml").read_text())
    params["datasets"]["beta"]["max_rows"] = 110
    write_params(scratch, params)
    assert ran(dvc(scratch, "repro")) == {"prepare_data@beta", "validate_data@beta"}
    assert len(pd.read_parquet(scratch / paths.prepared("beta"))) == 110


def test_dag_lists_the_stages(scratch: Path) -> None:
    assert {"prepare_data@alpha", "validate_data@beta", "prepare_model@tiny"} <= set(
        dvc(scratch, "stage", "list", "--name-only").split())
