"""The session's scratch DVC project (tests/scratch.py), shared by the modules that run its pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scratch import build_scratch_repo, tiny_params


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once; each test that uses it starts with `dvc repro`, so it finds the pipeline whole whatever ran
    before it."""
    return build_scratch_repo(tmp_path_factory.mktemp("repo"), tiny_params())
