"""Shared fixtures. Importing `pipelines` first sets the offline environment for every test."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest

import pipelines  # noqa: F401  (sets HF_HUB_OFFLINE and friends before any HF import)

# Warm stage servers that the tests' `dvc repro` runs start (pipelines/warm.py) leave 20 s after their last
# stage, not a minute, so none outlives the test session for long.
os.environ.setdefault("SAEFS_WARM_IDLE", "20")


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:  # seed torch only where a test already paid for importing it
        sys.modules["torch"].manual_seed(0)
