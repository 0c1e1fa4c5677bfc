"""One feature view per catalog entry: sparse codes, binarized codes, pooled hidden states, labels."""

from datetime import timedelta

from entities import text
from feast import FeatureView, Field
from feast.types import Array, Float32, Int32, Int64, String
from sources import CATALOG, PUSH_SOURCES, SOURCES

from features.stores.feature_store import HIDDEN, IDS, VALUES, ViewSpec

# Feast type of each column features.stores.feature_store writes (ViewSpec.features names a view's columns).
TYPES = {IDS: Array(Int32), VALUES: Array(Float32), HIDDEN: Array(Float32),
         "label": Int64, "split": String, "lang": String, "dataset": String}


def feature_view(spec: ViewSpec) -> FeatureView:
    return FeatureView(
        name=spec.name,
        entities=[text],
        ttl=timedelta(0),  # features of a text never expire
        source=PUSH_SOURCES.get(spec.name, SOURCES[spec.name]),  # served code views take pushes too
        schema=[Field(name=column, dtype=TYPES[column]) for column in spec.features],
        online=spec.kind != "labels",  # labels are training targets, never served
        tags=spec.tags(),
        description=f"{spec.kind} features of {spec.n_rows} texts",
    )


VIEWS = {spec.name: feature_view(spec) for spec in CATALOG}
globals().update(VIEWS)  # feast apply collects module attributes
