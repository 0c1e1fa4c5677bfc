"""Resampled-text evidence: stratified repeats and recall at a fixed false-positive rate."""

import numpy as np
import pytest

from features.core.evidence import recall_at_fpr, repeated_splits
from features.errors import SaefsError


def test_repeated_splits_are_stratified_deterministic_and_hold_every_class():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    splits = repeated_splits(y, n_repeats=5, test_size=0.2, seed=3)
    again = repeated_splits(y, n_repeats=5, test_size=0.2, seed=3)
    assert len(splits) == 5
    for (train, test), (train2, test2) in zip(splits, again, strict=True):
        assert np.array_equal(train, train2) and np.array_equal(test, test2)
        assert not np.intersect1d(train, test).size and len(train) + len(test) == 100
        assert np.bincount(y[test]).tolist() == [10, 6, 4]


def test_repeated_splits_name_a_class_too_small_for_the_test_part():
    y = np.array([0] * 40 + [1] * 40 + [7])
    with pytest.raises(SaefsError, match=r"class 7 has 1 texts"):
        repeated_splits(y, n_repeats=3, test_size=0.1, seed=0)


def test_recall_at_fpr_with_ties_never_exceeds_the_rate():
    # negatives 0.1,0.2,0.5,0.5,0.5 (n=5): at fpr 0.4 at most 2 may exceed t; t=0.2 lets the three 0.5s through,
    # so t=0.5 (none above). Positives 0.4,0.6,0.9 -> 2 of 3 above 0.5.
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.5, 0.5, 0.5, 0.4, 0.6, 0.9])
    out = recall_at_fpr(y, s, fpr=0.4)
    assert out == {"recall": pytest.approx(2 / 3), "threshold": 0.5, "test_fpr": 0.0}
    # at fpr 0.6 three may exceed: t=0.2 -> recall 1 (0.4 > 0.2), test fpr 0.6
    assert recall_at_fpr(y, s, fpr=0.6) == {"recall": 1.0, "threshold": 0.2, "test_fpr": pytest.approx(0.6)}


def test_recall_at_fpr_sets_the_threshold_on_validation_negatives():
    y = np.array([0, 0, 1, 1])
    out = recall_at_fpr(y, [0.3, 0.8, 0.5, 0.9], fpr=0.25, threshold_from=[0.1, 0.2, 0.3, 0.4])
    assert out["threshold"] == 0.3 and out["recall"] == 1.0 and out["test_fpr"] == 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"y_true": [0, 1], "score": [0.1, 0.2, 0.3], "fpr": 0.1}, "equal length"),
    ({"y_true": [0, 1], "score": [0.1, 0.2], "fpr": 1.0}, r"outside \(0, 1\)"),
    ({"y_true": [0, 1], "score": [0.1, 0.2], "fpr": 0.0}, r"outside \(0, 1\)"),
    ({"y_true": [0, 1], "score": [np.nan, 0.2], "fpr": 0.1}, "NaN"),
])
def test_recall_at_fpr_refuses_bad_input(kwargs, message):
    with pytest.raises(SaefsError, match=message):
        recall_at_fpr(**kwargs)
