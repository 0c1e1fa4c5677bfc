"""Request-time binarization: for each raw sparse view, `active_ids`, the ids of its latents above
a `threshold` passed with the request (`{"text_id": ..., "threshold": 1.0}`), so a threshold can
be tried without a stored view.

Feast stores each function's source and rebuilds it with only numpy (`np`) and pandas in scope,
so the two functions below must stay self-contained: no closures, no other module names.
"""

import inspect

import numpy as np
from feast import Field, RequestSource
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Array, Float64, Int32
from sources import CATALOG
from views import VIEWS

from features.stores.feature_store import REQUEST_IDS, ViewSpec, on_demand_view_name

threshold_request = RequestSource(name="threshold", schema=[Field(name="threshold", dtype=Float64)])


def binarize_above(inputs: dict) -> dict:
    """Latent ids whose value is strictly above the request's threshold."""
    out = []
    for ids, values, threshold in zip(inputs["latent_ids"], inputs["latent_values"], inputs["threshold"], strict=True):
        ids = np.asarray(ids if ids is not None else [], dtype=np.int32)  # None: no features for this text
        values = np.asarray(values if values is not None else [], dtype=np.float32)
        out.append(ids[values > threshold].tolist())
    return {"active_ids": out}


def binarize_at_least(inputs: dict) -> dict:
    """Latent ids whose value is at or above the request's threshold."""
    out = []
    for ids, values, threshold in zip(inputs["latent_ids"], inputs["latent_values"], inputs["threshold"], strict=True):
        ids = np.asarray(ids if ids is not None else [], dtype=np.int32)  # None: no features for this text
        values = np.asarray(values if values is not None else [], dtype=np.float32)
        out.append(ids[values >= threshold].tolist())
    return {"active_ids": out}


BINARIZERS = {">": binarize_above, ">=": binarize_at_least}


def request_binarized(spec: ViewSpec) -> OnDemandFeatureView:
    op = spec.op or ">"
    udf = BINARIZERS[op]
    return OnDemandFeatureView(
        name=on_demand_view_name(spec.name, op),
        sources=[VIEWS[spec.name], threshold_request],
        schema=[Field(name=REQUEST_IDS, dtype=Array(Int32))],
        mode="python",
        udf=udf,
        udf_string=inspect.getsource(udf),
        tags={**spec.tags(), "kind": "request_binary", "source_view": spec.name},
        description=f"{spec.name} binarized at the request's threshold ({op})",
    )


ON_DEMAND = {view.name: view for view in (request_binarized(spec) for spec in CATALOG if spec.kind == "sparse")}
globals().update(ON_DEMAND)  # feast apply collects module attributes
