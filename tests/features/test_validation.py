"""The prepared-data gate: each defect fails exactly its expectation, with the right count."""

from __future__ import annotations

import html
import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from features.core.schema import PREPARED_COLUMNS
from features.reporting.validation_page import validation_page
from features.stores.validation import ValidationRules, validate_prepared

RULES = ValidationRules(
    labels=(0, 1), min_class_count=20, test_size=0.2, split_tolerance=0.05, min_chars=3, max_chars=200
)


def prepared_frame(n: int = 200) -> pd.DataFrame:
    """A valid prepared frame: 2 balanced classes, exactly 20% test."""
    labels = np.arange(n) % 2
    split = np.where(np.arange(n) % 5 == 0, "test", "train")
    df = pd.DataFrame(
        {
            "text_id": [f"toy-{i:04d}" for i in range(n)],
            "text": [f"example text number {i}" for i in range(n)],
            "label": labels,
            "label_name": np.where(labels == 1, "hate", "not_hate"),
            "split": split,
            "lang": "en",
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    return df.astype(PREPARED_COLUMNS)


def test_valid_frame_passes_every_check() -> None:
    report = validate_prepared(prepared_frame(), RULES, "toy")
    assert report.success, report.message()
    assert report.failures == []
    assert report.n_rows == 200
    assert report.message() == f"dataset 'toy' passed all {report.n_expectations} expectations (200 rows)."
    assert len(report.checks) == report.n_expectations and all(c.success for c in report.checks)
    assert {c.expectation: c.detail for c in report.checks}["text_id is unique"] == "0 of 200 rows unexpected"
    json.dumps(report.to_dict())


def _set(col: str, rows: list[int], value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[rows, col] = value
        return df

    return mutate


def _drop_class_1_rows(df: pd.DataFrame) -> pd.DataFrame:
    keep = (df["label"] == 0) | (df.index < 20)  # class 1 keeps 10 rows (odd indices below 20)
    return df[keep].reset_index(drop=True)


def _all_train(df: pd.DataFrame) -> pd.DataFrame:
    df["split"] = "train"
    df.loc[:9, "split"] = "test"  # 10 of 200 = 0.05 test, band is 0.15..0.25 -> 20 rows short
    return df


DEFECTS = [
    # id, mutation, failed GX type, column, unexpected_count
    ("empty_text", _set("text", [3, 4], ""), "expect_column_values_to_match_regex", "text", 2),
    ("blank_text", _set("text", [5, 6, 7], "  \t\n "), "expect_column_values_to_match_regex", "text", 3),
    ("null_text", _set("text", [8], pd.NA), "expect_column_values_to_not_be_null", "text", 1),
    ("duplicate_text_id", _set("text_id", [1, 2], "toy-0000"), "expect_column_values_to_be_unique", "text_id", 3),
    ("label_outside_set", _set("label", [10, 12], 7), "expect_column_values_to_be_in_set", "label", 2),
    ("too_long_text", _set("text", [11], "x" * 201), "expect_column_values_to_be_between", "text", 1),
    ("too_short_text", _set("text", [13], " ab "), "expect_column_values_to_be_between", "text", 1),
    ("bad_split_value", _set("split", [14], "dev"), "expect_column_values_to_be_in_set", "split", 1),
    ("null_lang", _set("lang", [15, 16], pd.NA), "expect_column_values_to_not_be_null", "lang", 2),
    ("split_fraction_off", _all_train, "expect_column_mean_to_be_between", "split", 20),
    ("too_few_class_rows", _drop_class_1_rows, "expect_column_values_to_be_between", "label", 10),
]


@pytest.mark.parametrize(
    ("mutate", "gx_type", "column", "count"), [d[1:] for d in DEFECTS], ids=[d[0] for d in DEFECTS]
)
def test_each_defect_fails_exactly_its_expectation(
    mutate: Callable[[pd.DataFrame], pd.DataFrame], gx_type: str, column: str, count: int
) -> None:
    report = validate_prepared(mutate(prepared_frame()), RULES, "toy_bad")
    assert not report.success
    assert len(report.failures) == 1, report.message()
    (failure,) = report.failures
    assert (failure.gx_type, failure.column, failure.unexpected_count) == (gx_type, column, count)
    assert failure.expectation in report.message()
    if mutate is _drop_class_1_rows:  # the detail names the class and its count
        assert failure.detail == "class 1 has 10 rows, needs >= 20"


def test_missing_class_and_missing_column_are_named() -> None:
    df = prepared_frame()
    df = df[df["label"] == 0].drop(columns=["lang"])
    report = validate_prepared(df, RULES, "toy_gone")
    details = {f.expectation: f.detail for f in report.failures}
    assert details == {
        "every class occurs": "class 1 has 0 rows",
        "the schema columns exist": "missing columns ['lang']",
    }


def test_message_names_dataset_expectations_and_counts() -> None:
    df = _set("text", [3, 4, 5], " ")(prepared_frame())
    df.loc[1, "text_id"] = df.loc[0, "text_id"]
    report = validate_prepared(df, RULES, "hate_hate")
    msg = report.message()
    assert msg.startswith(f"dataset 'hate_hate' failed 2 of {report.n_expectations} expectations: ")
    assert "text is not empty after stripping (3 of 200 rows)" in msg
    assert "text_id is unique (2 of 200 rows)" in msg
    back = json.loads(json.dumps(report.to_dict()))
    assert back["success"] is False and back["failures"][0]["unexpected_count"] in (2, 3)
    assert back["results"]["statistics"]["unsuccessful_expectations"] == 2


def test_the_page_lists_every_expectation_and_the_rows_that_broke_one() -> None:
    df = _set("text", [3, 4, 5], " ")(prepared_frame())
    report = validate_prepared(df, RULES, "hate_hate")
    page = validation_page(report, df)
    assert "<script" not in page and "http" not in page  # nothing to fetch: it renders offline
    for check in report.checks:
        assert check.expectation in html.unescape(page)
    assert page.count("<td>FAILED</td>") == 1 and "<h2>FAILED: text is not empty after stripping</h2>" in page
    failed = next(c for c in report.checks if not c.success)
    assert failed.expectation == "text is not empty after stripping" and failed.failing_rows == [3, 4, 5]
    for row in (3, 4, 5):
        assert f"<td>toy-{row:04d}</td>" in page
    assert "<td>toy-0006</td>" not in page
