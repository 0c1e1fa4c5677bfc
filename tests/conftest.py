"""Shared fixtures. Importing `pipelines` first sets the offline environment for every test."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest

import pipelines  # noqa: F401  (sets HF_HUB_OFFLINE and friends before any HF import)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:  # seed torch only where a test already paid for importing it
        sys.modules["torch"].manual_seed(0)
