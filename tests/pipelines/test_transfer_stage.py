"""The transfer stage's cells: one-class targets reported, not trained on; a planted signal transfers; every
fit keeps its per-text predictions on resampled splits."""

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
    raw["transfer"] |= {"C_grid": [0.1, 1.0], "cv_folds": 3, "resamples": 3}
    return parse_params(raw)


def labels_of(y: np.ndarray) -> pd.DataFrame:
    split = np.where(np.arange(len(y)) < int(0.75 * len(y)), "train", "test")
    return pd.DataFrame({"text_id": [f"t{i}" for i in range(len(y))], "label": y, "split": split,
                         "text": [f"item {i} class {c}" for i, c in enumerate(y)]})


def test_a_target_that_is_always_right_is_reported_not_trained_on(params, monkeypatch) -> None:
    def no_fit(*args, **kwargs):
        raise AssertionError("a one-class target must not be trained on")

    monkeypatch.setattr(transfer, "make_probe", no_fit)
    monkeypatch.setattr(transfer, "make_tfidf_baseline", no_fit)
    codes, _ = synthetic_frame(40)
    row, rows = transfer.cross_model_cell("phys_tf", "a", "b", labels_of(np.ones(40, dtype=int)), codes,
                                          pd.DataFrame(), WIDTH, params)
    assert row["status"].startswith("skipped: one class") and "macro_f1" not in row and rows == []
    assert row["n_train"] == 30 and row["n_test"] == 10


def test_a_planted_signal_transfers_above_every_floor(params) -> None:
    codes, y = synthetic_frame(200)
    hidden = pd.DataFrame({"hidden": list(np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32))})
    labels = labels_of(y)
    row, rows = transfer.cross_model_cell("phys_tf", "a", "b", labels, codes, hidden, WIDTH, params)
    assert row["status"] == "ok" and row["macro_f1"] > 0.8 > row["hidden_f1"] and row["resamples"] == 3
    assert row["macro_f1_low"] < row["macro_f1"] < row["macro_f1_high"] and row["majority_f1"] < 0.5
    assert row["roc_auc"] > 0.9 and 0 <= row["recall_at_1fpr"] <= row["recall_at_5fpr"] <= 1
    predictions = pd.concat(rows)
    assert set(predictions["fit"]) == {f"phys_tf:a->b:{probe}" for probe in ("sae", "hidden", "tfidf", "majority")}
    # resample 0 is the target's own split; every resample tests each text at most once per fit
    first = predictions[(predictions["resample"] == 0) & (predictions["split"] == "test")]
    assert set(first["text_id"]) == set(labels.loc[labels["split"] == "test", "text_id"])
    assert not predictions.duplicated(["fit", "resample", "split", "text_id"]).any()
    assert sorted(predictions["resample"].unique()) == [0, 1, 2]


def test_a_class_too_rare_for_the_resamples_is_a_counted_skip_not_a_number(params) -> None:
    codes, _ = synthetic_frame(40)
    y = np.zeros(40, dtype=int)
    y[[0, 10, 20]] = 1  # enough for the target's own split, too few for a quarter of them in every other resample
    row, rows = transfer.cross_model_cell("phys_tf", "a", "b", labels_of(y), codes, pd.DataFrame(), WIDTH, params)
    assert row["status"].startswith("skipped: class 1 has 3 texts") and "macro_f1" not in row and rows == []


def test_cross_lingual_cells_fill_the_language_matrix(params) -> None:
    codes, y = synthetic_frame(160)
    frame = pd.DataFrame({"text_id": [f"t{i}" for i in range(160)], "label": y, "lang": ["en"] * 100 + ["fr"] * 60})
    rows, fits = transfer.cross_lingual_cells("living_room", "m", frame, codes, WIDTH, params)
    rows = pd.DataFrame(rows)
    assert list(zip(rows["train_lang"], rows["test_lang"], strict=True)) == [
        ("en", "en"), ("en", "fr"), ("fr", "en"), ("fr", "fr")]
    assert (rows["status"] == "ok").all() and (rows["macro_f1"] > 0.8).all()
    cells = rows.set_index(["train_lang", "test_lang"])
    assert cells.loc[("en", "fr"), ["n_train", "n_test", "resamples"]].tolist() == [100, 60, 1]
    assert cells.loc[("en", "en"), "resamples"] == 3  # the folds of the same-language cell
    zero_shot = pd.concat(fits).query("fit == 'living_room:m:en->fr:sae' and split == 'test'")
    assert sorted(zero_shot["text_id"]) == sorted(frame["text_id"][100:])  # no French text trained it
    assert cells.loc[("en", "fr"), "macro_f1_low"] < cells.loc[("en", "fr"), "macro_f1_high"]  # bootstrap
    nested = transfer.nested_metrics(rows.assign(task="t", model="m"), ["task", "model", "test_lang"])
    assert set(nested["t"]["m"]) == {"en", "fr"} and {"macro_f1", "macro_f1_low", "macro_f1_high", "roc_auc",
                                                      "recall_at_1fpr"} <= set(nested["t"]["m"]["fr"])
