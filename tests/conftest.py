"""Shared fixtures. Importing `pipelines` first sets the offline environment for every test."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import pipelines  # noqa: F401  (sets HF_HUB_OFFLINE and friends before any HF import)

# Warm stage servers that the tests' `dvc repro` runs start (pipelines/warm.py) leave 20 s after their last
# stage, not a minute, so none outlives the test session for long.
os.environ.setdefault("SAEFS_WARM_IDLE", "20")

MLFLOW_URIS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# The longest modules: the scratch project's chain (tests/pipelines/conftest.py builds it once per worker) and
# the pages that read it, then the services' pipeline.
LONGEST = ("tests/pipelines/test_dvc_pipeline.py", "tests/pipelines/test_pages.py", "tests/pipelines/test_cluster.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` hands whole modules to pytest-xdist workers in collection order (`--dist loadfile`), so each
    module's fixtures are built once: the longest go first, so none starts late, while the others fill in."""
    def rank(item: pytest.Item) -> int:
        module = item.nodeid.partition("::")[0]
        return LONGEST.index(module) if module in LONGEST else len(LONGEST)

    items.sort(key=rank)  # stable: the order within each module, and of the rest, is kept


@pytest.fixture(autouse=True)
def _mlflow_uris_kept() -> Iterator[None]:
    """MLflow's set_tracking_uri and set_registry_uri export their URI to os.environ, and set_registry_uri(None)
    leaves it there: put both variables back after each test, or every stage a later test starts (on the same
    xdist worker) would follow a store of this one (the stages honour MLFLOW_REGISTRY_URI, as users set it)."""
    before = {key: os.environ.get(key) for key in MLFLOW_URIS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:  # seed torch only where a test already paid for importing it
        sys.modules["torch"].manual_seed(0)
