"""train_probes refuses what no probe can learn from, before paying for Feast and MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.errors import SaefsError
from pipelines import paths, train_probes
from tests.helpers import embedded_params, write_params


def test_a_single_class_training_split_is_refused_before_any_fit(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, embedded_params())
    rows = pd.DataFrame({"text_id": [f"spam-{i}" for i in range(10)], "label": [0] * 8 + [1] * 2,
                         "split": ["train"] * 8 + ["test"] * 2,
                         "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")})
    paths.prepared("spam").parent.mkdir(parents=True)
    rows.to_parquet(paths.prepared("spam"))
    with pytest.raises(SaefsError, match=r"spam: the training split holds one class only \(label \[0\]\)"):
        train_probes.run("gemma3_270m/spam")


def test_a_sparse_cell_with_no_active_latent_in_training_is_skipped_with_a_reason() -> None:
    sparse = train_probes.Cell("m__l1__sae64__sum__bin9", "sparse", {})
    train = np.array([True, True, False])
    empty_in_train = pd.DataFrame({"latent_ids": [np.array([], dtype=np.int32), [], [3]]})
    assert "no latent is active in any of its 2 training texts" in train_probes.empty_reason(sparse, empty_in_train,
                                                                                               train)
    one_active = pd.DataFrame({"latent_ids": [[], [5], []]})
    assert train_probes.empty_reason(sparse, one_active, train) is None
    dense = train_probes.Cell("m__l1__hidden__last", "dense", {})
    assert train_probes.empty_reason(dense, pd.DataFrame({"hidden": [[0.0], [0.0], [0.0]]}), train) is None
