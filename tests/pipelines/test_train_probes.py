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
    sparse = train_probes.Cell("m__l1__sae64__sum__bin9", "m__l1__sae64__sum__bin9", "sparse", {})
    train = np.array([True, True, False])
    empty_in_train = pd.DataFrame({"latent_ids": [np.array([], dtype=np.int32), [], [3]]})
    assert "no latent is active in any of its 2 training texts" in train_probes.empty_reason(sparse, empty_in_train,
                                                                                               train)
    one_active = pd.DataFrame({"latent_ids": [[], [5], []]})
    assert train_probes.empty_reason(sparse, one_active, train) is None
    dense = train_probes.Cell("m__l1__hidden__last", "m__l1__hidden__last", "dense", {})
    assert train_probes.empty_reason(dense, pd.DataFrame({"hidden": [[0.0], [0.0], [0.0]]}), train) is None


def test_the_marginal_design_sweeps_each_axis_around_the_center_and_quantile_cells_read_the_raw_view() -> None:
    params = embedded_params()
    params["sae"]["gemma3_270m"] |= {"layers": [3, 5, 9, 12], "widths": ["4k", "16k"]}
    params["build_features"]["binarize"] = [None, 0.0, 1.0]
    params["train_probes"] |= {"poolings": ["sum", "max", "top20"], "binarize": [None, 0.0, "q50"],
                               "design": "marginal", "center": {"width": "4k", "pooling": "sum", "binarize": None}}
    from pipelines.params import parse_params

    cells = train_probes.cells(parse_params(params), "gemma3_270m")
    sae = [cell for cell in cells if cell.input == "sparse"]
    # 4 layers + 1 more width + 2 more poolings + 2 more thresholds, each once; every value appears
    assert len(sae) == 4 + 1 + 2 + 2
    for axis, values in (("layer", [3, 5, 9, 12]), ("width", ["4k", "16k"]), ("pooling", ["sum", "max", "top20"]),
                         ("binarize", [None, 0.0, "q50"])):
        assert sorted({str(c.params[axis]) for c in sae}) == sorted(str(v) for v in values)
    # the center: the lower middle of the layers (5), 4k, sum, raw codes; every other cell differs in one axis
    center = {"layer": 5, "width": "4k", "pooling": "sum", "binarize": None}
    for cell in sae:
        assert sum(cell.params[a] != v for a, v in center.items()) <= 1, cell.name
    quantile = next(c for c in sae if c.params["binarize"] == "q50")
    assert quantile.name == "gemma3_270m__l5__sae4k__sum__binq50"
    assert quantile.service == "gemma3_270m__l5__sae4k__sum__raw" and quantile.binarize == "q50"
    zero = next(c for c in sae if c.params["binarize"] == 0.0)
    assert zero.service == zero.name == "gemma3_270m__l5__sae4k__sum__bin0" and zero.binarize is None
    assert len([c for c in cells if c.input == "dense"]) == 4 * 2  # every layer's hidden baselines
