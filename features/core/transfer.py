"""Transfer matrices: which rows train and test each cell, the frames probes take, and heatmaps.

Cross-lingual (PAPER.md §6.2): for every (train language, test language) pair, a different
language trains on all rows of the train language and tests on all rows of the test language; the
same language is scored by stratified k-fold cross-validation within it. No row of the test
language ever trains a zero-shot cell.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from sklearn.model_selection import StratifiedKFold

from features.errors import SaefsError
from features.stores.feast.columns import HIDDEN, IDS, VALUES, sparse_columns
from features.stores.files import atomic_path

Masks = list[tuple[np.ndarray, np.ndarray]]  # (train rows, test rows) as boolean masks, one pair per run

# The transfer CSVs' contract (the stage writes it, the report checks it): a cell's scores, means over
# resamples with their 95% intervals, and why a cell did not run (`status`).
SCORES = ("macro_f1", "macro_f1_low", "macro_f1_high", "roc_auc", "roc_auc_low", "roc_auc_high", "recall_at_1fpr",
          "recall_at_5fpr")
CROSS_MODEL_COLUMNS = ["task", "source", "target", *SCORES, "hidden_f1", "tfidf_f1", "majority_f1", "n_train",
                       "n_test", "resamples", "not_converged", "status"]
CROSS_LINGUAL_COLUMNS = ["task", "model", "train_lang", "test_lang", *SCORES, "majority_f1", "n_train", "n_test",
                         "resamples", "not_converged", "status"]


def cross_lingual_splits(langs: Sequence[str], y: Sequence[int], folds: int,
                         seed: int) -> Iterator[tuple[str, str, Masks]]:
    """(train language, test language, runs) for every ordered pair of the languages, in first-seen order."""
    langs, y = np.asarray(langs), np.asarray(y)
    order = list(dict.fromkeys(langs.tolist()))
    if len(order) < 2:
        raise SaefsError(f"cross-lingual transfer needs at least two languages, got {order}")
    for train_lang in order:
        for test_lang in order:
            if train_lang != test_lang:
                yield train_lang, test_lang, [(langs == train_lang, langs == test_lang)]
                continue
            rows = np.flatnonzero(langs == train_lang)
            runs = []
            for fit, score in StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, y[rows]):
                train, test = np.zeros(len(y), dtype=bool), np.zeros(len(y), dtype=bool)
                train[rows[fit]], test[rows[score]] = True, True
                runs.append((train, test))
            yield train_lang, test_lang, runs


def skip_reason(y: np.ndarray, train: np.ndarray, test: np.ndarray, min_per_class: int) -> str | None:
    """Why a cell cannot be trained or scored, or None: one class overall, too few training rows of a
    class for the probe's `min_per_class` CV folds, or no test row."""
    if len(np.unique(y)) < 2:
        return f"skipped: one class (every label is {int(y[0]) if len(y) else 'missing'})"
    counts = np.bincount(np.asarray(y[train], dtype=int), minlength=2)
    if counts.min() < min_per_class or not test.any():
        return f"skipped: training rows per class {counts.tolist()} (need {min_per_class}) or no test row"
    return None


def codes_frame(codes: csr_matrix) -> pd.DataFrame:
    """SAE codes as the online store's columns (latent ids + values), the frame sparse probes take."""
    ids, values = sparse_columns(codes)
    return pd.DataFrame({IDS: ids.to_pandas(), VALUES: values.to_pandas()})


def hidden_frame(hidden: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({HIDDEN: list(np.asarray(hidden, dtype=np.float32))})


def heatmap(table: pd.DataFrame, rows: list[str], columns: str, title: str, path: str | Path) -> None:
    """The report's heatmap of a transfer matrix (macro F1 and 95% interval per cell) as a PNG."""
    from features.reporting.figures import heatmap_figure, plt

    fig = heatmap_figure(table, rows, columns, title)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
