"""The Feast groups of params.yaml (`build_features`: which views each model publishes; `feast_apply`: which
Feast configuration the stages and the scoring service use), and the store that configuration opens."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from features.errors import SaefsError
from pipelines import paths

if TYPE_CHECKING:
    from feast import FeatureStore

# features.feature_store (pyarrow, scipy: ~1 s) is imported by the functions below, not here: every stage
# imports this module through pipelines.params before it checks its params.
FEATURE_REPO = Path("feature_repo")
FEAST_YAML_ENV = "FEAST_FS_YAML_FILE_PATH"  # feast.constants.FEAST_FS_YAML_FILE_PATH_ENV_NAME, read by the feast CLI


class BuildFeaturesParams(BaseModel):
    """Which Feast views `build_features` publishes per model (every SAE cell and pooling of `sae`/`extract`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # as pipelines.params.Strict

    binarize: list[float | None] = Field(
        min_length=1, description="one view per entry: null = continuous codes (latent ids + values), "
        "a number = ids of the latents above it (binarized)")
    binarize_op: Literal[">", ">="] = Field(description="'>' strictly above the threshold, '>=' at or above")
    hidden: list[Literal["last", "mean"]] = Field(description="pooled hidden-state baselines to publish as dense views")

    @field_validator("binarize")
    @classmethod
    def _distinct(cls, v: list[float | None]) -> list[float | None]:
        if len(set(v)) != len(v):
            raise ValueError(f"binarize {v} repeats a threshold")
        return v


class FeastApplyParams(BaseModel):
    """Where the Feast registry and online store live, as one feature_store.yaml of the repo: a DVC param, so that
    switching it (embedded: SQLite files; cluster: PostgreSQL + Redis) reruns the stages that write the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_store_yaml: str = Field(pattern=r"\.ya?ml$", description="relative to the project root: "
                                    "feature_repo/feature_store.yaml or feature_repo/feature_store.cluster.yaml")


def feature_store(params: FeastApplyParams, repo: str | os.PathLike[str] = FEATURE_REPO) -> FeatureStore:
    """The store of `repo` under `feast_apply.feature_store_yaml`; its registry and online store must answer.

    An exported FEAST_FS_YAML_FILE_PATH (how the feast CLI is pointed at a variant) must name the same
    file: DVC sees the param, not the variable, so a disagreement would write one store and record another.
    """
    from features.feature_store import open_store

    yaml_file = Path(params.feature_store_yaml)
    exported = os.environ.get(FEAST_YAML_ENV)
    if exported and Path(exported).resolve() != yaml_file.resolve():
        raise SaefsError(f"{FEAST_YAML_ENV}={exported} but params.yaml feast_apply.feature_store_yaml is {yaml_file}: "
                         f"the stages use the param (DVC tracks it); unset {FEAST_YAML_ENV} or export the same file")
    if not yaml_file.is_file():
        raise SaefsError(f"params.yaml feast_apply.feature_store_yaml: {yaml_file} not found (a path relative to the "
                         "project root, e.g. feature_repo/feature_store.yaml)")
    return open_store(repo, yaml_file)


def stale_receipts(store: FeatureStore) -> list[str]:
    """Where the feast_apply and materialize receipts disagree with the store configured now (another database,
    Redis or file: DVC sees neither the addresses nor the variables that give them), one line each, with the fix."""
    from features.feature_store import store_locations

    now = store_locations(store)
    lines = []
    for receipt, part in ((paths.feast_applied(), "registry"), (paths.feast_materialized(), "online_store")):
        if receipt.is_file():
            recorded = json.loads(receipt.read_text())[part]
            if recorded != now[part]:
                lines.append(f"{receipt} records the {part.replace('_', ' ')} at {recorded['type']} "
                             f"{recorded['address']}, but the configuration names {now[part]['type']} "
                             f"{now[part]['address']}: `dvc repro` fills it when feast_apply.feature_store_yaml "
                             "changed; when only an address did, `dvc repro -f feast_apply materialize`")
    return lines
