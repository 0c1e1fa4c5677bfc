"""Where each stage writes: deterministic functions of names, never of time, so DVC can cache them.

dvc.yaml spells the same paths; tests/test_dvc_yaml.py checks that the two agree.
"""

from pathlib import Path

DATA = Path("data")


def model_dir(model: str) -> Path:
    return DATA / "models" / model


def prepared(dataset: str) -> Path:
    return DATA / "prepared" / f"{dataset}.parquet"


def prepare_summary(dataset: str) -> Path:
    return Path("metrics") / "prepare_data" / f"{dataset}.json"


def validation_dir(dataset: str) -> Path:
    return DATA / "validation" / dataset


def validation_metrics(dataset: str) -> Path:
    return Path("metrics") / "validate_data" / f"{dataset}.json"
