"""features.reporting.study: the three questions answered from marginal sweeps, on planted predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.core.design import Config, center_config, sweep
from features.reporting import report, study
from tests.helpers import planted_predictions

Y = np.arange(400) % 2
CENTER = center_config([3, 5, 9, 12], "4k", "sum", None)  # block 5


def _name(config: Config) -> str:
    return f"l{config.layer}__sae{config.width}__{config.pooling}__{report.threshold_label(config.binarize)}"


def _run(planted: dict[Config, float], datasets: tuple[str, ...] = ("d1", "d2")):
    """Probes metrics and predictions of a marginal sweep on every dataset, each cell right on a planted share
    of the texts (0.7 unless `planted` says otherwise), validation in the same order."""
    configs = sweep([3, 5, 9, 12], ["4k", "16k"], ["sum", "max"], [None, 1.0, "q50"], "marginal", CENTER)
    accuracy = {_name(c): planted.get(c, 0.7) for c in configs}
    probes, predictions = {}, {}
    for seed, dataset in enumerate(datasets):
        cells = {_name(c): c.as_dict() | {"input": "sparse", "resamples": 5, "macro_f1": accuracy[_name(c)],
                                          "macro_f1_low": accuracy[_name(c)] - 0.03,
                                          "macro_f1_high": accuracy[_name(c)] + 0.03,
                                          "val_macro_f1": accuracy[_name(c)] + 0.001 * c.layer}
                 for c in configs}
        probes[dataset, "m"] = {"cells": cells, "baselines": {}, "best_cell": None, "training_curve": [],
                                "design": {"design": "marginal", "center": CENTER.as_dict()}}
        predictions[dataset, "m"] = planted_predictions(accuracy, Y, seed=seed)
    return probes, predictions, {d: [0, 1] for d in datasets}


def _table(probes, predictions, labels):
    return study.study_table(report.cells_frame(probes), probes, predictions, labels)


def test_a_planted_layer_effect_is_found_per_dataset_and_over_datasets_and_every_axis_value_is_reported() -> None:
    table = _table(*_run({Config(9, "4k", "sum", None): 0.85}))
    pooled = table[(table["scope"] == study.POOLED) & (table["axis"] == "layer")].set_index("value")
    assert pooled.loc["9", "best"] and not pooled.drop(index="9")["best"].any()
    assert (pooled.drop(index="9")["p_holm"] < study.CALLED).all()
    assert pooled.drop(index="9")["difference"].between(0.1, 0.2).all()
    per_dataset = table[(table["scope"] == "dataset") & (table["axis"] == "layer") & ~table["best"]]
    assert len(per_dataset) == 2 * 3 and (per_dataset["low"] > 0).all()
    for axis, values in (("layer", {"3", "5", "9", "12"}), ("width", {"4k", "16k"}), ("pooling", {"sum", "max"}),
                         ("binarize", {"none", "1.0", "q50"})):
        assert set(table[(table["axis"] == axis) & (table["scope"] == study.POOLED)]["value"]) == values
    assert (table["p_holm"].dropna() >= table["p"].dropna()).all()
    sentence = study.answer(table, "m", "layer", {"m": 18})
    assert sentence.startswith("m: block 9 (depth 0.50) is best on validation over 2 datasets")
    assert "; it beats block 3 (depth 0.17) by +0.1" in sentence and ", block 12 (depth 0.67) by +0.1" in sentence
    best = study.best_values(table)["m"]["layer"]
    assert best["best"] == "9" and best["low"] < 0.85 < best["high"] and best["high"] - best["low"] < 0.1


def test_no_planted_difference_is_answered_as_none_detectable() -> None:
    table = _table(*_run({}))
    assert table[table["scope"] == study.POOLED]["p_holm"].dropna().gt(study.CALLED).all()
    assert "; no difference detectable from width " in study.answer(table, "m", "width")
    assert "do not differ detectably from continuous codes" in study.binarization_answer(table, "m")


def test_binarization_that_wins_is_said_to_beat_continuous_codes_with_its_difference() -> None:
    table = _table(*_run({Config(5, "4k", "sum", "q50"): 0.85}))
    sentence = study.binarization_answer(table, "m")
    assert sentence.startswith("m: the best binarized codes (threshold q50, test macro F1 0.850) beat continuous")
    difference = float(sentence.split(": +")[1].split(" ")[0])
    assert difference == pytest.approx(0.15, abs=0.03)


def test_a_full_grid_run_has_no_sweeps_and_a_center_that_differs_between_datasets_is_refused() -> None:
    probes, predictions, labels = _run({})
    for results in probes.values():
        results["design"] = {"design": "grid", "center": None}
    assert _table(probes, predictions, labels).empty
    probes, predictions, labels = _run({})
    probes["d2", "m"]["design"]["center"] = CENTER.as_dict() | {"layer": 9}
    with pytest.raises(Exception, match="rerun `dvc repro train_probes` so that every dataset shares one design"):
        _table(probes, predictions, labels)


def test_the_three_sections_open_with_their_answers_and_draw_their_figures() -> None:
    from features.reporting.page import study_sections
    from features.reporting.report import RunInputs

    probes, predictions, labels = _run({Config(9, "4k", "sum", None): 0.85})
    inputs = RunInputs(probes, predictions, labels, {}, {}, {}, setup={"depth": {"m": 18}})
    cells = report.cells_frame(probes)
    sections = study_sections(inputs, cells, study.study_table(cells, probes, predictions, labels),
                               pd.DataFrame(columns=["gap"]))
    assert [s.title for s in sections] == ["Which layer?", "Which SAE width and pooling?",
                                           "Binarize, and at which threshold?"]
    assert sections[0].paragraphs[0].startswith("m: block 9 (depth 0.50) is best")
    assert sections[2].paragraphs[1].startswith("m: the best binarized codes")
    assert all(s.figures and s.figures[0][1].startswith("<svg") for s in sections)


def test_a_difference_clear_of_zero_only_before_holm_is_said_to_be_uncorrected() -> None:
    """An interval that excludes zero but a Holm p above the call: the sentence must not read 'no difference
    detectable' beside that interval (the study run's pooling answer did, before this test)."""
    row = {"model": "m", "axis": "pooling", "scope": study.POOLED, "dataset": "over datasets", "macro_f1": 0.75}
    table = pd.DataFrame([
        row | {"value": "max", "best": True, "difference": np.nan, "low": np.nan, "high": np.nan, "p": np.nan,
               "p_holm": np.nan},
        row | {"value": "last", "best": False, "difference": 0.052, "low": 0.026, "high": 0.078, "p": 0.005,
               "p_holm": 0.4},
        row | {"value": "sum", "best": False, "difference": 0.005, "low": -0.02, "high": 0.03, "p": 0.6,
               "p_holm": 1.0},
        row | {"scope": "dataset", "dataset": "d1", "value": "last", "best": False, "difference": 0.05,
               "low": -0.01, "high": 0.11, "p": 0.1, "p_holm": 1.0}])
    sentence = study.answer(table, "m", "pooling")
    assert ("it is ahead of last pooling by +0.052 [+0.026, +0.078] (p 0.005) uncorrected, which does not survive "
            "Holm's correction over the 3 tests of these sections") in sentence
    assert "; and no difference is detectable from sum pooling (+0.005 [-0.020, +0.030])" in sentence
    assert "no difference detectable from last" not in sentence
