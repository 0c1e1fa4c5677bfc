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


def sae_dir(model: str) -> Path:
    return DATA / "saes" / model


def train_sae_metrics(model: str) -> Path:
    return Path("metrics") / "train_sae" / f"{model}.json"


def features_dir(model: str, dataset: str) -> Path:
    return DATA / "features" / model / dataset


def extract_metrics(model: str, dataset: str) -> Path:
    return Path("metrics") / "extract" / model / f"{dataset}.json"


def sae_check_dir(model: str, dataset: str) -> Path:
    return DATA / "sae_checks" / model / dataset
