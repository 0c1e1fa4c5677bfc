"""Metrics on hand-computed cases, the seed interval's arithmetic and nested stratified subsets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from features.core.metrics import classification_metrics, macro_f1, training_curve_fractions
from features.errors import SaefsError


def test_binary_metrics_by_hand() -> None:
    # class 1: tp 2, fp 1, fn 1 -> F1 2/3; class 0: tp 1, fp 1, fn 1 -> F1 1/2; macro 7/12
    y_true, y_pred = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    scores = [0.9, 0.8, 0.3, 0.6, 0.1]  # 6 positive-negative pairs, 5 ranked right -> AUC 5/6
    metrics = classification_metrics(y_true, y_pred, scores)
    assert metrics["macro_f1"] == pytest.approx(7 / 12)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["roc_auc"] == pytest.approx(5 / 6)
    assert metrics["n"] == 5
    proba = np.column_stack([1 - np.array(scores), scores])
    assert classification_metrics(y_true, y_pred, proba)["roc_auc"] == pytest.approx(5 / 6)


def test_single_class_test_set_has_no_auc_and_still_scores_f1() -> None:
    metrics = classification_metrics([1, 1, 1], [1, 0, 1], [0.9, 0.2, 0.8], labels=[0, 1])
    assert metrics["roc_auc"] is None
    # class 1: F1 = 2*2/(2*2+0+1) = 0.8; class 0 (absent, one false positive): 0 -> macro 0.4
    assert metrics["macro_f1"] == pytest.approx(0.4)
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_multiclass_auc_is_one_vs_rest_macro() -> None:
    rng = np.random.default_rng(0)
    y_true = np.array([0, 1, 2] * 10)
    proba = rng.dirichlet(np.ones(3), size=30)
    metrics = classification_metrics(y_true, proba.argmax(axis=1), proba)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))
    missing_class = y_true != 2  # class 2 absent from this test set: AUC over classes 0 and 1 only
    expected = np.mean([roc_auc_score(y_true[missing_class] == c, proba[missing_class, c]) for c in (0, 1)])
    subset = classification_metrics(y_true[missing_class], proba[missing_class].argmax(axis=1),
                                     proba[missing_class], labels=[0, 1, 2])
    assert subset["roc_auc"] == pytest.approx(expected)


def test_metric_inputs_are_checked() -> None:
    with pytest.raises(SaefsError, match="equal length"):
        classification_metrics([0, 1], [0])
    with pytest.raises(SaefsError, match=r"predict_proba's \[n, K\]"):
        classification_metrics([0, 1, 2], [0, 1, 2], [0.1, 0.5, 0.9], labels=[0, 1, 2])


def test_training_curve_subsets_are_stratified_nested_and_seeded() -> None:
    y = np.array([0] * 80 + [1] * 20)
    subsets = training_curve_fractions(y, [0.1, 0.5, 1.0], seed=3)
    assert [np.bincount(y[rows]).tolist() for rows in subsets.values()] == [[8, 2], [40, 10], [80, 20]]
    assert set(subsets[0.1]) <= set(subsets[0.5]) <= set(subsets[1.0])
    again = training_curve_fractions(y, [0.1], seed=3)[0.1]
    np.testing.assert_array_equal(again, subsets[0.1])
    assert not np.array_equal(training_curve_fractions(y, [0.1], seed=4)[0.1], again)
    assert np.bincount(y[training_curve_fractions(y, [0.01], seed=0, min_per_class=5)[0.01]]).tolist() == [5, 5]
    with pytest.raises(SaefsError, match="outside"):
        training_curve_fractions(y, [0.0], seed=0)


def test_macro_f1_is_scikit_learns_float_exactly() -> None:
    rng = np.random.default_rng(0)
    cases = 0
    for n in (1, 2, 7, 80, 333):
        for k in (2, 3, 5):
            for _ in range(40):
                y, pred = rng.integers(0, k, n), rng.integers(0, k, n)
                agree = rng.random(n) < 0.6  # a probe right on most texts, as the search scores them
                pred[agree] = y[agree]
                assert macro_f1(y, pred) == f1_score(y, pred, average="macro", zero_division=0)
                labels = list(range(k + 1))  # a class neither array holds scores 0 in the mean
                assert macro_f1(y, pred, labels) == f1_score(y, pred, labels=labels, average="macro", zero_division=0)
                cases += 1
    names = np.array(["ham", "spam", "eggs"])
    y, pred = names[rng.integers(0, 3, 50)], names[rng.integers(0, 3, 50)]
    assert macro_f1(y, pred) == f1_score(y, pred, average="macro") and cases == 600
