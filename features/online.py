"""The online store at scoring time: push fresh features of new texts, read a feature service back.

Every served view (all but `labels`) reads from a Feast `PushSource` named `push__<view>` whose
batch source is the view's parquet, so `materialize` loads the offline history as before and
`push` adds rows of texts scored later, online only: the offline parquet stays the DVC output
`build_features` wrote. Feast is imported by the functions that talk to a store (it costs ~16 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd
from scipy.sparse import csr_matrix

from features.errors import SaefsError
from features.feature_store import CREATED, EVENT_TIME, FEATURE_COLUMNS, IDS, JOIN_KEY, sparse_columns

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

PUSH_PREFIX = "push__"
PUSHABLE_KINDS = ("sparse", "binary")  # SAE codes; what a new text gets (hidden-state views are not pushed)


def push_source_name(view: str) -> str:
    """`push__gemma3_270m__l9__sae4k__sum__bin1`: the push source of a served view."""
    return f"{PUSH_PREFIX}{view}"


def push_codes(store: FeatureStore, view: str, kind: str, text_ids: Sequence[str], codes: csr_matrix,
               event_time: datetime) -> None:
    """Write pooled codes (binarized already for a binary view) of `text_ids` to `view`'s online rows."""
    from feast.data_source import PushMode

    if kind not in PUSHABLE_KINDS:
        raise SaefsError(f"view {view} holds {kind} features; only SAE code views {list(PUSHABLE_KINDS)} take pushes")
    if codes.shape[0] != len(text_ids):
        raise SaefsError(f"{codes.shape[0]} rows of codes for {len(text_ids)} text_ids: pass one row per text")
    columns = dict(zip(FEATURE_COLUMNS["sparse"], sparse_columns(codes), strict=True))
    stamp = pd.Timestamp(event_time)
    frame = pd.DataFrame({JOIN_KEY: list(text_ids), EVENT_TIME: stamp, CREATED: stamp,
                          **{name: columns[name].to_pylist() for name in FEATURE_COLUMNS[kind]}})
    store.push(push_source_name(view), frame, to=PushMode.ONLINE)


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
