"""Point-in-time features from a one-view feature service, in the order of the entity rows asked for."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from features.errors import SaefsError
from features.stores.feast.columns import FEATURE_COLUMNS

if TYPE_CHECKING:
    from feast import FeatureStore


def historical_frame(store: FeatureStore, feature_service_name: str,
                     entity_df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The service's feature columns for `entity_df` (text_id, event_timestamp), in entity order, exactly as the
    online store returns them (list columns: what a probe logged to MLflow takes), and the view's width."""
    service = store.get_feature_service(feature_service_name)
    if len(service.feature_view_projections) != 1:
        raise SaefsError(f"feature service {feature_service_name!r} spans "
                         f"{[p.name for p in service.feature_view_projections]}: pass a one-view service")
    tags = store.get_feature_view(service.feature_view_projections[0].name).tags
    kind, width = tags.get("kind", ""), int(tags.get("width", 0))
    if kind not in FEATURE_COLUMNS:
        raise SaefsError(f"feature service {feature_service_name!r} serves a {kind or 'untagged'} view, not features")
    order = "__saefs_row"
    table = store.get_historical_features(entity_df=entity_df.assign(**{order: np.arange(len(entity_df))}),
                                          features=service).to_arrow()
    if table.num_rows != len(entity_df):
        raise SaefsError(f"{feature_service_name}: Feast returned {table.num_rows} rows for {len(entity_df)} "
                         "entity rows; use the duckdb offline store (the file store drops rows)")
    table = table.take(pc.sort_indices(table[order]))
    return table.select(list(FEATURE_COLUMNS[kind])).to_pandas(), width
