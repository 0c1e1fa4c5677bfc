"""Report tables, paired comparisons, paper comparison and figures on small hand-made metrics and predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import SaefsError
from features.reporting import comparisons, figures, paper, report
from features.reporting.page import with_interval
from features.reporting.sections import EMPTY, Section, render
from tests.helpers import planted_predictions


def _cell(f1: float, val: float, layer: int = 1, pooling: str = "sum", binarize: float | None = None,
          dense: bool = False, spread: float = 0.01, **extra: object) -> dict:
    return {"layer": layer, "width": "hidden" if dense else "64", "pooling": pooling, "binarize": binarize,
            "input": "dense" if dense else "sparse", "resamples": 3, "macro_f1": f1, "macro_f1_low": f1 - spread,
            "macro_f1_high": f1 + spread, "val_macro_f1": val, **extra}


def _probes(cells: dict[str, dict], tfidf: float = 0.5) -> dict:
    baseline = {"macro_f1": tfidf, "macro_f1_low": tfidf, "macro_f1_high": tfidf, "resamples": 3}
    return {("d", "m"): {"cells": cells, "baselines": {"tfidf": baseline}, "best_cell": next(iter(cells)),
                         "training_curve": [{"fraction": 1.0, "train_rows": 80, "macro_f1": 0.7, "resamples": 3}]}}


def test_best_cells_are_chosen_on_validation_never_on_test() -> None:
    probes = _probes({"a": _cell(0.9, 0.6), "b": _cell(0.7, 0.8, binarize=1.0),
                      "b__tree": _cell(0.99, 0.99, binarize=1.0, variant="tree")})
    cells = report.cells_frame(probes)
    assert report.layer_table(cells)["cell"].tolist() == ["b"]  # not a (best test), not the tree variant
    assert report.pooling_table(cells)[["binarize", "cell"]].values.tolist() == [["1.0", "b"], ["none", "a"]]


Y = np.arange(800) % 2


def _cells_and_predictions(accuracy: dict[str, float], resamples: int = 5):
    """Cells named by fit (suffix says the kind: __sae, __last, __mean) with validation in the planted order."""
    cells = {}
    for rank, fit in enumerate(accuracy):
        kind = fit.rsplit("__", 1)[-1]
        if kind in ("sae", "last", "mean"):
            cells[fit] = _cell(accuracy[fit], 1 - 0.01 * rank, layer=int(fit[1]), dense=kind != "sae",
                               pooling="sum" if kind == "sae" else kind)
    probes = {("d", "m"): {"cells": cells, "baselines": {}, "best_cell": None, "training_curve": []}}
    return report.cells_frame(probes), {("d", "m"): planted_predictions(accuracy, Y, resamples)}


def test_a_planted_advantage_survives_holm_and_a_tie_does_not() -> None:
    cells, predictions = _cells_and_predictions({"l1__sae": 0.9, "l1__last": 0.7, "l1__mean": 0.7, "tfidf": 0.9})
    paired, gaps = comparisons.with_holm(comparisons.paired_table(cells, predictions, {"d": [0, 1]}),
                                         comparisons.detection_gaps(cells, predictions, {"d": [0, 1]}))
    f1 = paired[paired["metric"] == "macro_f1"].set_index("comparison")
    assert f1.loc["last-token hidden", "difference"] == pytest.approx(0.2, abs=0.03)
    assert f1.loc["last-token hidden", "low"] > 0 and f1.loc["last-token hidden", "p_holm"] < 0.05
    assert f1.loc["TF-IDF", "low"] < 0 < f1.loc["TF-IDF", "high"] and f1.loc["TF-IDF", "p_holm"] > 0.05
    assert set(paired["metric"]) == {"macro_f1", "roc_auc"} and (paired["p_holm"] >= paired["p"]).all()
    gap = gaps.iloc[0]  # at layer 1, dense (0.7) minus SAE (0.9)
    assert gap["dense"] == "l1__last" and gap["sae"] == "l1__sae" and gap["high"] < 0 and gap["p_holm"] < 0.05


def test_comparisons_pool_models_per_dataset_and_pick_the_best_on_validation() -> None:
    cells, predictions = _cells_and_predictions({"l1__sae": 0.9, "l2__sae": 0.95, "l1__last": 0.7, "tfidf": 0.6})
    cells = pd.concat([cells, cells.assign(model="n")])
    predictions[("d", "n")] = predictions[("d", "m")]
    paired = comparisons.paired_table(cells, predictions, {"d": [0, 1]})
    assert set(paired["sae"]) == {"l1__sae", "m/l1__sae"}  # validation ranks l1 first, though l2 tests higher
    pooled = paired[paired["scope"] == "dataset"]
    assert set(pooled["other"]) == {"m/l1__last", "m/tfidf"} and set(pooled["model"]) == {"all"}


def test_models_with_different_test_texts_are_not_pooled() -> None:
    cells, predictions = _cells_and_predictions({"l1__sae": 0.9, "l1__last": 0.7, "tfidf": 0.8})
    other = predictions[("d", "m")]
    moved = other["resample"] == 1  # one resample's test texts drawn anew, as a stale file's would be
    other = pd.concat([other[~moved], other[moved].assign(split=np.where(other.loc[moved, "split"] == "test", "val",
                                                                         "test"))])
    predictions[("d", "n")] = other
    with pytest.raises(SaefsError, match=r"d: the prediction files of \['n'\] and m hold different test texts .* "
                                         r"rerun `dvc repro train_probes` for d"):
        comparisons.paired_table(pd.concat([cells, cells.assign(model="n")]), predictions, {"d": [0, 1]})


def test_holm_counts_a_test_printed_twice_once() -> None:
    row = {"scope": "model", "dataset": "d", "model": "m", "comparison": "best dense", "sae": "s", "other": "o",
           "metric": "macro_f1", "p": 0.02}
    other = row | {"comparison": "TF-IDF", "other": "tfidf", "p": 0.04}
    twice = [row | {"comparison": "last-token hidden"},  # best dense is the last-token probe
             row | {"scope": "dataset", "model": "all", "sae": "m/s", "other": "m/o"}]  # and the pooled best
    gap = pd.DataFrame([{"dataset": "d", "model": "m", "layer": 1, "dense": "o", "sae": "s", "p": 0.02}])
    paired, gaps = comparisons.with_holm(pd.DataFrame([row, other, *twice]), gap)
    assert paired["p_holm"].tolist() == pytest.approx([0.04] * 4)  # Holm over two tests, not five
    assert gaps["p_holm"].tolist() == pytest.approx([0.04])
    paired, _ = comparisons.with_holm(pd.DataFrame([row, other, row | {"metric": "roc_auc"}]), gap.iloc[:0])
    assert paired["p_holm"].tolist() == pytest.approx([0.06, 0.06, 0.06])  # another metric is another test


def test_one_resample_gives_a_note_never_a_number() -> None:
    cells, predictions = _cells_and_predictions({"l1__sae": 0.9, "l1__last": 0.7, "tfidf": 0.8}, resamples=1)
    paired = comparisons.paired_table(cells, predictions, {"d": [0, 1]})
    assert paired["difference"].isna().all() and paired["note"].str.contains("raise train_probes.resamples").all()


def test_transfer_columns_are_checked_against_the_contract() -> None:
    frame = pd.DataFrame(columns=[c for c in report.CROSS_MODEL_COLUMNS if c != "status"])
    with pytest.raises(SaefsError, match=r"x.csv lacks columns \['status'\]"):
        report.check_columns(frame, report.CROSS_MODEL_COLUMNS, "x.csv")


def test_interval_column_replaces_the_three() -> None:
    out = with_interval(pd.DataFrame({"a": [1], "macro_f1": [0.81234], "macro_f1_low": [0.8], "macro_f1_high": [0.9]}))
    assert out.columns.tolist() == ["a", "test macro F1 [95% CI]"] and out.iloc[0, 1] == "0.812 [0.800, 0.900]"


def _paired(rows: list[tuple[str, str, float, float]], scope: str = "model") -> pd.DataFrame:
    """Paired macro F1 rows (dataset, comparison, difference, p_holm) with a +-0.05 interval."""
    return pd.DataFrame([{"scope": scope, "dataset": d, "model": "m" if scope == "model" else "all", "comparison": c,
                          "metric": "macro_f1", "difference": diff, "low": diff - 0.05, "high": diff + 0.05,
                          "p_holm": p} for d, c, diff, p in rows])


PAPER = paper.Profile("profiles/paper.yaml", {"dataset": ["jailbreak", "toxicity_en"], "behaviour task": ["pubmed_qa"],
                                               "cross-lingual task": ["toxicity"]},
                      {"g2": ([5, 12], ["16k"])}, {"toxicity": ["en", "es"]})


def test_paper_comparison_counts_binarization_and_reads_cross_model_transfer() -> None:
    probes = _probes({"raw": _cell(0.70, 0.7), "bin": _cell(0.75, 0.8, binarize=1.0), "h": _cell(0.6, 0.6, dense=True)})
    cells = report.cells_frame(probes)
    best = pd.DataFrame([{"dataset": "d", "model": "m", "macro_f1": 0.75, "hidden_f1": 0.6, "tfidf_f1": 0.5}])
    cross = pd.DataFrame([{"task": "t", "source": "a", "target": "b", "macro_f1": 0.6, "hidden_f1": 0.7,
                           "target_hidden_f1": 0.8, "sae_minus_target_hidden": -0.2,
                           "sae_minus_target_hidden_p_holm": 0.01, "status": "ok"},
                          {"task": "t", "source": "b", "target": "a", "macro_f1": 0.6, "hidden_f1": 0.7,
                           "target_hidden_f1": 0.7, "sae_minus_target_hidden": -0.1,  # lower mean, not called
                           "sae_minus_target_hidden_p_holm": 0.2, "status": "ok"}])
    paired = _paired([("d", "last-token hidden", 0.15, 0.001), ("d", "TF-IDF", 0.25, 0.001)])
    rows = paper.compare(best, cells, paired, cross, "tiny setup", PAPER).set_index("#")
    assert rows.loc[1, "verdict"] == "0 of 1 datasets above 0.8 (below: d)"
    assert rows.loc[3, "verdict"].startswith("SAE above both (paired, Holm p < 0.05) on 1 of 1 datasets (d)")
    assert "d vs TF-IDF +0.250 [+0.200, +0.300]" in rows.loc[3, "this run"]
    assert rows.loc[4, "verdict"] == "binarized >= continuous in 1 of 1 (dataset, model) pairs"
    assert rows.loc[12, "verdict"] == ("the target's own hidden states above the source's SAE (paired, Holm p < "
                                       "0.05) in 1 of 2 behaviour-prediction cells")
    assert "t a→b 0.600 (target's own hidden 0.800)" in rows.loc[12, "this run"]
    assert rows.loc[6, "this run"] == "no counterpart in this run" and rows.loc[6, "this run setup"] == ""
    assert rows.loc[6, "verdict"] == "not in this profile; the paper profile has dataset jailbreak"
    assert rows.loc[9, "verdict"] == "neither this profile nor the paper profile has its data"
    without = paper.compare(best, cells, paired, None, "tiny setup", PAPER).set_index("#")
    assert without.loc[12, "this run"] == "not produced yet"


def test_the_paper_claims_are_judged_on_paired_tests_not_on_means() -> None:
    probes = _probes({"a": _cell(0.9, 0.9), "h": _cell(0.6, 0.6, dense=True)})
    cells = report.cells_frame(probes)
    best = pd.DataFrame([{"dataset": d, "model": "m", "macro_f1": 0.9, "hidden_f1": 0.6, "tfidf_f1": 0.5}
                         for d in ("d", "e", "toxic")])
    paired = pd.concat([
        _paired([("d", "last-token hidden", 0.3, 0.001), ("d", "TF-IDF", 0.4, 0.2)]),  # higher means, not called
        _paired([("e", "last-token hidden", 0.3, 0.001), ("e", "TF-IDF", -0.1, 0.01)]),
        _paired([("toxic", "last-token hidden", -0.3, 0.001), ("toxic", "TF-IDF", 0.1, 0.01)]),  # one model's...
        _paired([("toxic", "last-token hidden", 0.3, 0.001), ("toxic", "TF-IDF", 0.4, 0.001)], scope="dataset")])
    rows = paper.compare(best, cells, paired, None, "tiny setup", PAPER).set_index("#")
    assert rows.loc[3, "verdict"] == ("SAE above both (paired, Holm p < 0.05) on 1 of 3 datasets (toxic); below one "
                                      "or both on 1 (e); the rest tie")  # ...and over every model, which counts
    assert rows.loc[7, "verdict"].startswith("SAE above the last-token hidden state (paired, Holm p < 0.05) on 1 of 1")
    none = paper.compare(best, cells, paired.iloc[:0], None, "tiny setup", PAPER).set_index("#")
    assert none.loc[3, "this run"] == "no paired comparison with a number"


def test_a_dataset_with_nothing_promoted_keeps_its_row_and_no_number() -> None:
    baselines = {"m": {"tfidf": {"macro_f1": 0.7}, "majority": {"macro_f1": 0.3}}}
    scores = {"macro_f1": 0.9, "macro_f1_low": 0.8, "macro_f1_high": 0.95, "resamples": 3}
    promotion = {"d": {"candidate": {"model": "m", "cell": "c", **scores}, "hidden_baseline": {"cell": None},
                       "other_baselines": baselines, "champion": 1, "decision": "promote"},
                 "e": {"candidate": None, "other_baselines": baselines, "champion": None,
                       "decision": "keep the champion: no SAE cell could be probed (4 skipped: empty)"}}
    best = report.best_config_table(promotion)
    assert best["decision"].tolist() == ["promote", promotion["e"]["decision"]]
    assert best["macro_f1"].isna().tolist() == [False, True]
    cells, paired = report.cells_frame(_probes({"a": _cell(0.9, 0.9)})), pd.DataFrame(columns=comparisons.COLUMNS)
    rows = paper.compare(best, cells, paired, None, "tiny setup", PAPER).set_index("#")
    assert rows.loc[1, "verdict"] == "1 of 1 datasets above 0.8 (below: none)"  # e has no number, not a pass


def test_the_profile_sentence_names_every_model_layer_width_and_task() -> None:
    assert PAPER.sentence() == ("profiles/paper.yaml holds models g2 (SAE layers 5, 12; widths 16k); datasets "
                                "jailbreak, toxicity_en; behaviour tasks pubmed_qa; cross-lingual tasks toxicity "
                                "(en, es).")


def test_figures_are_inline_svg_and_byte_stable() -> None:
    table = pd.DataFrame({"source": ["a", "a", "b"], "target": ["a", "b", "a"], "macro_f1": [0.9, None, 0.5],
                          "macro_f1_low": [0.8, None, 0.4], "macro_f1_high": [1.0, None, 0.6]})
    first = figures.heatmap(table, "source", "target", "t")
    assert first.startswith("<svg") and "skipped" in first and "[0.40, 0.60]" in first
    assert figures.heatmap(table, "source", "target", "t") == first  # no date, fixed ids: DVC sees no change


def test_the_paired_difference_plot_is_inline_svg_and_byte_stable() -> None:
    table = pd.DataFrame({"dataset": ["d", "d"], "model": ["m", "m"], "comparison": ["TF-IDF", "best dense"],
                          "difference": [0.1, -0.02], "low": [0.05, -0.08], "high": [0.15, 0.04],
                          "p_holm": [0.01, 0.6]})
    first = figures.differences(table, ["model", "comparison"], "t", "SAE minus the other", 0.05)
    assert first.startswith("<svg") and "TF-IDF" in first
    assert figures.differences(table, ["model", "comparison"], "t", "SAE minus the other", 0.05) == first
    assert figures.differences(table, ["model", "comparison"], "t", "SAE minus the other", 0.001) != first


def test_the_relied_on_section_says_which_latents_the_shortcut_audit_flags_and_how_much_weight_they_carry() -> None:
    audit = {"latents": 40, "flagged": 2, "flagged_weight_share": 0.35,
             "weight_share_by_kind": {"class marker": 0.1, "number": 0.3},
             "evidence": {"cards": "l9__sae4k", "training_texts": 400},
             "flagged_latents": [{"latent": 7, "weight": 1.5, "label": "'8'", "findings": [
                 {"kind": "number", "reason": "fires on surface tokens"},
                 {"kind": "class marker", "reason": "on in 90% of class 'spam'"}]}]}
    promotion = {"spam": {"candidate": {"cell": "c"}, "challenger_version": 2, "champion": 2, "shortcut_audit": audit,
                          "influential_latents": [
                              {"latent": 7, "weight": 1.5, "label": "'8'", "density": 0.01,
                               "contexts": ["call «8»0062"], "shortcuts": ["number", "class marker"]},
                              {"latent": 3, "weight": -1.0, "shortcuts": []}]},
                 "toxic": {"candidate": {"cell": "t"}, "challenger_version": 1, "champion": None,
                           "influential_latents": [{"latent": 1, "weight": 0.5}]}}  # promoted before the audit
    relied = report.relied_on_table(promotion)
    assert relied["shortcut"].tolist() == ["number, class marker", "", ""]
    summary = report.shortcut_table(promotion)
    assert summary["dataset"].tolist() == ["spam"] and summary.loc[0, "champion"]
    assert summary.loc[0, "by kind"] == "number 30%, class marker 10%"
    assert summary.loc[0, "flagged_weight_share"] == 0.35
    assert summary.loc[0, "training texts"] == 400
    why = report.shortcut_latents_table(promotion)
    assert why["kind"].tolist() == ["number", "class marker"] and why["latent"].tolist() == [7, 7]


def test_an_empty_table_says_so_instead_of_rendering_an_empty_grid() -> None:
    sections = [Section("a", "Filled", tables=[("rows", pd.DataFrame({"x": [1]}))]),
                Section("b", "Empty", tables=[("no rows", pd.DataFrame({"x": []}))])]
    html, markdown = render(sections, "t")
    assert html.count("<table") == 1 and html.count(EMPTY) == 1
    assert markdown.count(EMPTY) == 1 and "| x |" in markdown.replace("|   x |", "| x |")


def test_the_transfer_claims_say_which_hold_with_their_intervals() -> None:
    def cell(source, target, f1, low, diff, p_holm, status="ok"):
        return {"task": "judge", "source": source, "target": target, "macro_f1": f1, "macro_f1_low": low,
                "macro_f1_high": f1 + 0.05, "majority_f1": 0.33, "minority_share": 0.5,
                "sae_minus_target_hidden": diff, "sae_minus_target_hidden_low": diff - 0.05,
                "sae_minus_target_hidden_high": diff + 0.05, "sae_minus_target_hidden_p_holm": p_holm,
                "status": status}

    cross = pd.DataFrame([cell("a", "b", 0.70, 0.65, -0.10, 0.001), cell("b", "a", 0.40, 0.30, 0.01, 0.8),
                          cell("a", "a", 0.90, 0.85, 0.0, 1.0)])  # a model's own behaviour is not transfer
    lingual = pd.DataFrame([{"task": "off", "model": "m", "layer": 9, "train_lang": a, "test_lang": b, "status": "ok",
                             "majority_f1": 0.33, "macro_f1": f1, "macro_f1_low": f1 - 0.04, "macro_f1_high": f1 + 0.04}
                            for a, b, f1 in (("en", "en", 0.9), ("en", "es", 0.6), ("es", "es", 0.8),
                                             ("es", "en", 0.5))])
    claims = report.transfer_claims(cross, lingual).set_index("claim")["holds here"].tolist()
    assert claims == ["partly", "partly", "holds", "holds (intervals apart)"]
    text = report.transfer_claims(cross, lingual)["this run"].tolist()
    assert "judge a→b 0.70 [0.65, 0.75] (majority 0.33, minority 50%)" in text[0] and "a→a" not in text[0]
    assert "SAE minus target hidden -0.10 [-0.15, -0.05], Holm p 0.001" in text[1]
    assert text[2] == "off m L9 en→es 0.60 [0.56, 0.64]"
    empty = report.transfer_claims(None, None)["holds here"].tolist()
    assert empty == ["not measured"] * 3
    assert "clears chance (macro F1 0.5) with its whole 95% interval in 1 of 2" in report.cross_model_reading(cross)


def cross_modal_results(sae_minus_vision: list[float], p_holm: list[float]) -> dict:
    def probe(cell: str, f1: float, val: float, **more: float) -> dict:
        return {"cell": cell, "macro_f1": f1, "macro_f1_low": f1 - 0.05, "macro_f1_high": f1 + 0.05,
                "val_macro_f1": val, **more}

    datasets = {}
    for (name, source), diff, p in zip((("flowers", "hf:nelorth/oxford-flowers"), ("digits", "sklearn:digits")),
                                       sae_minus_vision, p_holm, strict=True):
        paired = {"sae_minus_vision": diff, "sae_minus_vision_low": diff - 0.02, "sae_minus_vision_high": diff + 0.02,
                  "sae_minus_vision_p_holm": p, "sae_minus_residual": 0.0, "sae_minus_residual_low": -0.1,
                  "sae_minus_residual_high": 0.1, "sae_minus_residual_p_holm": 1.0}
        datasets[name] = {"source": source, "images": 100, "classes": 10, "vision": probe("vision__mean", 0.9, 0.9),
                          "residual": [probe("l12__hidden__mean", 0.8, 0.8)],
                          "sae": [probe("l12__sae16k__sum__raw", 0.7, 0.6, **paired),
                                  probe("l12__sae16k__sum__bin1", 0.9 + diff, 0.7, **paired)]}
    return {"paligemma": {"datasets": datasets}}


def test_the_cross_modal_reading_calls_the_best_sae_probe_against_the_vision_tower_beside_the_papers() -> None:
    below = cross_modal_results([-0.2, -0.3], [0.001, 0.01])
    table = report.cross_modal_table(below)
    assert table["best SAE"].tolist()[0].startswith("l12__sae16k__sum__bin1 0.70 [0.65, 0.75]")  # by validation
    assert table["paper's vision tower"].tolist()[0] == 0.98 and np.isnan(table["paper's vision tower"].tolist()[1])
    reading = report.cross_modal_reading(below)
    assert "below the vision tower's probe on 2 of 2 image sets and above it on 0" in reading
    assert "0.90 here against the paper's 0.98" in reading and "probe the vision tower" in reading
    tied = report.cross_modal_reading(cross_modal_results([-0.2, 0.01], [0.2, 0.6]))
    assert "on 0 of 2 image sets" in tied and "about as well as a probe on its vision tower" in tied
    assert len(report.cross_modal_cells(below)) == 2 * 4
    assert report.cross_modal_reading({}).startswith("No cross-modal run")
