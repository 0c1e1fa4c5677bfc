"""Fit a probe or baseline on some rows, score it on others, and summarize the runs over seeds.

One fit is `fit_score` (the test rows only score: the estimator's own CV, if any, picks its
hyperparameters on the fitted rows); a cell's seeds are `summarize`d into means and intervals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.core.metrics import classification_metrics, summarize_seeds
from features.core.probes import validation_score

SUMMARY_KEYS = ("macro_f1", "accuracy", "roc_auc", "val_macro_f1")


def fit_score(estimator: Any, X: pd.DataFrame, y: np.ndarray, train: np.ndarray,
              test: np.ndarray | None = None) -> dict[str, Any]:
    """Fit on the `train` rows, score on the `test` rows (default: the others): metrics plus `val_macro_f1`,
    the inner-CV score of the chosen hyperparameters (None for a baseline without a search)."""
    test = ~train if test is None else test
    estimator.fit(X[train], y[train])
    scores = estimator.predict_proba(X[test])
    metrics = classification_metrics(y[test], estimator.predict(X[test]), scores, labels=list(estimator.classes_))
    return metrics | {"val_macro_f1": validation_score(estimator)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and interval (`<key>_low`, `<key>_high`) over the runs of each metric of SUMMARY_KEYS they
    measured, and the number of runs (`seeds`)."""
    out: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            stats = summarize_seeds(values)
            out |= {key: stats["mean"], f"{key}_low": stats["low"], f"{key}_high": stats["high"]}
    return out | {"seeds": len(runs)}
