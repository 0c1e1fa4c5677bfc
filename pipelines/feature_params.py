"""The Feast groups of params.yaml: `build_features` (which views each model publishes) and `feast_apply` (which
Feast configuration the stages and the scoring service use). pipelines/stores.py opens that store."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from features.core.binarize import BinarizeOp
from features.core.config import Strict
from features.core.pooling import check_pooling

# Pooling names as features.core.pooling registers them: a new method is valid here once registered there.
CodesPooling = Annotated[str, AfterValidator(check_pooling)]
HiddenPooling = Annotated[str, AfterValidator(partial(check_pooling, hidden=True))]


class BuildFeaturesParams(Strict):
    """Which Feast views `build_features` publishes per model (every SAE cell and pooling of `sae`/`extract`)."""

    binarize: list[float | None] = Field(
        min_length=1, description="one view per entry: null = continuous codes (latent ids + values), "
        "a number = ids of the latents above it (binarized)")
    binarize_op: BinarizeOp = Field(description="'>' strictly above the threshold, '>=' at or above")
    hidden: list[HiddenPooling] = Field(description="pooled hidden-state baselines to publish as dense views")

    @field_validator("binarize")
    @classmethod
    def _distinct(cls, v: list[float | None]) -> list[float | None]:
        if len(set(v)) != len(v):
            raise ValueError(f"binarize {v} repeats a threshold")
        return v


class FeastApplyParams(Strict):
    """Where the Feast registry and online store live, as one feature_store.yaml of the repo: a DVC param, so that
    switching it (embedded: SQLite files; cluster: PostgreSQL + Redis) reruns the stages that write the store."""

    feature_store_yaml: str = Field(pattern=r"\.ya?ml$", description="relative to the project root: "
                                    "feature_repo/feature_store.yaml or feature_repo/feature_store.cluster.yaml")
