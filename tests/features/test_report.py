"""Report tables, paper comparison and figures on small hand-made metrics."""

from __future__ import annotations

import pandas as pd
import pytest

from features.errors import SaefsError
from features.reporting import figures, paper, report
from features.reporting.page import with_interval


def _cell(f1: float, val: float, layer: int = 1, pooling: str = "sum", binarize: float | None = None,
          dense: bool = False, spread: float = 0.01, **extra: object) -> dict:
    return {"layer": layer, "width": "hidden" if dense else "64", "pooling": pooling, "binarize": binarize,
            "input": "dense" if dense else "sparse", "seeds": 3, "macro_f1": f1, "macro_f1_low": f1 - spread,
            "macro_f1_high": f1 + spread, "val_macro_f1": val, **extra}


def _probes(cells: dict[str, dict], tfidf: float = 0.5) -> dict:
    baseline = {"macro_f1": tfidf, "macro_f1_low": tfidf, "macro_f1_high": tfidf, "seeds": 3}
    return {("d", "m"): {"cells": cells, "baselines": {"tfidf": baseline}, "best_cell": next(iter(cells)),
                         "training_curve": [{"fraction": 1.0, "train_rows": 80, "macro_f1": 0.7, "n": 20.0}]}}


def test_best_cells_are_chosen_on_validation_never_on_test() -> None:
    probes = _probes({"a": _cell(0.9, 0.6), "b": _cell(0.7, 0.8, binarize=1.0),
                      "b__tree": _cell(0.99, 0.99, binarize=1.0, variant="tree")})
    cells = report.cells_frame(probes)
    assert report.layer_table(cells)["cell"].tolist() == ["b"]  # not a (best test), not the tree variant
    assert report.pooling_table(cells)[["binarize", "cell"]].values.tolist() == [["1.0", "b"], ["none", "a"]]


def test_losses_name_the_baseline_and_whether_intervals_separate() -> None:
    probes = _probes({"sae": _cell(0.70, 0.9), "hid": _cell(0.72, 0.5, dense=True, spread=0.05)}, tfidf=0.8)
    lost = report.losses(report.cells_frame(probes), probes).set_index("baseline")
    assert lost.loc["hidden", "separated"] == False  # noqa: E712  (0.72 ± 0.05 overlaps 0.70 ± 0.01)
    assert lost.loc["tfidf", "separated"] == True and lost.loc["tfidf", "gap"] == pytest.approx(0.1)  # noqa: E712


def test_transfer_columns_are_checked_against_the_contract() -> None:
    frame = pd.DataFrame(columns=[c for c in report.CROSS_MODEL_COLUMNS if c != "status"])
    with pytest.raises(SaefsError, match=r"x.csv lacks columns \['status'\]"):
        report.check_columns(frame, report.CROSS_MODEL_COLUMNS, "x.csv")


def test_interval_column_replaces_the_three() -> None:
    out = with_interval(pd.DataFrame({"a": [1], "macro_f1": [0.81234], "macro_f1_low": [0.8], "macro_f1_high": [0.9]}))
    assert out.columns.tolist() == ["a", "test macro F1 [95% CI]"] and out.iloc[0, 1] == "0.812 [0.800, 0.900]"


def test_paper_comparison_counts_binarization_and_reads_cross_model_transfer() -> None:
    probes = _probes({"raw": _cell(0.70, 0.7), "bin": _cell(0.75, 0.8, binarize=1.0), "h": _cell(0.6, 0.6, dense=True)})
    cells = report.cells_frame(probes)
    best = pd.DataFrame([{"dataset": "d", "model": "m", "macro_f1": 0.75, "hidden_f1": 0.6, "tfidf_f1": 0.5}])
    cross = pd.DataFrame([{"task": "t", "source": "a", "target": "b", "macro_f1": 0.6, "hidden_f1": 0.7,
                           "status": "ok"}])
    rows = paper.compare(best, cells, cross, "tiny setup").set_index("#")
    assert rows.loc[1, "verdict"] == "0 of 1 datasets above 0.8 (below: d)"
    assert rows.loc[3, "verdict"] == "SAE above both on 1 of 1 datasets (d)"
    assert rows.loc[4, "verdict"] == "binarized >= continuous in 1 of 1 (dataset, model) pairs"
    assert rows.loc[12, "verdict"] == "hidden above SAE in 1 of 1 behaviour-prediction cells"
    assert rows.loc[6, "this run"] == "no counterpart in this run" and rows.loc[6, "this run setup"] == ""
    without = paper.compare(best, cells, None, "tiny setup").set_index("#")
    assert without.loc[12, "this run"] == "not produced yet"


def test_figures_are_inline_svg_and_byte_stable() -> None:
    table = pd.DataFrame({"source": ["a", "a", "b"], "target": ["a", "b", "a"], "macro_f1": [0.9, None, 0.5],
                          "macro_f1_low": [0.8, None, 0.4], "macro_f1_high": [1.0, None, 0.6]})
    first = figures.heatmap(table, "source", "target", "t")
    assert first.startswith("<svg") and "skipped" in first and "[0.40, 0.60]" in first
    assert figures.heatmap(table, "source", "target", "t") == first  # no date, fixed ids: DVC sees no change
