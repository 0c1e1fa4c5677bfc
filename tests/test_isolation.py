"""What one test leaves in the process must not reach the next: with pytest-xdist a worker runs many modules,
and the stages a later test starts inherit the worker's environment (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

mlflow = pytest.importorskip("mlflow")
URIS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
AT_START = {key: os.environ.get(key) for key in URIS}  # what the user exported, if anything


def test_a_test_that_points_mlflow_at_a_store(tmp_path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)  # MLflow leaves MLFLOW_REGISTRY_URI exported


def test_the_next_test_starts_without_its_store() -> None:  # runs after the one above: pytest keeps module order
    assert {key: os.environ.get(key) for key in URIS} == AT_START
