"""Resampled-text evidence: stratified repeats and recall at a fixed false-positive rate."""

import numpy as np
import pandas as pd
import pytest

from features.core.evidence import (
    bootstrap_interval,
    corrected_resampled_t,
    holm,
    non_inferior,
    paired_difference,
    paired_split_difference,
    recall_at_fpr,
    repeated_splits,
)
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


def _accuracy(y, p):
    return float(np.mean(y == p))


def test_bootstrap_interval_covers_the_true_accuracy_near_95_percent():
    # 300 datasets of n=200 texts with true accuracy 0.8: measured coverage 0.947 (seed 0).
    rng = np.random.default_rng(0)
    y = np.zeros(200, dtype=int)
    hits = []
    for i in range(300):
        out = bootstrap_interval(y, (rng.random(200) > 0.8).astype(int), _accuracy, n_boot=300, seed=i)
        hits.append(out["low"] <= 0.8 <= out["high"])
    assert 0.90 <= np.mean(hits) <= 0.99


def test_corrected_resampled_t_by_hand():
    out = corrected_resampled_t([0.7, 0.8, 0.9], n_train=80, n_test=20)
    half = 4.302652729911275 * np.sqrt(0.01 * (1 / 3 + 0.25))
    assert out["mean"] == pytest.approx(0.8) and out["high"] - out["mean"] == pytest.approx(half)
    assert out["method"] == "corrected resampled t (Nadeau-Bengio)"


@pytest.mark.parametrize("n, detected", [(2000, True), (50, False)])
def test_paired_difference_detects_a_five_point_advantage_only_with_enough_texts(n, detected):
    rng = np.random.default_rng(1)
    y = np.zeros(n, dtype=int)
    a, b = (rng.random(n) > 0.80).astype(int), (rng.random(n) > 0.75).astype(int)
    out = paired_difference(y, a, b, _accuracy, n_boot=1000, seed=2)
    assert (out["p_value"] < 0.05) is detected and out["low"] <= out["difference"] <= out["high"]


def test_paired_split_difference_and_non_inferiority():
    out = paired_split_difference([0.80, 0.82, 0.81, 0.83], [0.78, 0.80, 0.80, 0.80], n_train=80, n_test=20)
    assert out["mean"] == pytest.approx(0.02) and 0 < out["p_value"] < 0.05
    assert non_inferior(out, margin=0.01) and not non_inferior({"low": -0.02}, margin=0.01)


def test_holm_by_hand():
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_paired_difference_refuses_mismatched_lengths_and_nan():
    with pytest.raises(SaefsError, match="same non-zero length"):
        paired_difference([0, 1], [0, 1, 1], [0, 1], _accuracy)
    with pytest.raises(SaefsError, match="NaN"):
        bootstrap_interval([0, 1], [np.nan, 0.3], _accuracy)


def test_resamples_fitted_in_parallel_give_the_rows_of_fitting_them_in_turn() -> None:
    from features.core.predictions import fit_resamples, resamples
    from features.core.probes import make_probe

    rng = np.random.default_rng(3)
    y = np.arange(120) % 2
    X = pd.DataFrame({"hidden": list(rng.normal(size=(120, 6)) + y[:, None] * 0.8)})
    splits = resamples(y, np.arange(120) < 30, 3, seed=0)

    def make(seed: int):
        return make_probe("logreg", input="dense", C_grid=[0.1, 1.0], cv=3, seed=seed)

    one, first = fit_resamples(make, X, y, np.arange(120).astype(str), splits, fit="f", labels=[0, 1], cv=3)
    two, first_parallel = fit_resamples(make, X, y, np.arange(120).astype(str), splits, fit="f", labels=[0, 1],
                                        cv=3, n_jobs=2)
    pd.testing.assert_frame_equal(one, two)
    assert sorted(one["resample"].unique()) == [0, 1, 2]
    np.testing.assert_array_equal(first.predict_proba(X), first_parallel.predict_proba(X))  # resample 0's fit


def test_fits_queued_together_give_each_fits_own_rows_in_order() -> None:
    from features.core.predictions import FitJob, fit_many, fit_resamples, resamples
    from features.core.probes import make_probe

    rng = np.random.default_rng(4)
    y = np.arange(90) % 2
    X = pd.DataFrame({"hidden": list(rng.normal(size=(90, 5)) + y[:, None] * 0.6)})
    ids, splits = np.arange(90).astype(str), resamples(y, np.arange(90) < 25, 3, seed=1)

    def make(C: float):
        return lambda seed: make_probe("logreg", input="dense", C_grid=[C], cv=3, seed=seed)

    def half(resample):  # a subset of each resample's training part, as the training curve fits
        return resample.train & (np.arange(90) % 3 != 0)

    jobs = [FitJob("a", make(0.1), X), FitJob("b", make(1.0), X, half), FitJob("c", make(10.0), X)]
    queued = list(fit_many(jobs, y, ids, splits, labels=[0, 1], cv=3, n_jobs=2))
    assert len(queued) == 3
    for job, (rows, first) in zip(jobs, queued, strict=True):
        alone, first_alone = fit_resamples(job.make, X, y, ids, splits, fit=job.name, labels=[0, 1], cv=3,
                                           subset=job.subset)
        pd.testing.assert_frame_equal(rows, alone)
        np.testing.assert_array_equal(first.predict_proba(X), first_alone.predict_proba(X))
