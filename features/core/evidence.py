"""Evidence that rests on resampled texts: repeated stratified splits and safety-monitor metrics.

Configurations are told apart by how their scores move when the texts move (new train/test
splits), not by optimiser seeds; a safety monitor is judged by the recall it keeps at a fixed,
small false-positive rate, with the threshold set on negatives it is not scored on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from features.errors import SaefsError


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
