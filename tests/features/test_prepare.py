from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.core.prepare import PrepareConfig, PrepareError, corpus_order, prepare, take_tokens, text_id
from features.core.schema import PREPARED_COLUMNS
from tests.helpers import prepare_config


def raw_rows(n: int = 200, pos_share: float = 0.3) -> pd.DataFrame:
    n_pos = int(n * pos_share)
    return pd.DataFrame({"text": [f"text number {i}" for i in range(n)],
                         "raw_label": [1] * n_pos + [0] * (n - n_pos)})


def cfg(**kw) -> PrepareConfig:
    return prepare_config(**{"name": "demo", "labels": (0, 1), "label_names": ("neg", "pos"), **kw})


def test_text_id_is_stable_across_runs_and_machines() -> None:
    # A fixed value: changing the derivation would orphan every stored feature and registered model.
    assert text_id("hate_hate", "You are a wonderful person.") == "hate_hate-5700312be796070e"
    assert text_id("other", "You are a wonderful person.") != text_id("hate_hate", "You are a wonderful person.")


def test_output_follows_the_schema() -> None:
    df, summary = prepare(raw_rows(), cfg())
    assert list(df.columns) == list(PREPARED_COLUMNS)
    assert {c: str(t) for c, t in df.dtypes.items()} == PREPARED_COLUMNS
    assert df["text_id"].is_unique and set(df["split"]) == {"train", "test"}
    assert set(df["label_name"]) == {"neg", "pos"} and (df["lang"] == "en").all()
    assert summary.counts == {"test": {"neg": 28, "pos": 12}, "train": {"neg": 112, "pos": 48}}


def test_split_is_stratified_per_class() -> None:
    df, _ = prepare(raw_rows(1000, pos_share=0.1), cfg(test_size=0.25))
    share = df[df["split"] == "test"].groupby("label").size() / df.groupby("label").size()
    assert share.round(3).tolist() == [0.25, 0.25]


def test_same_result_whatever_the_row_order_and_seed_changes_it() -> None:
    raw = raw_rows()
    a, _ = prepare(raw, cfg())
    b, _ = prepare(raw.sample(frac=1, random_state=3), cfg())
    pd.testing.assert_frame_equal(a, b)
    c, _ = prepare(raw, cfg(seed=7))
    assert (a["split"] != c["split"]).any()


def test_max_rows_is_stratified_and_a_larger_sample_keeps_the_smaller_one() -> None:
    small, summary = prepare(raw_rows(1000), cfg(max_rows=100))
    large, _ = prepare(raw_rows(1000), cfg(max_rows=300))
    assert len(small) == 100 and summary.dropped_by_max_rows == 900
    assert small.groupby("label").size().tolist() == [70, 30]
    assert set(small["text_id"]) <= set(large["text_id"])


def test_raw_labels_map_to_positions_of_the_declared_set() -> None:
    raw = pd.DataFrame({"text": list("abcdef"), "raw_label": ["jailbreak", "benign"] * 3})
    df, _ = prepare(raw, prepare_config(name="jb", labels=("benign", "jailbreak"), test_size=0.34))
    assert dict(zip(df["text"], df["label"], strict=True)) == {"a": 1, "b": 0, "c": 1, "d": 0, "e": 1, "f": 0}
    assert set(df["label_name"]) == {"benign", "jailbreak"}


def test_labels_outside_the_declared_set_are_named() -> None:
    raw = raw_rows(10)
    raw.loc[0, "raw_label"] = 2
    with pytest.raises(PrepareError, match=r"dataset 'demo': 1 rows have labels outside the declared set \[0, 1\]"):
        prepare(raw, cfg())


def test_one_class_only_is_refused() -> None:
    with pytest.raises(PrepareError, match=r"one class only \('neg'\)"):
        prepare(raw_rows(10, pos_share=0), cfg())


def test_whitespace_only_texts_are_refused_before_dedupe_naming_the_rows() -> None:
    # Deduplicated first, 100 blank texts became two rows and failed the split with "raise max_rows".
    raw = pd.DataFrame({"text": [" " * (i % 3 + 1) for i in range(100)], "raw_label": [i % 2 for i in range(100)]})
    expected = (r"dataset 'demo': 100 of 100 rows have an empty or whitespace-only text: rows 1, 2, 3, 4, 5, 6, 7, "
                r"8, 9, 10 and 90 more \(counted from 1, header excluded\); fill them in or delete those rows")
    with pytest.raises(PrepareError, match=expected):
        prepare(raw, cfg())
    some = raw_rows(20)
    some.loc[[3, 8], "text"] = ["", "\t \n"]
    with pytest.raises(PrepareError, match=r"2 of 20 rows have an empty or whitespace-only text: rows 4, 9 "):
        prepare(some, cfg())


def test_null_texts_are_named_by_row() -> None:
    raw = raw_rows(20)
    raw.loc[5, "text"] = None
    with pytest.raises(PrepareError, match=r"1 rows have no text \(null\): rows 6 \(counted from 1"):
        prepare(raw, cfg())


def test_texts_longer_than_max_chars_are_refused_before_dedupe() -> None:
    raw = raw_rows(20)
    raw.loc[[2, 12], "text"] = ["x" * 1_000_000, " " + "y" * 30 + " "]
    expected = (r"2 rows have texts longer than validate_data.max_chars \(20 characters; the longest has 1000000\): "
                r"rows 3, 13 .*raise validate_data.max_chars")
    with pytest.raises(PrepareError, match=expected):
        prepare(raw, cfg(max_chars=20))
    prepare(raw, cfg(max_chars=1_000_000))  # the bound counts stripped characters and is inclusive


@pytest.mark.parametrize("empty", [np.nan, None, "", "  "])
def test_empty_labels_are_named_by_row_not_as_nan(empty: object) -> None:
    raw = raw_rows(20).astype({"raw_label": object})
    raw.loc[[3, 7], "raw_label"] = [empty, empty]
    with pytest.raises(PrepareError, match=r"2 rows have an empty label: rows 4, 8 .*fill in one of \[0, 1\]") as err:
        prepare(raw, cfg())
    assert "nan" not in str(err.value) and "None" not in str(err.value)


def test_duplicates_are_dropped_and_conflicting_texts_removed() -> None:
    raw = pd.DataFrame({"text": ["same", "same", "twice", "twice"] + [f"t{i}" for i in range(20)],
                        "raw_label": [1, 1, 0, 1] + [0, 1] * 10})
    df, summary = prepare(raw, cfg())
    assert summary.dropped_duplicates == 1 and summary.dropped_conflicting == 2
    assert "twice" not in set(df["text"]) and (df["text"] == "same").sum() == 1


def test_without_dedupe_duplicate_ids_remain_for_the_gate_to_catch() -> None:
    raw = pd.DataFrame({"text": ["same", "same"] + [f"t{i}" for i in range(20)], "raw_label": [1, 1] + [0, 1] * 10})
    df, _ = prepare(raw, cfg(dedupe=False))
    assert df["text_id"].duplicated().sum() == 1


def test_a_class_too_small_to_split_is_refused() -> None:
    raw = pd.DataFrame({"text": ["a", "b", "c", "d"], "raw_label": [0, 0, 0, 1]})
    with pytest.raises(PrepareError, match="a class with 1 rows cannot be split"):
        prepare(raw, cfg(test_size=0.5))


def test_corpus_order_interleaves_sources_is_stable_and_skips_blanks() -> None:
    frames = {"a": pd.DataFrame({"text": [f"a{i}" for i in range(50)] + ["  ", None, "a0"]}),
              "b": pd.DataFrame({"text": [f"b{i}" for i in range(30)]})}
    texts = corpus_order(frames, seed=0)
    assert len(texts) == len(set(texts)) == 80 and all(t.strip() for t in texts)
    assert [t[0] for t in texts[:60]] == ["a", "b"] * 30  # any prefix spreads evenly while both last
    assert corpus_order({k: f.iloc[::-1] for k, f in frames.items()}, seed=0) == texts
    assert corpus_order(frames, seed=1) != texts


def test_token_budgets_take_consecutive_texts_until_each_is_met() -> None:
    assert take_tokens([5, 5, 5, 5, 5], [7, 10], "corpus") == [range(0, 2), range(2, 4)]
    assert take_tokens([5, 5, 5], [5, 5], "corpus") == [range(0, 1), range(1, 2)]
    with pytest.raises(PrepareError, match=r"the corpus has 15 tokens, fewer than the 16 asked for \(6 \+ 10\): "
                       "add sources or lower the token budgets"):
        take_tokens([5, 5, 5], [6, 10], "the corpus")


def test_balance_samples_the_same_number_of_each_class() -> None:
    raw = pd.DataFrame({"text": [f"text {i}" for i in range(100)], "raw_label": [int(i < 20) for i in range(100)]})
    df, _ = prepare(raw, cfg(max_rows=30, balance=True))
    assert df["label"].value_counts().to_dict() == {0: 15, 1: 15}
    df, _ = prepare(raw, cfg(max_rows=1000, balance=True))  # as many as the rarest class holds
    assert df["label"].value_counts().to_dict() == {0: 20, 1: 20}


def test_max_rows_keeps_exactly_that_many_when_the_class_shares_do_not_divide_it() -> None:
    raw = raw_rows(1000, pos_share=0.457)  # 45.7% and 54.3%: flooring each class's share of 999 lost a row
    for max_rows in (999, 500, 101):
        df, _ = prepare(raw, cfg(max_rows=max_rows))
        assert len(df) == max_rows
