"""Offline sources: one parquet per view, as listed by data/feast/catalog.json (`feast_apply` merges
there the catalogs that `build_labels` and each `build_features@<model>` write).

Each served view (all but `labels`) also gets a push source (`push__<view>`, batched by its file
source), through which the scoring service writes features of new texts online.

Without a catalog (before the first `dvc repro feast_apply`) there are no sources, and the repo
defines only the entity, so `feast apply` still works.
"""

from pathlib import Path

from feast import FileSource, PushSource

from features.serving.online import PUSHABLE_KINDS, push_source_name
from features.stores.feature_store import CATALOG_FILE, CREATED, EVENT_TIME, read_catalog

ROOT = Path(__file__).resolve().parent.parent  # the saefs checkout; catalog paths are relative to it
CATALOG_PATH = ROOT / "data" / "feast" / CATALOG_FILE
CATALOG = read_catalog(CATALOG_PATH) if CATALOG_PATH.is_file() else []

# Absolute paths: Feast's duckdb offline store reads a relative FileSource path from the current
# directory, not from the repo, so a relative path breaks `feast` commands run from elsewhere.
SOURCES = {
    spec.name: FileSource(name=f"src__{spec.name}", path=str(ROOT / spec.path), timestamp_field=EVENT_TIME,
                          created_timestamp_column=CREATED, description=f"{spec.kind} view {spec.name}")
    for spec in CATALOG
}
globals().update({source.name: source for source in SOURCES.values()})  # feast apply collects module attributes

PUSH_SOURCES = {
    spec.name: PushSource(name=push_source_name(spec.name), batch_source=SOURCES[spec.name],
                          description=f"features of new texts for {spec.name}, pushed by the scoring service")
    for spec in CATALOG if spec.kind in PUSHABLE_KINDS
}
globals().update({source.name: source for source in PUSH_SOURCES.values()})  # as above
