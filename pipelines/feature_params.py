"""The `build_features` group of params.yaml: which Feast views each model publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FEATURE_REPO = Path("feature_repo")


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
