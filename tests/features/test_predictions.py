"""Per-text predictions, and the metrics, intervals and paired comparisons computed from them."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from features.core.metrics import classification_metrics
from features.core.predictions import (
    TEST,
    VAL,
    check_texts,
    compare,
    fit_predict,
    macro_f1,
    resample_metrics,
    resamples,
    summarize,
)
from features.core.probes import make_probe
from features.errors import SaefsError


def _task(n: int = 300, signal: float = 1.0, width: int = 8, seed: int = 0, classes: int = 2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = pd.DataFrame({"hidden": [(rng.normal(size=width) + signal * (yy == np.arange(width) % classes)).tolist()
                                 for yy in y]})
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.choice(n, n // 5, replace=False)] = True
    return X, y, np.array([f"t{i}" for i in range(n)]), is_test


def _probe(seed: int, **kwargs):
    return make_probe("logreg", input="dense", seed=seed, C_grid=[0.01, 1.0], cv=3, **kwargs)


def _fits(X, y, ids, is_test, n=4, fits=None, labels=(0, 1)):
    fits = fits or {"probe": lambda seed: _probe(seed)}
    return pd.concat([fit_predict(make(r.index), X, y, ids, r, fit=name, labels=list(labels), cv=3)
                      for r in resamples(y, is_test, n, seed=0) for name, make in fits.items()], ignore_index=True)


def test_resample_zero_is_the_prepared_split_and_the_rest_are_stratified_at_its_test_fraction():
    y = np.repeat([0, 1], [120, 80])
    is_test = np.zeros(200, dtype=bool)
    is_test[::5] = True
    parts = resamples(y, is_test, 4, seed=1)
    assert np.array_equal(parts[0].test, is_test) and np.array_equal(parts[0].train, ~is_test)
    for part in parts[1:]:
        assert part.test.sum() == 40 and np.bincount(y[part.test]).tolist() == [24, 16]
        assert not (part.train & part.test).any() and (part.train | part.test).all()
    assert not np.array_equal(parts[1].test, parts[2].test)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(parts, resamples(y, is_test, 4, seed=1), strict=True))


def test_a_fit_predicts_its_test_texts_and_out_of_fold_its_training_texts():
    X, y, ids, is_test = _task()
    frame = _fits(X, y, ids, is_test, n=1)
    test, val = frame[frame["split"] == TEST], frame[frame["split"] == VAL]
    assert sorted(test["text_id"]) == sorted(ids[is_test]) and sorted(val["text_id"]) == sorted(ids[~is_test])
    assert np.allclose(frame[["proba_0", "proba_1"]].sum(axis=1), 1)
    assert (frame["y_pred"] == frame[["proba_0", "proba_1"]].to_numpy().argmax(axis=1)).all()


def test_validation_predictions_are_out_of_fold_not_in_sample():
    # 300 texts, 200 noise dimensions, random labels: a weakly regularised probe fits its training texts
    # perfectly; out of fold it can only guess.
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"hidden": list(rng.normal(size=(300, 200)))})
    y, ids = rng.integers(0, 2, 300), np.array([f"t{i}" for i in range(300)])
    is_test = np.arange(300) % 5 == 0
    probe = make_probe("logreg", input="dense", C_grid=[100.0], cv=3)
    frame = fit_predict(probe, X, y, ids, resamples(y, is_test, 1, 0)[0], fit="noise", labels=[0, 1], cv=3)
    val = frame[frame["split"] == VAL]
    assert (probe.predict(X[~is_test]) == y[~is_test]).mean() == 1.0
    assert 0.35 < (val["y_pred"] == val["y_true"]).mean() < 0.65


def test_summaries_come_from_the_rows_logged_from_resample_zero():
    X, y, ids, is_test = _task()
    frame = _fits(X, y, ids, is_test)
    summary = summarize(frame, [0, 1])["probe"]
    assert summary["resamples"] == 4 and summary["n_test"] == 60 and summary["n_train"] == 240
    first = frame[(frame["resample"] == 0) & (frame["split"] == TEST)]
    expected = classification_metrics(first["y_true"], first["y_pred"], first[["proba_0", "proba_1"]].to_numpy(),
                                      labels=[0, 1])
    assert summary["logged_macro_f1"] == pytest.approx(expected["macro_f1"])
    assert summary["logged_roc_auc"] == pytest.approx(expected["roc_auc"])
    assert summary["logged_macro_f1_low"] < summary["logged_macro_f1"] < summary["logged_macro_f1_high"]
    table = resample_metrics(frame, [0, 1])
    assert summary["macro_f1"] == pytest.approx(table["macro_f1"].mean())
    assert summary["macro_f1_low"] < summary["macro_f1"] < summary["macro_f1_high"]
    for key in ("roc_auc", "recall_at_1fpr", "recall_at_5fpr", "val_macro_f1"):
        assert summary[f"{key}_low"] <= summary[key] <= summary[f"{key}_high"]
    assert summary["not_converged"] == 0


def test_recall_at_fpr_is_defined_for_binary_tasks_only():
    X, y, ids, is_test = _task(classes=3)
    table = resample_metrics(_fits(X, y, ids, is_test, n=2, labels=(0, 1, 2)), [0, 1, 2])
    assert table["recall_at_1fpr"].isna().all() and table["macro_f1"].notna().all()


def test_a_planted_advantage_is_detected_on_the_same_resamples():
    X, y, ids, is_test = _task(n=600, signal=0.8)
    fits = {"full": lambda seed: _probe(seed),
            "blind": lambda seed: make_probe("logreg", input="dense", seed=seed, C_grid=[1e-6], cv=3,
                                             class_weight=None)}
    table = resample_metrics(_fits(X, y, ids, is_test, n=5, fits=fits), [0, 1])
    result = compare(table, "full", "blind")
    assert result["mean"] > 0.1 and result["low"] > 0 and result["p_value"] < 0.01
    same = compare(table, "full", "full")
    assert same["mean"] == 0 and same["p_value"] == 1.0


def test_compare_names_an_unknown_fit():
    X, y, ids, is_test = _task()
    with pytest.raises(SaefsError, match=r"no predictions of \['other'\]"):
        compare(resample_metrics(_fits(X, y, ids, is_test, n=2), [0, 1]), "probe", "other")


def test_a_fit_that_does_not_converge_is_counted():
    X, y, ids, is_test = _task()
    r = resamples(y, is_test, 1, 0)[0]

    class Stubborn(LogisticRegression):
        pass

    frame = fit_predict(Stubborn(max_iter=1), np.asarray(X["hidden"].tolist()), y, ids, r, fit="lazy",
                        labels=[0, 1], cv=3)
    assert summarize(frame, [0, 1])["lazy"]["not_converged"] == 1


def test_a_training_part_without_a_class_is_refused_by_name():
    X, y, ids, is_test = _task()
    y = np.where(is_test, y, 0)  # every training text is class 0
    r = resamples(y, is_test, 1, 0)[0]
    with pytest.raises(SaefsError, match=r"dummy: the fit saw classes \[0\]"):
        from sklearn.dummy import DummyClassifier

        fit_predict(DummyClassifier(), X, y, ids, r, fit="dummy", labels=[0, 1], cv=3)


def test_a_prediction_file_about_other_texts_is_refused():
    X, y, ids, is_test = _task()
    frame = _fits(X, y, ids, is_test, n=1)
    check_texts(frame, ids, "predictions.parquet")
    with pytest.raises(SaefsError, match=r"predictions.parquet: 60 predicted text ids .* stale"):
        check_texts(frame, ids[~is_test], "predictions.parquet")


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    y_pred[y_pred == 2] = 1  # class 2 never predicted: scores 0, as scikit-learn's zero_division=0
    assert macro_f1(y_true, y_pred, [0, 1, 2]) == pytest.approx(
        f1_score(y_true, y_pred, labels=[0, 1, 2], average="macro", zero_division=0))


def test_an_interval_never_leaves_the_metric_range():
    # two resamples far apart: the corrected t interval would reach below 0 and above 1
    rows = []
    for resample, right in ((0, 1.0), (1, 0.0)):
        y = np.arange(20) % 2
        y_pred = y if right else 1 - y
        for split in (TEST, "val"):
            rows.append(pd.DataFrame({"fit": "f", "resample": resample, "split": split, "text_id": np.arange(20),
                                      "y_true": y, "y_pred": y_pred, "converged": True,
                                      "proba_0": 1.0 - y_pred, "proba_1": y_pred * 1.0}))
    summary = summarize(pd.concat(rows, ignore_index=True), [0, 1])["f"]
    assert summary["macro_f1"] == pytest.approx(0.5)
    assert summary["macro_f1_low"] == 0.0 and summary["macro_f1_high"] == 1.0
