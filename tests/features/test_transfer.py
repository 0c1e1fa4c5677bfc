"""Transfer helpers: cross-lingual resamples that never leak, skip reasons, probe frames, heatmaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import random as sparse_random

from features.core.transfer import (
    by_probe,
    codes_frame,
    cross_lingual_resamples,
    heatmap,
    hidden_frame,
    skip_reason,
)
from features.errors import SaefsError
from features.stores.feast.columns import IDS, VALUES, to_csr


def languages() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    langs = np.array(["en"] * 30 + ["fr"] * 20 + ["de"] * 25)
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(len(langs)) % 2)
    is_test = np.zeros(len(langs), dtype=bool)
    for lang in ("en", "fr", "de"):  # a prepared split per language: its first fifth of each class
        for label in (0, 1):
            rows = np.flatnonzero((langs == lang) & (y == label))
            is_test[rows[: max(1, len(rows) // 5)]] = True
    return langs, y, is_test


def test_zero_shot_cells_never_train_on_the_test_language() -> None:
    langs, y, is_test = languages()
    cells = {(a, b): runs for a, b, runs in cross_lingual_resamples(langs, y, is_test, 3, seed=0)}
    assert list(cells) == [(a, b) for a in ("en", "fr", "de") for b in ("en", "fr", "de")]
    for (train_lang, test_lang), runs in cells.items():
        assert [r.index for r in runs] == [0, 1, 2]
        for run in runs:
            assert not (run.train & run.test).any()
            assert set(langs[run.train]) == {train_lang} and set(langs[run.test]) == {test_lang}
        # resample 0 is each language's prepared split; a language trains on the same texts in every cell
        assert (runs[0].train == ((langs == train_lang) & ~is_test)).all()
        assert (runs[0].test == ((langs == test_lang) & is_test)).all()
        same = cells[train_lang, train_lang]
        assert all((run.train == other.train).all() for run, other in zip(runs, same, strict=True))


def test_one_language_is_an_error() -> None:
    with pytest.raises(SaefsError, match="at least two languages"):
        list(cross_lingual_resamples(["en"] * 4, [0, 1, 0, 1], [False, False, True, True], 1, seed=0))


def test_a_language_with_one_class_is_a_counted_error() -> None:
    langs, y, is_test = languages()
    y[langs == "fr"] = 0
    with pytest.raises(SaefsError, match=r"languages \['fr'\] lack a class .*'fr': \{0: 20, 1: 0\}"):
        list(cross_lingual_resamples(langs, y, is_test, 3, seed=0))


def test_by_probe_puts_every_probe_under_the_heatmaps_columns() -> None:
    table = pd.DataFrame({"task": ["t"], "model": ["m"], "layer": [9], "train_lang": ["en"], "test_lang": ["es"],
                          "status": ["ok"],
                          **{f"{c}{end}": [v] for c, v in (("macro_f1", 0.7), ("hidden_f1", 0.8), ("tfidf_f1", 0.4))
                             for end in ("", "_low", "_high")}})
    long = by_probe(table)
    assert long.set_index("probe")["macro_f1"].to_dict() == {"sae": 0.7, "hidden": 0.8, "tfidf": 0.4}


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
