"""The transfer stage's cells: one-class targets reported, not trained on; a planted signal transfers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import transfer
from pipelines.params import parse_params
from tests.features.test_probes import WIDTH, synthetic_frame
from tests.helpers import embedded_params


@pytest.fixture
def params():
    raw = embedded_params()
    raw["transfer"] |= {"C_grid": [0.1, 1.0], "cv_folds": 3, "seeds": 2}
    return parse_params(raw)


def labels_of(y: np.ndarray) -> pd.DataFrame:
    split = np.where(np.arange(len(y)) < int(0.75 * len(y)), "train", "test")
    return pd.DataFrame({"label": y, "split": split, "text": [f"item {i} class {c}" for i, c in enumerate(y)]})


def test_a_target_that_is_always_right_is_reported_not_trained_on(params, monkeypatch) -> None:
    def no_fit(*args, **kwargs):
        raise AssertionError("a one-class target must not be trained on")

    monkeypatch.setattr(transfer, "make_probe", no_fit)
    monkeypatch.setattr(transfer, "make_tfidf_baseline", no_fit)
    codes, _ = synthetic_frame(40)
    row = transfer.cross_model_cell("phys_tf", "a", "b", labels_of(np.ones(40, dtype=int)), codes,
                                    pd.DataFrame(), WIDTH, params)
    assert row["status"].startswith("skipped: one class") and "macro_f1" not in row
    assert row["n_train"] == 30 and row["n_test"] == 10


def test_a_planted_signal_transfers_above_every_floor(params) -> None:
    codes, y = synthetic_frame(200)
    hidden = pd.DataFrame({"hidden": list(np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32))})
    row = transfer.cross_model_cell("phys_tf", "a", "b", labels_of(y), codes, hidden, WIDTH, params)
    assert row["status"] == "ok" and row["macro_f1"] > 0.8 > row["hidden_f1"]
    assert row["macro_f1_low"] <= row["macro_f1"] <= row["macro_f1_high"] and row["majority_f1"] < 0.5


def test_cross_lingual_cells_fill_the_language_matrix(params) -> None:
    codes, y = synthetic_frame(160)
    frame = pd.DataFrame({"label": y, "lang": ["en"] * 100 + ["fr"] * 60})
    rows = pd.DataFrame(transfer.cross_lingual_cells("living_room", "m", frame, codes, WIDTH, params))
    assert list(zip(rows["train_lang"], rows["test_lang"], strict=True)) == [
        ("en", "en"), ("en", "fr"), ("fr", "en"), ("fr", "fr")]
    assert (rows["status"] == "ok").all() and (rows["macro_f1"] > 0.8).all()
    assert rows.set_index(["train_lang", "test_lang"]).loc[("en", "fr"), ["n_train", "n_test"]].tolist() == [100, 60]
    nested = transfer.nested_metrics(rows.assign(task="t", model="m"), ["task", "model", "test_lang"])
    assert set(nested["t"]["m"]) == {"en", "fr"} and set(nested["t"]["m"]["fr"]) == {
        "macro_f1", "macro_f1_low", "macro_f1_high"}
