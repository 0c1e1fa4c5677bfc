"""One feature view per catalog entry: sparse codes, binarized codes, pooled hidden states."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.data_source import DataSource
from feast.types import Array, Float32, Int32

from feature_repo.entities import text
from features.stores.feast.catalog import ViewSpec
from features.stores.feast.columns import HIDDEN, IDS, VALUES

# Feast type of each column features.stores.feast.offline writes (ViewSpec.features names a view's columns).
TYPES = {IDS: Array(Int32), VALUES: Array(Float32), HIDDEN: Array(Float32)}


def feature_view(spec: ViewSpec, source: DataSource) -> FeatureView:
    """The view of `spec`, reading `source`: its push source when it is served, so it takes pushes too."""
    return FeatureView(
        name=spec.name,
        entities=[text],
        ttl=timedelta(0),  # features of a text never expire
        source=source,
        schema=[Field(name=column, dtype=TYPES[column]) for column in spec.features],
        tags=spec.tags(),
        description=f"{spec.kind} features of {spec.n_rows} texts",
    )
