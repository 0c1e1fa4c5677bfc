"""Transfer matrices: which rows train and test each cell, the frames probes take, and heatmaps.

Cross-lingual (PAPER.md §6.2): every language is resampled as a prepared dataset is (`predictions.resamples`:
its prepared train/test split first, then stratified splits at the same test fraction), and cell
(A, B) on split r trains on A's training part and tests on B's test part. So the same-language cells
and the zero-shot cells train on the same texts, test on the same number of splits and get one interval
method, the corrected resampled t over the splits; no row of the test language ever trains a zero-shot cell.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

from features.core.predictions import Resample, resamples
from features.errors import SaefsError
from features.stores.feast.columns import HIDDEN, IDS, VALUES, sparse_columns
from features.stores.files import atomic_path

# The transfer CSVs' contract (the stage writes it, the report checks it): a cell's scores, means over
# resamples with their 95% intervals, and why a cell did not run (`status`).
SCORES = ("macro_f1", "macro_f1_low", "macro_f1_high", "roc_auc", "roc_auc_low", "roc_auc_high", "recall_at_1fpr",
          "recall_at_5fpr")
# The probes of every cross-lingual cell, each with the column of its macro F1 (and `<column>_low`/`_high`)
PROBES = {"sae": "macro_f1", "hidden": "hidden_f1", "tfidf": "tfidf_f1"}
# The cross-model cells' paired differences of the SAE probe: against TF-IDF and the target's own hidden states
VERSUS = ("sae_minus_tfidf", "sae_minus_target_hidden")
CROSS_MODEL_COLUMNS = ["task", "source", "target", *SCORES,
                       *(f"{column}{end}" for column in ("hidden_f1", "tfidf_f1", "target_hidden_f1")
                         for end in ("", "_low", "_high")), "majority_f1",
                       *(f"{column}{end}" for column in VERSUS for end in ("", "_low", "_high", "_p", "_p_holm")),
                       "minority_share", "n_train", "n_test", "resamples", "not_converged", "status"]
CROSS_LINGUAL_COLUMNS = ["task", "model", "layer", "train_lang", "test_lang", *SCORES,
                         *(f"{column}{end}" for column in list(PROBES.values())[1:] for end in ("", "_low", "_high")),
                         "majority_f1", "n_train", "n_test", "resamples", "not_converged", "status"]


def cross_lingual_resamples(langs: Sequence[str], y: Sequence[int], is_test: Sequence[bool], n: int,
                            seed: int) -> Iterator[tuple[str, str, list[Resample]]]:
    """(train language, test language, its `n` resamples) for every ordered pair of the languages, in
    first-seen order. A language without every class, or with a class too small for the splits, is refused
    with each language's count per class."""
    langs, y, is_test = np.asarray(langs), np.asarray(y), np.asarray(is_test, dtype=bool)
    order = list(dict.fromkeys(langs.tolist()))
    if len(order) < 2:
        raise SaefsError(f"cross-lingual transfer needs at least two languages, got {order}")
    classes = np.unique(y)
    counts = {lang: {int(c): int(np.sum(y[langs == lang] == c)) for c in classes} for lang in order}
    lacking = [lang for lang, count in counts.items() if min(count.values()) == 0]
    if lacking:
        raise SaefsError(f"languages {lacking} lack a class (rows per class and language: {counts}); every language "
                         "needs texts of each class: fix its source or its labels")
    parts = {}
    for lang in order:
        rows = np.flatnonzero(langs == lang)
        try:
            parts[lang] = [(rows[r.train], rows[r.test]) for r in resamples(y[rows], is_test[rows], n, seed)]
        except SaefsError as err:
            raise SaefsError(f"language {lang!r} ({counts[lang]} rows per class): {err}") from None
    for train_lang in order:
        for test_lang in order:
            splits = []
            for index, ((train_rows, _), (_, test_rows)) in enumerate(zip(parts[train_lang], parts[test_lang],
                                                                          strict=True)):
                train, test = np.zeros(len(y), dtype=bool), np.zeros(len(y), dtype=bool)
                train[train_rows], test[test_rows] = True, True
                splits.append(Resample(index, train, test))
            yield train_lang, test_lang, splits


def train_language_rows(cells: Iterable[tuple[str, str, list[Resample]]]
                        ) -> Iterator[tuple[str, list[Resample], dict[str, list[Resample]]]]:
    """The cells of `cross_lingual_resamples` by train language: (train language, its resamples tested on every
    language's test part at once, its cells by test language). A row's cells train on the same texts in each
    resample, so one fit per resample serves the whole row; each cell keeps its own test part's predictions."""
    rows: dict[str, dict[str, list[Resample]]] = {}
    for train_lang, test_lang, splits in cells:
        rows.setdefault(train_lang, {})[test_lang] = splits
    for train_lang, row in rows.items():
        shared = [Resample(first.index, first.train, np.logical_or.reduce([splits[i].test for splits in row.values()]))
                  for i, first in enumerate(next(iter(row.values())))]
        yield train_lang, shared, row


def by_probe(table: pd.DataFrame) -> pd.DataFrame:
    """The cross-lingual table with one row per probe (sae, hidden, tfidf) and cell, each probe's macro F1 and
    interval under `macro_f1`, `macro_f1_low` and `macro_f1_high`: the frame the heatmaps take."""
    keys = ["task", "model", "layer", "train_lang", "test_lang", "status"]
    return pd.concat([table[keys].assign(probe=probe, macro_f1=table[column], macro_f1_low=table[f"{column}_low"],
                                         macro_f1_high=table[f"{column}_high"])
                      for probe, column in PROBES.items()], ignore_index=True)


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
