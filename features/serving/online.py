"""The online store at scoring time: push fresh features of new texts, read a feature service back.

Every SAE code view (sparse, binary) reads from a Feast `PushSource` named `push__<view>` whose
batch source is the view's parquet, so `materialize` loads the offline history as before and
pushes add rows of texts scored later, online only: the offline parquet stays the DVC output
`build_features` wrote. A push writes to the views of its push source; `FeatureStore.push` finds
them by parsing every view of the registry on each call (0.3 s of a 0.6 s push with 37 views on
a busy 2-core machine), so `push_views` finds them once and `push_codes` writes to them as
`push` does (`write_to_online_store`). Feast is imported by the functions that talk to a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd
from scipy.sparse import csr_matrix

from features.errors import SaefsError
from features.stores.feast.columns import CREATED, EVENT_TIME, FEATURE_COLUMNS, IDS, JOIN_KEY, sparse_columns

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

PUSH_PREFIX = "push__"
PUSHABLE_KINDS = ("sparse", "binary")  # SAE codes; what a new text gets (hidden-state views are not pushed)


def push_source_name(view: str) -> str:
    """`push__gemma3_270m__l9__sae4k__sum__bin1`: the push source of a served view."""
    return f"{PUSH_PREFIX}{view}"


def push_views(store: FeatureStore, view: str) -> list[str]:
    """The online views a push to `view`'s push source writes to (as `FeatureStore.push` finds them)."""
    name = push_source_name(view)
    views = [fv.name for fv in store.list_feature_views()
             if fv.online and fv.stream_source is not None and fv.stream_source.name == name]
    if not views:
        raise SaefsError(f"no online view reads push source {name!r}: run `dvc repro feast_apply` with this "
                         "feature_repo (it defines a push source per served view)")
    return views


def push_codes(store: FeatureStore, views: Sequence[str], kind: str, text_ids: Sequence[str], codes: csr_matrix,
               event_time: datetime) -> None:
    """Write pooled codes (binarized already for a binary view) of `text_ids` online to `views` (see `push_views`)."""
    if kind not in PUSHABLE_KINDS:
        raise SaefsError(f"views {list(views)} hold {kind} features; only SAE code views {list(PUSHABLE_KINDS)} take "
                         "pushes")
    if codes.shape[0] != len(text_ids):
        raise SaefsError(f"{codes.shape[0]} rows of codes for {len(text_ids)} text_ids: pass one row per text")
    columns = dict(zip(FEATURE_COLUMNS["sparse"], sparse_columns(codes), strict=True))
    stamp = pd.Timestamp(event_time)
    frame = pd.DataFrame({JOIN_KEY: list(text_ids), EVENT_TIME: stamp, CREATED: stamp,
                          **{name: columns[name].to_pylist() for name in FEATURE_COLUMNS[kind]}})
    for view in views:
        store.write_to_online_store(view, frame)


def online_frame(store: FeatureStore, service: FeatureService, kind: str, text_ids: Sequence[str]) -> pd.DataFrame:
    """The service's feature columns for `text_ids`, one row each in order, as a probe takes them.

    A text the store does not hold has None in its `latent_ids` (never an empty list): check with
    `missing_rows`.
    """
    rows = [{JOIN_KEY: text_id} for text_id in text_ids]
    values = store.get_online_features(features=service, entity_rows=rows).to_dict()
    return pd.DataFrame({column: values[column] for column in FEATURE_COLUMNS[kind]})


def missing_rows(frame: pd.DataFrame) -> list[int]:
    """Rows of an `online_frame` whose text has no features in the store."""
    return [i for i, ids in enumerate(frame[IDS]) if ids is None]
