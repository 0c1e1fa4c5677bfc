"""Evidence that rests on resampled texts: repeated stratified splits and safety-monitor metrics.

Configurations are told apart by how their scores move when the texts move (new train/test
splits), not by optimiser seeds; a safety monitor is judged by the recall it keeps at a fixed,
small false-positive rate, with the threshold set on negatives it is not scored on. Intervals of a
mean over splits use the corrected resampled t; one split's metric, and the difference of two
configurations on the same texts, use a (paired) bootstrap over texts; Holm adjusts many p-values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.model_selection import StratifiedShuffleSplit

from features.core.metrics import CONFIDENCE
from features.errors import SaefsError

Metric = Callable[[np.ndarray, np.ndarray], float]


def repeated_splits(y: Any, n_repeats: int, test_size: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_repeats` stratified (train_idx, test_idx) pairs, deterministic by `seed`.

    Uses scikit-learn's StratifiedShuffleSplit; every test part must hold every class, so a class
    whose share of `test_size` rounds to no text is refused up front rather than silently dropped.
    """
    y = np.asarray(y)
    if not 0 < test_size < 1:
        raise SaefsError(f"test_size {test_size} is outside (0, 1): pass a fraction such as 0.2")
    classes, counts = np.unique(y, return_counts=True)
    for c, count in zip(classes, counts, strict=True):
        if count < 2 or count * test_size < 1:
            _too_small(c, int(count), test_size)
    splitter = StratifiedShuffleSplit(n_splits=n_repeats, test_size=test_size, random_state=seed)
    splits = list(splitter.split(np.zeros((len(y), 1)), y))
    for _, test in splits:
        missing = np.setdiff1d(classes, y[test])
        if len(missing):
            _too_small(missing[0], int(counts[classes == missing[0]][0]), test_size)
    return splits


def _too_small(label: Any, count: int, test_size: float) -> None:
    """Raise the error of a class with too few texts to appear in every test part (and its train part)."""
    raise SaefsError(f"class {np.asarray(label).item()!r} has {count} texts, too few for a test part of "
                     f"{test_size} in every repeat"
                     ": add texts of that class, raise test_size or drop the class")


def recall_at_fpr(y_true: Any, score: Any, fpr: float, threshold_from: Any | None = None) -> dict[str, float]:
    """{recall, threshold, test_fpr} of the positive class (label 1) flagged by `score > threshold`.

    The threshold is the smallest value that lets at most `fpr` of the reference negatives score
    above it (ties never push the rate over `fpr`); the reference negatives are `threshold_from`
    (validation negatives, so the test recall is honest) or else the test negatives themselves.
    """
    y_true, score = np.asarray(y_true), np.asarray(score, dtype=float)
    if y_true.shape != score.shape or y_true.ndim != 1:
        raise SaefsError(f"y_true {y_true.shape} and score {score.shape} must be two 1-D arrays of equal length")
    if not 0 < fpr < 1:
        raise SaefsError(f"fpr {fpr} is outside (0, 1): pass a rate such as 0.01")
    reference = score[y_true == 0] if threshold_from is None else np.asarray(threshold_from, dtype=float)
    if not (np.isfinite(score).all() and np.isfinite(reference).all()):
        raise SaefsError("scores hold NaN or infinite values: fix the probe's output before thresholding")
    if not (y_true == 1).any() or not len(reference):
        raise SaefsError("recall_at_fpr needs positive test texts (label 1) and at least one reference negative")
    threshold = _threshold(reference, fpr)
    flagged = score > threshold
    return {"recall": float(flagged[y_true == 1].mean()), "threshold": threshold,
            "test_fpr": float(flagged[y_true == 0].mean()) if (y_true == 0).any() else float("nan")}


def _threshold(negatives: np.ndarray, fpr: float) -> float:
    """The smallest negative score t with #(negatives > t) <= fpr * n: candidates are the scores themselves."""
    candidates = np.sort(negatives)
    above = len(negatives) - np.searchsorted(candidates, candidates, side="right")
    return float(candidates[np.argmax(above <= fpr * len(negatives))])


def corrected_resampled_t(values: Sequence[float], n_train: int, n_test: int) -> dict[str, Any]:
    """{mean, low, high, n, method}: a 95% interval of a mean over J repeated train/test splits.

    Splits share training texts, so the plain t interval is too narrow; Nadeau & Bengio (2003)
    inflate the variance of the mean to s^2 (1/J + n_test/n_train) and keep J-1 degrees of freedom.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) < 2 or not np.isfinite(array).all():
        raise SaefsError(f"the corrected resampled t needs two or more finite per-split values, got {values!r}")
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(array) - 1)) * _corrected_se(array, n_train, n_test)
    mean = float(array.mean())
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(array),
            "method": "corrected resampled t (Nadeau-Bengio)"}


def _corrected_se(array: np.ndarray, n_train: int, n_test: int) -> float:
    """Nadeau-Bengio standard error of the mean of per-split values."""
    return float(np.sqrt(array.var(ddof=1) * (1 / len(array) + n_test / n_train)))


def bootstrap_interval(y_true: Any, y_pred_or_score: Any, metric: Metric, n_boot: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """{estimate, low, high, n, method}: a 95% percentile bootstrap of one split's metric over its test texts.

    Resampling texts with replacement shows how much the metric owes to which texts were drawn,
    with no normality assumption; the resample indices are drawn in one [n_boot, n] array.
    """
    y_true, other = _paired(y_true, y_pred_or_score)
    draws = _bootstrap_rows(len(y_true), n_boot, seed)
    values = np.array([metric(y_true[rows], other[rows]) for rows in draws])
    low, high = np.nanpercentile(values, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return {"estimate": float(metric(y_true, other)), "low": float(low), "high": float(high), "n": len(y_true),
            "method": "percentile bootstrap over test texts"}


def _paired(y_true: Any, other: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two 1-D arrays of equal length with finite values in the second, or a SaefsError saying which is wrong."""
    y_true, other = np.asarray(y_true), np.asarray(other)
    if y_true.shape[:1] != other.shape[:1] or y_true.ndim != 1 or not len(y_true):
        raise SaefsError(f"y_true {y_true.shape} and predictions {other.shape} must have the same non-zero length")
    if other.dtype.kind == "f" and not np.isfinite(other).all():
        raise SaefsError("predictions or scores hold NaN or infinite values: fix the probe's output first")
    return y_true, other


def _bootstrap_rows(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] row indices drawn with replacement, deterministic by seed."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_difference(y_true: Any, pred_a: Any, pred_b: Any, metric: Metric, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """{difference, low, high, p_value, method}: metric(a) - metric(b) on the same texts, paired bootstrap.

    Both configurations are rescored on each resample of the same texts, so text difficulty cancels;
    the two-sided p-value is twice the smaller bootstrap tail on either side of zero (capped at 1).
    """
    y_true, pred_a = _paired(y_true, pred_a)
    _, pred_b = _paired(y_true, pred_b)
    draws = _bootstrap_rows(len(y_true), n_boot, seed)
    deltas = np.array([metric(y_true[rows], pred_a[rows]) - metric(y_true[rows], pred_b[rows]) for rows in draws])
    low, high = np.percentile(deltas, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    p_value = min(1.0, 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0)))
    return {"difference": float(metric(y_true, pred_a) - metric(y_true, pred_b)), "low": float(low),
            "high": float(high), "p_value": float(p_value), "method": "paired percentile bootstrap over texts"}


def paired_split_difference(values_a: Sequence[float], values_b: Sequence[float], n_train: int,
                            n_test: int) -> dict[str, Any]:
    """{mean, low, high, n, p_value, method}: per-split differences a - b with the corrected resampled t.

    Both configurations ran on the same J splits, so the per-split differences carry the pairing.
    """
    deltas = np.asarray(values_a, dtype=float) - np.asarray(values_b, dtype=float)
    out = corrected_resampled_t(deltas, n_train, n_test)
    se = _corrected_se(deltas, n_train, n_test)
    if se == 0:  # identical differences on every split: certain if non-zero, no evidence if zero
        out["p_value"] = 1.0 if out["mean"] == 0 else 0.0
    else:
        out["p_value"] = float(2 * stats.t.sf(abs(out["mean"]) / se, len(deltas) - 1))
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values in input order: step-down (m - i) p_(i), made monotone and capped at 1.

    Holm controls the family-wise error of many configuration comparisons without assuming independence.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise SaefsError(f"holm needs p-values in [0, 1], got {pvalues!r}")
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out.tolist()


def with_holm_fields(rows: Sequence[Mapping[str, Any]], comparisons: Sequence[str]) -> list[dict[str, Any]]:
    """Copies of `rows` with `<c>_p_holm` beside each `<c>_p` (of `comparisons`) a row holds: Holm over every such
    p-value of all the rows, one family (a missing or NaN p-value is no test, and gets no adjusted one)."""
    tested = [(i, f"{c}_p") for i, row in enumerate(rows) for c in comparisons
              if row.get(f"{c}_p") is not None and not np.isnan(row[f"{c}_p"])]
    out = [dict(row) for row in rows]
    for (i, key), value in zip(tested, holm([rows[i][key] for i, key in tested]) if tested else [], strict=True):
        out[i][f"{key}_holm"] = value
    return out


def non_inferior(difference: dict[str, Any], margin: float) -> bool:
    """Whether a challenger - incumbent interval's lower 95% bound lies above -margin."""
    if margin < 0:
        raise SaefsError(f"margin {margin} is negative: pass the largest acceptable loss as a positive number")
    return bool(difference["low"] > -margin)
