"""Transfer helpers: cross-lingual splits that never leak, skip reasons, probe frames, heatmaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import random as sparse_random

from features.core.transfer import codes_frame, cross_lingual_splits, heatmap, hidden_frame, skip_reason
from features.errors import SaefsError
from features.stores.feast.columns import IDS, VALUES, to_csr


def languages() -> tuple[np.ndarray, np.ndarray]:
    langs = np.array(["en"] * 30 + ["fr"] * 20 + ["de"] * 25)
    rng = np.random.default_rng(0)
    return langs, rng.permutation(np.arange(len(langs)) % 2)


def test_zero_shot_cells_never_train_on_the_test_language() -> None:
    langs, y = languages()
    cells = {(a, b): runs for a, b, runs in cross_lingual_splits(langs, y, folds=5, seed=0)}
    assert list(cells) == [(a, b) for a in ("en", "fr", "de") for b in ("en", "fr", "de")]
    for (train_lang, test_lang), runs in cells.items():
        for train, test in runs:
            assert not (train & test).any()
            assert set(langs[train]) == {train_lang} and set(langs[test]) == {test_lang}
            if train_lang != test_lang:
                assert train.sum() == (langs == train_lang).sum() and test.sum() == (langs == test_lang).sum()


def test_same_language_cells_are_k_fold_within_the_language() -> None:
    langs, y = languages()
    runs = next(r for a, b, r in cross_lingual_splits(langs, y, folds=5, seed=0) if a == b == "fr")
    assert len(runs) == 5
    tested = np.sum([test for _, test in runs], axis=0)
    assert (tested == (langs == "fr")).all()  # every French row tested exactly once, nothing else


def test_one_language_is_an_error() -> None:
    with pytest.raises(SaefsError, match="at least two languages"):
        list(cross_lingual_splits(["en"] * 4, [0, 1, 0, 1], folds=2, seed=0))


def test_skip_reasons() -> None:
    y, train = np.ones(10, dtype=int), np.arange(10) < 8
    assert skip_reason(y, train, ~train, 3).startswith("skipped: one class")
    y = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 1])
    assert "need 3" in skip_reason(y, train, ~train, 3)
    assert skip_reason(np.arange(10) % 2, train, ~train, 3) is None


def test_frames_are_what_the_probes_take() -> None:
    codes = sparse_random(6, 20, density=0.3, format="csr", dtype=np.float32, random_state=0)
    frame = codes_frame(codes)
    assert (to_csr(frame[IDS], frame[VALUES], 20) != codes).nnz == 0
    assert np.stack(hidden_frame(np.eye(3)).iloc[:, 0]).shape == (3, 3)


def test_heatmap_writes_a_png_with_blank_skipped_cells(tmp_path) -> None:
    table = pd.DataFrame({"task": ["t", "t"], "source": ["a", "a"], "target": ["a", "b"], "macro_f1": [0.7, None],
                          "macro_f1_low": [0.6, None], "macro_f1_high": [0.8, None]})
    heatmap(table, ["task", "source"], "target", "title", tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
