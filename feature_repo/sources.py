"""Offline sources: one parquet per catalogued view. Each served view also gets a push source
(`push__<view>`, batched by its file source), through which the scoring service writes features of
new texts online."""

from pathlib import Path

from feast import FileSource, PushSource

from features.serving.online import PUSHABLE_KINDS, push_source_name
from features.stores.feast.catalog import ViewSpec
from features.stores.feast.columns import CREATED, EVENT_TIME


def view_sources(spec: ViewSpec, root: Path) -> list[FileSource | PushSource]:
    """The view's file source, then its push source if the view is served; `root`: the project root."""
    # An absolute path: Feast's duckdb offline store reads a relative FileSource path from the current
    # directory, not from the repo, so a relative path breaks `feast` commands run from elsewhere.
    batch = FileSource(name=f"src__{spec.name}", path=str(root / spec.path), timestamp_field=EVENT_TIME,
                       created_timestamp_column=CREATED, description=f"{spec.kind} view {spec.name}")
    if spec.kind not in PUSHABLE_KINDS:
        return [batch]
    return [batch, PushSource(name=push_source_name(spec.name), batch_source=batch,
                              description=f"features of new texts for {spec.name}, pushed by the scoring service")]
