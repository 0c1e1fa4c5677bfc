"""Builders for tests: small valid configurations with overrides (tests/helpers.py, as in SAELens)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def embedded_params(**overrides: Any) -> dict[str, Any]:
    """The shipped params.yaml as a dict, with top-level groups replaced by `overrides`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(copy.deepcopy(overrides))
    return raw


def write_params(folder: Path, raw: dict[str, Any]) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
