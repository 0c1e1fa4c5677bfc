"""Per-text predictions as data, and every metric, interval and paired test computed from them.

A stage that fits probes keeps one row per (fit, resample, split, text): the text's id, its true
label, the predicted label and the class probabilities. `test` rows are the resample's held-out
texts; `val` rows are out-of-fold predictions on the resample's training part with the
hyperparameters the fit chose (the inner CV's own folds), which set the thresholds of
recall-at-FPR and choose the best cell without touching a test text. Everything downstream
(metrics, intervals, paired comparisons, promotion) reads these rows, so it can be rebuilt and
audited without refitting.

Resample 0 is the prepared train/test split (the fit that is logged, and maybe registered);
resamples 1.. are further stratified splits of the same texts with the same test fraction. A
configuration's interval is the corrected resampled t over its per-resample scores; the logged
fit's interval is a percentile bootstrap over its test texts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from features.core.evidence import (
    bootstrap_interval,
    corrected_resampled_t,
    paired_split_difference,
    recall_at_fpr,
    repeated_splits,
)
from features.core.metrics import classification_metrics
from features.core.probes import SEARCH_STEP
from features.errors import SaefsError

VAL, TEST = "val", "test"
FPRS = {"recall_at_1fpr": 0.01, "recall_at_5fpr": 0.05}  # a safety monitor's operating points
METRICS = ("macro_f1", "accuracy", "roc_auc", *FPRS)
KEYS = ["fit", "resample", "split", "text_id"]


def proba_column(label: Any) -> str:
    return f"proba_{label}"


@dataclass(frozen=True)
class Resample:
    """One train/test partition of the prepared texts (boolean masks over their rows)."""

    index: int
    train: np.ndarray
    test: np.ndarray


def resamples(y: Any, is_test: Any, n: int, seed: int) -> list[Resample]:
    """The prepared split (resample 0) and `n - 1` stratified splits of all texts at the same test fraction.

    A class too small to appear in every test part is refused up front (`repeated_splits`).
    """
    y, is_test = np.asarray(y), np.asarray(is_test, dtype=bool)
    if n < 1:
        raise SaefsError(f"resamples={n}: pass 1 or more (1 keeps the prepared split only)")
    if not is_test.any() or is_test.all():
        raise SaefsError("the prepared data needs both a train and a test split: rerun prepare_data")
    out = [Resample(0, ~is_test, is_test)]
    if n > 1:
        for index, (_, test_rows) in enumerate(repeated_splits(y, n - 1, float(is_test.mean()), seed), start=1):
            test = np.zeros(len(y), dtype=bool)
            test[test_rows] = True
            out.append(Resample(index, ~test, test))
    return out


def out_of_fold(estimator: Any, X: Any, y: np.ndarray, cv: int, seed: int) -> np.ndarray:
    """Out-of-fold class probabilities on a fitted estimator's training rows, at the hyperparameters it chose.

    A probe (columns, then a search) kept them from its search: the validation predictions the
    search scored at the chosen configuration. Any other estimator is cloned as is on `cv`
    stratified folds shuffled with `seed`.
    """
    if isinstance(estimator, Pipeline) and SEARCH_STEP in estimator.named_steps:
        return estimator.named_steps[SEARCH_STEP].oof_proba_
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    return cross_val_predict(clone(estimator), X, y, cv=folds, method="predict_proba")


def fit_predict(estimator: Any, X: Any, y: np.ndarray, text_ids: np.ndarray, resample: Resample, *, fit: str,
                labels: Sequence[Any], cv: int, train: np.ndarray | None = None) -> pd.DataFrame:
    """Fit on the resample's training rows (or `train`, a subset of them), predict its test rows and, out of
    fold, the fitted rows: the prediction rows of one fit (see the module docstring).

    A fit that warns that it did not converge is kept and marked (`converged` False) so summaries count it.
    """
    train = resample.train if train is None else train
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(_rows(X, train), y[train])
        if estimator.classes_.tolist() != list(labels):
            raise SaefsError(f"{fit}: the fit saw classes {estimator.classes_.tolist()}, the task has "
                             f"{list(labels)}: every class needs texts in each resample's training part")
        val = out_of_fold(estimator, _rows(X, train), y[train], cv, seed=resample.index)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    test = estimator.predict_proba(_rows(X, resample.test))
    parts = []
    for split, rows, proba in ((TEST, resample.test, test), (VAL, train, val)):
        part = pd.DataFrame({"fit": fit, "resample": resample.index, "split": split, "text_id": text_ids[rows],
                             "y_true": y[rows], "y_pred": np.asarray(labels)[proba.argmax(axis=1)],
                             "converged": converged})
        parts.append(part.assign(**{proba_column(c): proba[:, i] for i, c in enumerate(labels)}))
    return pd.concat(parts, ignore_index=True)


def fit_resamples(make: Callable[[int], Any], X: Any, y: np.ndarray, text_ids: np.ndarray,
                  splits: Sequence[Resample], *, fit: str, labels: Sequence[Any], cv: int,
                  subset: Callable[[Resample], np.ndarray] | None = None, n_jobs: int = 1) -> tuple[pd.DataFrame, Any]:
    """`fit_predict` a fresh `make(resample index)` on every resample (on `subset(resample)` of its training
    part, if given): the fit's prediction rows, and its resample-0 estimator (the one that is logged).

    `n_jobs` > 1 fits that many resamples at once in worker processes (one BLAS thread each): the
    fits are independent and deterministic, so the rows are those of fitting them one after another.
    """
    [fitted] = fit_many([FitJob(fit, make, X, subset)], y, text_ids, splits, labels=labels, cv=cv, n_jobs=n_jobs)
    return fitted


@dataclass(frozen=True)
class FitJob:
    """One fit of `fit_many`: its name, the estimator for a resample's seed, its rows (aligned with the labels)
    and, if given, the subset of each resample's training part it fits on."""

    name: str
    make: Callable[[int], Any]
    X: Any
    subset: Callable[[Resample], np.ndarray] | None = None


def fit_many(jobs: Sequence[FitJob], y: np.ndarray, text_ids: np.ndarray, splits: Sequence[Resample], *,
             labels: Sequence[Any], cv: int, n_jobs: int = 1) -> Iterator[tuple[pd.DataFrame, Any]]:
    """`fit_resamples` of every job, yielded in `jobs` order, all their resamples in one queue of `n_jobs`
    workers: a worker goes on with the next fit's resamples instead of waiting for the last resample of one
    fit, or for the caller to log it (a stage's main process logs while its workers fit)."""
    tasks = [delayed(_fit_one)(job.make(resample.index), job.X, y, text_ids, resample, job.name, labels, cv,
                               job.subset(resample) if job.subset else None) for job in jobs for resample in splits]
    done = Parallel(n_jobs=max(1, min(n_jobs, len(tasks))), return_as="generator")(tasks)
    for _ in jobs:
        fitted = [next(done) for _ in splits]
        yield pd.concat([rows for rows, _ in fitted], ignore_index=True), fitted[0][1]


def _fit_one(estimator: Any, X: Any, y: np.ndarray, text_ids: np.ndarray, resample: Resample, fit: str,
             labels: Sequence[Any], cv: int, train: np.ndarray | None) -> tuple[pd.DataFrame, Any]:
    rows = fit_predict(estimator, X, y, text_ids, resample, fit=fit, labels=labels, cv=cv, train=train)
    return rows, estimator


def _rows(X: Any, mask: np.ndarray) -> Any:
    return X[mask] if not isinstance(X, pd.DataFrame) else X[mask].reset_index(drop=True)


def _proba(rows: pd.DataFrame) -> np.ndarray:
    return rows[[c for c in rows.columns if c.startswith("proba_")]].to_numpy(dtype=float)


def check_texts(frame: pd.DataFrame, text_ids: Any, where: str, labels: Any = None, fix: str = "dvc repro") -> None:
    """Refuse prediction rows about texts the prepared data does not hold (a stale or foreign file); given the
    prepared `labels` (aligned with `text_ids`), also a prepared text without a prediction or with another label."""
    missing = np.setdiff1d(frame["text_id"].unique(), np.asarray(text_ids))
    if len(missing):
        raise SaefsError(f"{where}: {len(missing)} predicted text ids (e.g. {missing[:3].tolist()}) are not in the "
                         f"prepared data: the file is stale; rerun the stage that wrote it ({fix})")
    if labels is None:
        return
    truth = pd.Series(np.asarray(labels), index=np.asarray(text_ids)).astype(str)
    seen = frame.drop_duplicates("text_id").set_index("text_id")["y_true"].astype(str)
    unseen, relabelled = truth.index.difference(seen.index), seen.index[seen != truth.reindex(seen.index)]
    if len(unseen) or len(relabelled):
        raise SaefsError(f"{where}: {len(unseen)} prepared texts have no prediction and {len(relabelled)} another "
                         f"label than the prepared data (e.g. {[*unseen[:2], *relabelled[:2]]}): the file is stale; "
                         f"rerun `{fix}`")


def resample_metrics(frame: pd.DataFrame, labels: Sequence[Any]) -> pd.DataFrame:
    """One row per (fit, resample): n_train, n_test and every metric of METRICS on its test texts.

    Recall at each FPR flags the positive class (the last label of a binary task) above the
    threshold that lets that share of the fit's validation negatives through; None for more classes.
    """
    rows = []
    for (fit, resample), part in frame.groupby(["fit", "resample"], sort=False):
        test, val = part[part["split"] == TEST], part[part["split"] == VAL]
        proba = _proba(test)
        out = classification_metrics(test["y_true"].to_numpy(), test["y_pred"].to_numpy(), proba, labels=labels)
        out |= {key: None for key in FPRS}
        if len(labels) == 2 and len(val):
            negatives = _proba(val)[val["y_true"].to_numpy() != labels[1], 1]
            positive = (test["y_true"].to_numpy() == labels[1]).astype(int)
            if positive.any() and len(negatives):
                out |= {key: recall_at_fpr(positive, proba[:, 1], fpr, threshold_from=negatives)["recall"]
                        for key, fpr in FPRS.items()}
        out["val_macro_f1"] = (classification_metrics(val["y_true"].to_numpy(), val["y_pred"].to_numpy(),
                                                      labels=labels)["macro_f1"] if len(val) else None)
        rows.append({"fit": fit, "resample": int(resample), "n_train": len(val), "n_test": len(test),
                     "converged": bool(part["converged"].all()), **out})
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame, labels: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per fit: each metric's mean over resamples with its corrected resampled-t interval (`<m>`, `<m>_low`,
    `<m>_high`), the validation macro F1, and the logged fit's (resample 0) test scores (`logged_<m>`),
    its macro F1 with a bootstrap interval over its test texts."""
    table = resample_metrics(frame, labels)
    out = {}
    for fit, runs in table.groupby("fit", sort=False):
        summary: dict[str, Any] = {"resamples": len(runs), "not_converged": int((~runs["converged"]).sum()),
                                   "n_test": int(runs["n_test"].iloc[0]), "n_train": int(runs["n_train"].iloc[0])}
        for key in (*METRICS, "val_macro_f1"):
            values = runs[key].dropna().to_numpy(dtype=float)
            if len(values) >= 2:
                stats = corrected_resampled_t(values, int(runs["n_train"].mean()), int(runs["n_test"].mean()))
                # every metric here lies in [0, 1]; the t interval does not know it
                summary |= {key: stats["mean"], f"{key}_low": max(0.0, stats["low"]),
                            f"{key}_high": min(1.0, stats["high"])}
            elif len(values):
                summary |= {key: float(values[0])}
        logged = runs[runs["resample"] == runs["resample"].min()].iloc[0]
        summary |= {f"logged_{key}": float(logged[key]) for key in METRICS if pd.notna(logged[key])}
        test = frame[(frame["fit"] == fit) & (frame["resample"] == logged["resample"]) & (frame["split"] == TEST)]
        boot = bootstrap_interval(test["y_true"].to_numpy(), test["y_pred"].to_numpy(),
                                  lambda t, p: macro_f1(t, p, labels), n_boot=1000)
        summary |= {"logged_macro_f1_low": boot["low"], "logged_macro_f1_high": boot["high"]}
        if len(runs) < 2:  # one resample: the bootstrap over its texts is the only interval there is
            summary |= {"macro_f1_low": boot["low"], "macro_f1_high": boot["high"]}
        out[str(fit)] = summary
    return out


INTERVALS = {"resamples": "corrected resampled t over repeated stratified splits (Nadeau-Bengio), 95%",
             "logged": "percentile bootstrap over the test texts of the logged fit, 95%"}


def compare(table: pd.DataFrame, a: str, b: str, metric: str = "macro_f1") -> dict[str, Any]:
    """Fit `a` minus fit `b` on the same resamples (`resample_metrics` rows): the corrected paired t."""
    pivot = table.pivot(index="resample", columns="fit", values=metric)
    missing = [fit for fit in (a, b) if fit not in pivot.columns]
    if missing:
        raise SaefsError(f"no predictions of {missing} to compare: known fits are {sorted(pivot.columns)}")
    shared = pivot.index[pivot[a].notna() & pivot[b].notna()]
    if len(shared) < 2:
        raise SaefsError(f"{a} vs {b}: {len(shared)} shared resamples with a {metric}; a paired interval needs 2 "
                         "or more (raise train_probes.resamples)")
    sizes = table[table["fit"] == a].set_index("resample").loc[shared]
    return {"a": a, "b": b, "metric": metric, **paired_split_difference(
        pivot.loc[shared, a].to_numpy(), pivot.loc[shared, b].to_numpy(), int(sizes["n_train"].mean()),
        int(sizes["n_test"].mean()))}


def paired_fields(table: pd.DataFrame, a: str, b: str, key: str) -> dict[str, float]:
    """`compare(table, a, b)` as a result row reports it: `<key>` (a minus b in macro F1), `<key>_low`, `<key>_high`
    and `<key>_p`."""
    diff = compare(table, a, b)
    return {key: diff["mean"], f"{key}_low": diff["low"], f"{key}_high": diff["high"], f"{key}_p": diff["p_value"]}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[Any]) -> float:
    """Macro F1 over `labels` (a missed class scores 0): scikit-learn's value at numpy speed, for bootstraps."""
    scores = []
    for label in labels:
        truth, guess = y_true == label, y_pred == label
        tp = np.count_nonzero(truth & guess)
        denominator = np.count_nonzero(truth) + np.count_nonzero(guess)
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))
