"""Classification metrics of a probe and stratified training-curve subsets.

Macro F1 is the headline (the paper's primary metric); accuracy and ROC AUC (binary, or one-vs-rest
macro for more classes) come beside it. A metric that is undefined on a test set, such as ROC AUC
on a single-class test set, is None, never a made-up number: callers log what exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score

from features.errors import SaefsError

CONFIDENCE = 0.95


def macro_f1(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> float:
    """scikit-learn's `f1_score(average="macro", zero_division=0)`, the very same float (the mean over the classes of
    2 tp / (true + predicted), as it computes it), without its input checks, which took 2.2 ms of every call: a
    probe's search scores every (C, fold) with it, thousands of times a stage. Averaged over `labels` (default:
    every class in either array); a class with no true and no predicted text scores 0."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.union1d(y_true, y_pred) if labels is None else np.asarray(labels)
    is_true, is_pred = y_true[:, None] == classes, y_pred[:, None] == classes
    tp, true, pred = (is_true & is_pred).sum(axis=0), is_true.sum(axis=0), is_pred.sum(axis=0)
    denominator = 1.0 * true + pred  # scikit-learn's beta^2 * true + predicted, in float64
    return float(np.mean(np.divide(2.0 * tp, denominator, out=np.zeros(len(classes)), where=denominator > 0)))


def classification_metrics(y_true: Any, y_pred: Any, y_score: Any | None = None,
                           labels: Sequence[int] | None = None) -> dict[str, float | None]:
    """{macro_f1, accuracy, roc_auc, n} of one test set.

    `y_score` is `predict_proba`'s [n, K] output (columns in `labels` order, default 0..K-1) or, for
    two classes, the positive class's score [n]. `labels` names every class of the task, so a test
    set missing one still averages F1 over the task's classes (a missed class scores 0).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise SaefsError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be two 1-D arrays of equal length")
    if not len(y_true):
        raise SaefsError("no test rows: metrics need at least one labelled text")
    classes = np.asarray(labels) if labels is not None else np.union1d(y_true, y_pred)
    return {
        "macro_f1": macro_f1(y_true, y_pred, classes),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "roc_auc": None if y_score is None else _roc_auc(y_true, np.asarray(y_score, dtype=float), labels),
        "n": float(len(y_true)),
    }


def _roc_auc(y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[int] | None) -> float | None:
    """Binary AUC of the positive class, or the mean one-vs-rest AUC over the classes present in y_true.

    With every class present the mean equals scikit-learn's `multi_class="ovr", average="macro"`;
    a class absent from the test set has no AUC, so it is left out instead of failing the run.
    """
    present = np.unique(y_true)
    if len(present) < 2:
        return None  # undefined: no pair of texts from different classes to rank
    classes = np.asarray(labels) if labels is not None else np.arange(2 if y_score.ndim == 1 else y_score.shape[1])
    if y_score.ndim == 1:
        if len(classes) != 2:
            raise SaefsError(f"a 1-D y_score is the positive class's score of a binary task; {len(classes)} "
                             "classes need predict_proba's [n, K] output")
        return float(roc_auc_score(y_true == classes[1], y_score))
    if y_score.shape[1] != len(classes) or not np.isin(present, classes).all():
        raise SaefsError(f"y_score has {y_score.shape[1]} columns for classes {classes.tolist()} but y_true holds "
                         f"{present.tolist()}: pass predict_proba's output and the task's labels")
    column = {c: i for i, c in enumerate(classes.tolist())}
    if len(classes) == 2:
        return float(roc_auc_score(y_true == classes[1], y_score[:, 1]))
    return float(np.mean([roc_auc_score(y_true == c, y_score[:, column[c]]) for c in present.tolist()]))


def training_curve_fractions(y: Any, fractions: Sequence[float], seed: int,
                             min_per_class: int = 1) -> dict[float, np.ndarray]:
    """Sorted row indices of stratified subsets of a training split, one per fraction, nested.

    Each class is shuffled once with `seed` and every fraction takes a prefix of it (at least
    `min_per_class` rows, e.g. the CV folds, and at most the class), so a larger fraction holds
    every row of a smaller one and the curve moves by adding texts, not by resampling.
    """
    y = np.asarray(y)
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise SaefsError(f"training-curve fractions {bad} are outside (0, 1]")
    rng = np.random.default_rng(seed)
    shuffled = {c: rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}
    subsets = {}
    for fraction in fractions:
        take = [rows[: min(len(rows), max(min_per_class, int(np.ceil(fraction * len(rows)))))]
                for rows in shuffled.values()]
        subsets[float(fraction)] = np.sort(np.concatenate(take))
    return subsets
