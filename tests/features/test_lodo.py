"""Leave one dataset out: the held-out dataset's texts are never trained on, and the gap is paired."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.core.lodo import Fold, check_disjoint, folds, gap, latent_overlap
from features.errors import SaefsError


def stacked(shared: str = "the same tweet in two datasets") -> pd.DataFrame:
    """Three datasets of 20 texts (train 15, test 5, both labels in each); `shared` is a training text of beta
    and a test text of alpha, under each dataset's own text_id."""
    rows = []
    for dataset in ("alpha", "beta", "gamma"):
        for i in range(20):
            rows.append({"dataset": dataset, "text_id": f"{dataset}-{i:02d}", "text": f"{dataset} text {i}",
                         "label": i % 2, "split": "test" if i >= 15 else "train"})
    frame = pd.DataFrame(rows)
    frame.loc[(frame["dataset"] == "alpha") & (frame["text_id"] == "alpha-16"), "text"] = shared
    frame.loc[(frame["dataset"] == "beta") & (frame["text_id"] == "beta-03"), "text"] = f"  {shared}\n"
    return frame


def test_each_dataset_is_held_out_and_none_of_its_texts_is_trained_on() -> None:
    frame = stacked()
    found = folds(frame)
    assert [fold.held_out for fold in found] == ["alpha", "beta", "gamma"]
    for fold in found:
        check_disjoint(frame, fold)
        held = frame["dataset"] == fold.held_out
        assert not held.iloc[fold.others].any() and held.iloc[fold.own].all() and held.iloc[fold.test].all()
        assert (frame["split"].iloc[fold.test] == "test").all() and (frame["split"].iloc[fold.own] == "train").all()
        held_ids = set(frame.loc[held, "text_id"])
        assert not held_ids & set(frame["text_id"].iloc[fold.others])  # by text id
    alpha = found[0]
    assert alpha.dropped == 1 and "beta-03" not in set(frame["text_id"].iloc[alpha.others])  # and by text
    assert len(alpha.others) == 2 * 15 - 1 and len(alpha.own) == 15 and len(alpha.test) == 5
    assert found[1].dropped == 0  # alpha's copy is a test text: never trained on anyway


def test_a_leak_is_caught_by_text_not_only_by_id() -> None:
    frame = stacked()
    fold = folds(frame)[0]
    leaky = Fold(fold.held_out, np.append(fold.others, frame.index[frame["text_id"] == "beta-03"][0]), fold.own,
                 fold.test, 0)
    with pytest.raises(SaefsError, match=r"1 training texts of the alpha fold are texts of alpha: \['beta-03'\]"):
        check_disjoint(frame, leaky)


def test_a_dataset_with_one_class_in_a_split_is_named_with_its_counts() -> None:
    frame = stacked()
    frame.loc[(frame["dataset"] == "gamma") & (frame["split"] == "test"), "label"] = 1
    with pytest.raises(SaefsError, match=r"gamma held out: its test texts hold one class only \(\{1: 5\}\)"):
        folds(frame)


def test_the_gap_is_the_paired_difference_on_the_same_texts() -> None:
    y = np.array([0, 1] * 50)
    own = y.copy()
    others = np.where(np.arange(100) < 30, 1 - y, y)  # wrong on 30 texts
    result = gap(y, own, others, [0, 1], n_boot=500, seed=0)
    assert result["in_split_f1"] == 1.0 and result["held_out_f1"] == pytest.approx(0.7, abs=0.01)
    assert result["gap"] == pytest.approx(0.3, abs=0.01) and 0.15 < result["gap_low"] < 0.3 < result["gap_high"]
    assert result["gap_p"] < 0.01 and result["n_test"] == 100
    same = gap(y, own, own, [0, 1], n_boot=500, seed=0)
    assert same["gap"] == 0 and same["gap_p"] == 1.0


def test_latent_overlap_is_jaccard_per_pair() -> None:
    table = latent_overlap({"b": [1, 2, 3], "a": [2, 3, 4, 5], "c": []})
    assert table.to_dict("records") == [{"a": "a", "b": "b", "jaccard": 0.4}, {"a": "a", "b": "c", "jaccard": 0.0},
                                        {"a": "b", "b": "c", "jaccard": 0.0}]
