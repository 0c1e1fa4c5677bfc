"""The report stage on a fixture metrics tree: every section, numbers that match the inputs, clear errors."""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.errors import SaefsError
from features.reporting.paper import PAPER_NUMBERS
from features.sources.models import MANIFEST, ModelManifest
from pipelines import paths, report
from pipelines.profile import load_profile
from tests.helpers import REPO, embedded_params, planted_predictions, write_params

DATASETS, MODELS = ("alpha", "beta"), ("m1", "m2")
LAYERS = {"m1": [3, 6], "m2": [4]}
SECTIONS = ["setup", "best", "paper", "comparisons", "layers", "pooling", "width", "baselines", "curve", "cross-model",
            "cross-lingual", "lodo", "sae-quality", "cost"]


def _cell(f1: float, val: float, *, layer: int, width: str, pooling: str, binarize: float | None,
          dense: bool = False, spread: float = 0.01) -> dict:
    return {"layer": layer, "width": width, "pooling": pooling, "binarize": binarize, "resamples": 3, "n_test": 40,
            "input": "dense" if dense else "sparse", "macro_f1": f1, "macro_f1_low": f1 - spread,
            "macro_f1_high": f1 + spread, "val_macro_f1": val, "model_uri": "models:/m-x"}


def probe_results(dataset: str, model: str, offset: float) -> dict:
    """What train_probes writes for one (dataset, model): SAE cells, hidden cells, extras, baselines, curve."""
    cells = {}
    for i, layer in enumerate(LAYERS[model]):
        for pooling in ("sum", "top2"):
            for binarize in (None, 1.0):
                f1 = 0.6 + offset + 0.05 * i + (0.02 if binarize else 0) + (0.01 if pooling == "sum" else 0)
                name = f"{model}__l{layer}__sae64__{pooling}__{'bin1' if binarize else 'raw'}"
                cells[name] = _cell(round(f1, 4), round(f1 - 0.01, 4), layer=layer, width="64", pooling=pooling,
                                    binarize=binarize)
        cells[f"{model}__l{layer}__hidden__last"] = _cell(0.7 + offset, 0.69 + offset, layer=layer, width="hidden",
                                                          pooling="last", binarize=None, dense=True)
    best = max((k for k, c in cells.items() if c["input"] == "sparse"), key=lambda k: cells[k]["val_macro_f1"])
    for suffix, variant in (("tree", "tree"), ("select16", "select")):
        cells[f"{best}__{suffix}"] = cells[best] | {"macro_f1": 0.5, "macro_f1_low": 0.49, "macro_f1_high": 0.51,
                                                    "variant": variant}
    point = {"macro_f1": 0.0, "accuracy": 0.0, "n_test": 40, "val_macro_f1": 0.0, "resamples": 3}
    baseline = {"macro_f1": 0.9, "macro_f1_low": 0.85, "macro_f1_high": 0.95, "resamples": 3, "roc_auc": 0.93}
    return {"dataset": dataset, "model": model, "cells": cells, "best_cell": best,
            "baselines": {"tfidf": baseline, "tfidf_truncated": baseline | {"macro_f1": 0.8},
                          "majority": baseline | {"macro_f1": 0.33, "macro_f1_low": 0.33, "macro_f1_high": 0.33}},
            "training_curve": [point | {"fraction": f, "train_rows": int(160 * f), "macro_f1": 0.5 + 0.2 * f}
                               for f in (0.5, 1.0)]}


def promotion(dataset: str, results: dict[str, dict]) -> dict:
    """promote's report: the best SAE and hidden cells by validation over the models."""
    def best(kind: str) -> dict:
        cells = {k: c | {"model": m} for m, r in results.items() for k, c in r["cells"].items() if c["input"] == kind}
        name = max(cells, key=lambda k: cells[k]["val_macro_f1"])
        return {"cell": name, **cells[name]}

    return {"dataset": dataset, "candidate": best("sparse"), "hidden_baseline": best("dense"),
            "other_baselines": {m: r["baselines"] for m, r in results.items()}, "champion": None,
            "decision": "keep the champion: FAIL macro_f1"}


def write_transfer(root: Path, added: bool = True) -> None:
    """The transfer stage's two CSVs (one skipped cell each): the columns the report needs, and (`added`) the
    AUROC, recall at FPR and resample columns the stage now writes beside them."""
    more = {"roc_auc": 0.7, "roc_auc_low": 0.65, "roc_auc_high": 0.75, "recall_at_1fpr": 0.3, "recall_at_5fpr": 0.5,
            "resamples": 3, "not_converged": 0} if added else {}
    cross = [{"task": "phys_tf", "source": s, "target": t, "macro_f1": 0.61, "macro_f1_low": 0.58,
              "macro_f1_high": 0.64, "hidden_f1": 0.66, "hidden_f1_low": 0.6, "hidden_f1_high": 0.7, "tfidf_f1": 0.55,
              "tfidf_f1_low": 0.5, "tfidf_f1_high": 0.6, "target_hidden_f1": 0.71, "target_hidden_f1_low": 0.68,
              "target_hidden_f1_high": 0.74, "majority_f1": 0.33, "sae_minus_tfidf": 0.06, "sae_minus_tfidf_low": 0.01,
              "sae_minus_tfidf_high": 0.11, "sae_minus_tfidf_p_holm": 0.04, "sae_minus_target_hidden": -0.1,
              "sae_minus_target_hidden_low": -0.14, "sae_minus_target_hidden_high": -0.06,
              "sae_minus_target_hidden_p_holm": 0.001, "minority_share": 0.5, "n_train": 160, "n_test": 40,
              "status": "ok", **more} for s in MODELS for t in MODELS]
    cross[-1] |= {"macro_f1": None, "macro_f1_low": None, "macro_f1_high": None,
                  "status": "skipped: target answered every item right"}
    lingual = [{"task": "offensive", "model": "m1", "layer": 1, "train_lang": a, "test_lang": b, "macro_f1": 0.777,
                "macro_f1_low": 0.75, "macro_f1_high": 0.8, "hidden_f1": 0.8 if a == b else 0.5, "hidden_f1_low": 0.3,
                "hidden_f1_high": 0.9, "tfidf_f1": 0.9 if a == b else 0.34, "tfidf_f1_low": 0.3, "tfidf_f1_high": 0.95,
                "majority_f1": 0.33, "n_train": 100, "n_test": 30, "status": "ok", **more}
               for a in ("en", "es") for b in ("en", "es")]
    for kind, rows in (("cross_model", cross), ("cross_lingual", lingual)):
        path = root / paths.transfer_table(kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(path, index=False)


def write_model_manifests(models: tuple[str, ...]) -> None:
    for model in models:  # what prepare_model writes: the report reads each model's depth
        manifest = ModelManifest(f"path:{model}", "path", ".", None, "Gemma3ForCausalLM", 18, 64, 100)
        paths.model_dir(model).mkdir(parents=True, exist_ok=True)
        (paths.model_dir(model) / MANIFEST).write_text(json.dumps(asdict(manifest)))


def write_metrics_tree(root: Path) -> None:
    y = np.arange(160) % 2
    write_model_manifests(MODELS)
    for i, dataset in enumerate(DATASETS):
        results = {m: probe_results(dataset, m, 0.2 * i + 0.03 * j) for j, m in enumerate(MODELS)}
        paths.prepared(dataset).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text_id": [f"t{k}" for k in range(len(y))], "label": y}).to_parquet(paths.prepared(dataset))
        for model, result in results.items():
            # each fit right on the share of texts its test macro F1 says, on the same 3 resamples
            shares = {name: min(0.99, c["macro_f1"]) for name, c in {**result["cells"], **result["baselines"]}.items()}
            paths.probe_predictions(dataset, model).parent.mkdir(parents=True, exist_ok=True)
            planted_predictions(shares, y, resamples=3, seed=i).to_parquet(paths.probe_predictions(dataset, model))
            for path, obj in ((paths.probe_metrics(dataset, model), result),
                              (paths.extract_metrics(model, dataset),
                               {"sae_quality": {f"l{layer}__sae64": {"fve": 0.7 - 0.1 * i, "l0": 4.0,
                                                                     "dead_fraction": 0.2, "tokens": 900}
                                                for layer in LAYERS[model]}})):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(obj))
        paths.promotion_report(dataset).parent.mkdir(parents=True, exist_ok=True)
        paths.promotion_report(dataset).write_text(json.dumps(promotion(dataset, results)))
    for stage, item, wall in (("extract", "m1/alpha", 40.0), ("extract", "m2/alpha", 20.0), ("promote", "alpha", 9.0),
                              ("report", None, 5.0)):
        rate = {"tokens_per_second": 333.0, "fraction_of_matmul_limit": 0.81} if stage == "extract" else None
        paths.stage_cost(stage, item).parent.mkdir(parents=True, exist_ok=True)
        paths.stage_cost(stage, item).write_text(json.dumps({
            "wall_seconds": wall, "startup_seconds": 3.0, "cpu_seconds": 2 * wall, "peak_rss_mb": 900,
            "load_average": [1.0, 2.0], "work": {"tokens": 1000}, "forward": {"extract": rate} if rate else {},
            "machine": f"AMD EPYC cpu family {25 if stage == 'extract' else 26} | 2 cpus"}))
    for model in MODELS:  # leave one dataset out: SAE probes lose 0.1 on a held-out dataset, TF-IDF 0.3
        cells = [{"held_out": d, "probe": probe, "in_split_f1": 0.8, "in_split_low": 0.7, "in_split_high": 0.9,
                  "held_out_f1": 0.8 - loss, "held_out_low": 0.6 - loss, "held_out_high": 0.9 - loss, "gap": loss,
                  "gap_low": loss - 0.05, "gap_high": loss + 0.05, "gap_p": 0.001, "gap_p_holm": 0.004,
                  "n_test": 40, "n_train_others": 120, "n_train_own": 120}
                 for d in DATASETS for probe, loss in (("sae", 0.1), ("hidden", 0.2), ("tfidf", 0.3))]
        paths.lodo_metrics(model).parent.mkdir(parents=True, exist_ok=True)
        paths.lodo_metrics(model).write_text(json.dumps({"cells": cells, "top_latent_overlap": {
            "across_folds_mean_jaccard": 0.25, "own_vs_others_jaccard": {d: 0.5 for d in DATASETS}}}))
    for model in MODELS:
        paths.train_sae_metrics(model).parent.mkdir(parents=True, exist_ok=True)
        paths.train_sae_metrics(model).write_text(json.dumps(
            {"source": "train", "saes": {f"l{layer}__sae64": {
                "architecture": "topk", "training_tokens": 5000, "seconds": 3.0, "d_sae": 64,
                "training": {"dead_window_steps": 10, "steps": 40, "lr_decay_from_step": 32,
                             "dead_fraction_at_end": 0.0, "dead_fraction_peak": 0.25,
                             "dead_history": {"step": [0, 20, 39], "dead": [0, 16, 0]}},
                "heldout": {"fve": 0.8, "l0": 8.0, "dead_fraction": 0.02 * layer, "dense_fraction": 0.0,
                            "loss_recovered": 0.93, "loss_clean": 3.0, "loss_spliced": 3.2, "loss_ablated": 6.0,
                            "tokens": 900}} for layer in LAYERS[model]}}))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    datasets = {d: {"source": f"file:{d}.csv", "labels": [0, 1]} for d in DATASETS}
    write_params(tmp_path, embedded_params(
        models={m: {"source": f"path:{m}"} for m in MODELS}, datasets=datasets,
        sae={m: {"layers": LAYERS[m], "widths": ["64"], "source": "train"} for m in MODELS}))
    write_metrics_tree(tmp_path)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")  # the paper comparison reads profiles/paper.yaml
    return tmp_path


def _text(path: Path) -> str:
    return re.sub(r"\s+", " ", path.read_text())


def test_report_has_every_section_and_the_inputs_numbers(project: Path) -> None:
    write_transfer(project)
    assert report.main([]) == 0
    html, md = _text(project / "reports/index.html"), _text(project / "reports/index.md")
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert "Not produced yet" not in html
    candidate = json.loads(paths.promotion_report("beta").read_text())["candidate"]
    interval = f"{candidate['macro_f1']:.3f} [{candidate['macro_f1_low']:.3f}, {candidate['macro_f1_high']:.3f}]"
    assert candidate["cell"] in html and interval in html and interval in md
    assert "0.777 [0.750, 0.800]" in html and "0.777 [0.750, 0.800]" in md  # a cross-lingual cell, as the CSV has it
    assert "[0.75, 0.80]" in html  # and its heatmap annotation
    # the sentence a reader acts on: zero-shot against in-language, per probe, and what to do
    assert ("SAE 0.78 against 0.78 in-language (2/2 zero-shot cells above chance, 0.5); hidden-state 0.50 "
            "against 0.80 in-language (0/2" in md and "so a SAE probe trained on one language can screen" in md)
    assert "skipped: target answered every item right" in html and "skipped" in md
    assert html.count("<svg") == 10 + 1 + 1 + 1  # ten result figures, a heatmap per transfer task, cost
    assert not re.search(r"<script|<link|src=\"http|@import", html)  # self-contained: opens offline
    assert "1 of 2 datasets above 0.8 (below: alpha)" in md  # the paper's claim 1, counted on the inputs
    # the SAE section: each SAE's held-out corpus figures, as train_sae measured them
    assert "Per SAE on held-out corpus tokens" in md and "0.93" in md.split("held-out corpus tokens")[-1]
    assert "window over training: the latents that AuxK sees" in html  # train_sae's dead history, drawn
    # the cost section: every stage instance but the report's own (still running), extract first by wall time
    assert "Total: 69 s wall, of which 9 s start-up, over 3 stage instances." in md
    assert "extract 333" in md and "extract 81%" in md and "report" not in md.split("## Cost of this run")[1]
    # DVC keeps a skipped stage's record from an earlier run: the section says when records come from other machines
    assert ("Measured on several machines, whose times do not compare: AMD EPYC cpu family 25 | 2 cpus (2 "
            "instances); AMD EPYC cpu family 26 | 2 cpus (1 instance).") in md
    # leave one dataset out: every (model, held-out dataset, probe) row, its gap with its interval
    lodo = md.split("## Leave one dataset out")[1].split("## ")[0]
    assert lodo.count("| +0.300 [+0.250, +0.350] |") == len(MODELS) * len(DATASETS)
    assert "0.700 [0.500, 0.800]" in lodo and "| 0.25 " in lodo


def test_without_transfer_csvs_it_renders_says_so_and_writes_plot_tables(project: Path) -> None:
    assert report.main([]) == 0
    html = _text(project / "reports/index.html")
    assert "Not produced yet: plots/transfer/cross_model.csv" in html
    assert "Not produced yet: plots/transfer/cross_lingual.csv" in html
    layer = pd.read_csv(project / paths.report_plot("layer"))
    results = json.loads(paths.probe_metrics("alpha", "m1").read_text())
    row = layer[(layer["dataset"] == "alpha") & (layer["model"] == "m1") & (layer["features"] == "sae")
                & (layer["layer"] == 6)].iloc[0]
    assert row["macro_f1"] == results["cells"][row["cell"]]["macro_f1"] and row["label"] == "alpha m1 sae L6"
    assert row["cell"] == "m1__l6__sae64__sum__bin1"  # the best by validation at layer 6
    for name in ("layer", "pooling_binarize", "width", "baselines", "training_curve"):  # dvc.yaml's x and y
        assert {"macro_f1", "label"} <= set(pd.read_csv(project / paths.report_plot(name)).columns)


def test_a_missing_metrics_file_names_it_and_its_stage(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths.extract_metrics("m2", "beta").unlink()
    with pytest.raises(SaefsError, match=r"metrics/extract/m2/beta.json not found: stage `extract@m2-beta`"):
        report.run()
    with caplog.at_level(logging.ERROR, logger="saefs.report"):
        assert report.main([]) == 2
    assert "dvc repro extract@m2-beta" in caplog.text
    assert not (project / "reports/index.html").exists()


def test_transfer_csvs_with_or_without_the_added_columns_render(project: Path) -> None:
    for added in (False, True):
        write_transfer(project, added)
        assert report.main([]) == 0
        md = _text(project / "reports/index.md")
        assert "| offensive | m1 | 1 | en | es | 0.777 [0.750, 0.800] |" in md and ("roc_auc_low" in md) == added
        assert "| 0.500 [0.300, 0.900] | 0.340 [0.300, 0.950] |" in md  # hidden and TF-IDF, each with its interval


def test_a_transfer_csv_off_contract_is_refused(project: Path) -> None:
    write_transfer(project)
    path = paths.transfer_table("cross_model")
    pd.read_csv(path).drop(columns=["hidden_f1"]).to_csv(path, index=False)
    with pytest.raises(SaefsError, match=r"plots/transfer/cross_model.csv lacks columns \['hidden_f1'\]"):
        report.run()


def test_the_report_makes_paired_comparisons_from_the_predictions_and_no_seed_intervals(project: Path) -> None:
    write_transfer(project)
    assert report.main([]) == 0
    md = _text(project / "reports/index.md")
    for stale in ("separated", "Student-t", "CV shuffles"):
        assert stale not in md
    assert md.count("seed") == md.count("SAE training seed") == 1  # provenance of the SAEs, no interval over seeds
    assert "corrected resampled t over repeated stratified splits" in md and "Holm" in md
    for comparison in ("best dense", "last-token hidden", "TF-IDF"):
        assert f"| {comparison} " in md
    assert "| hidden last " in md and "| tfidf_truncated " in md and "recall_at_1fpr" in md
    assert "reads the first 64 tokens" in md  # extract.max_tokens of the embedded params
    assert "offensive: labels not_offensive/offensive; en: sae_probes:107_hate_offensive, es: fortune:es" in md


def test_every_sentence_about_the_paper_profile_matches_its_file(project: Path) -> None:
    assert report.main([]) == 0
    md = _text(project / "reports/index.md")
    paper = load_profile("paper")  # the file itself, not what the report code believes
    images = list(paper.get("cross_modal", {}).get("datasets", {}))
    names = {*paper["datasets"], *paper["behaviour_labels"]["tasks"], *paper["transfer"]["cross_lingual"], *images}
    models = ", ".join(f"{m} (SAE layers {', '.join(map(str, s['layers']))}; widths {', '.join(s['widths'])})"
                       for m, s in paper["sae"].items())
    lingual = ", ".join(f"{task} ({', '.join(spec['languages'])})"
                        for task, spec in paper["transfer"]["cross_lingual"].items())
    sets = f"; image sets {', '.join(images)}" if images else ""
    assert (f"profiles/paper.yaml holds models {models}; datasets {', '.join(paper['datasets'])}; behaviour tasks "
            f"{', '.join(paper['behaviour_labels']['tasks'])}; cross-lingual tasks {lingual}{sets}.") in md
    claimed = re.findall(r"the paper profile has ((?:(?:dataset|behaviour task|cross-lingual task|image set) [\w-]+"
                         r"(?:, )?)+)", md)
    held = {item.split(" ")[-1] for sentence in claimed for item in sentence.split(", ")}
    assert held and held <= names
    for number in PAPER_NUMBERS:  # a claim whose data the file lacks says so
        if number.about and not any(word in name.lower() for word in number.about for name in names):
            assert f"| {number.number} " in md and "neither this profile nor the paper profile has its data" in md


def test_a_prediction_file_about_other_texts_is_refused_by_name(project: Path) -> None:
    path = paths.probe_predictions("alpha", "m2")
    frame = pd.read_parquet(path)
    frame.assign(text_id=frame["text_id"] + "-old").to_parquet(path)
    with pytest.raises(SaefsError, match=r"train_probes/alpha/m2.parquet \(written by `dvc repro "
                                         r"train_probes@m2-alpha`\): .* not in the prepared data: the file is stale"):
        report.run()
    frame.to_parquet(path)
    prepared = pd.read_parquet(paths.prepared("alpha"))
    grown = pd.concat([prepared, pd.DataFrame({"text_id": ["new"], "label": [1]})])
    for changed in (grown, prepared.assign(label=np.where(prepared["text_id"] == "t5", 0, prepared["label"]))):
        changed.to_parquet(paths.prepared("alpha"))
        with pytest.raises(SaefsError, match=r"m1.parquet \(written by `dvc repro train_probes@m1-alpha`\): "
                                             r"[01] prepared texts have no prediction and [01] another label .*: the "
                                             r"file is stale; rerun `dvc repro train_probes@m1-alpha`"):
            report.run()
    prepared.to_parquet(paths.prepared("alpha"))
    path.unlink()
    with pytest.raises(SaefsError, match=r"m2.parquet not found: stage `train_probes@m2-alpha`"):
        report.run()


def test_the_cross_modal_section_reads_its_metrics_where_the_profile_has_a_run(project: Path) -> None:
    import yaml

    from tests.features.test_report import cross_modal_results

    write_transfer(project)
    assert report.main([]) == 0
    assert "Not run in this profile" in _text(project / "reports/index.md").split("## Cross-modal")[1]
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["cross_modal"] = {"models": {"vlm": {"source": "path:vlm", "sae": "path:saes/{layer}", "layers": [12],
                                             "widths": ["16k"]}},
                          "datasets": {"flowers": {"source": "hf:nelorth/oxford-flowers"}}, "poolings": ["sum"],
                          "binarize": [None, 1.0], "C_grid": [1.0], "cv_folds": 2, "resamples": 2, "batch_size": 4,
                          "device": "cpu", "n_jobs": 1}
    write_params(project, raw)
    paths.cross_modal_metrics("vlm").parent.mkdir(parents=True, exist_ok=True)
    results = cross_modal_results([-0.2, -0.3], [0.001, 0.01])["paligemma"]
    paths.cross_modal_metrics("vlm").write_text(json.dumps(results))
    assert report.main([]) == 0
    section = _text(project / "reports/index.md").split("## Cross-modal")[1].split("## ")[0]
    assert "below the vision tower's probe on 2 of 2 image sets" in section
    assert "0.90 here against the paper's 0.98" in section and "l12__sae16k__sum__bin1 0.70 [0.65, 0.75]" in section
    assert '<section id="cross-modal">' in _text(project / "reports/index.html")
    paper_row = _text(project / "reports/index.md").split("| 13 ")[1].split("| 14 ")[0]
    assert "flowers 0.900 (best SAE 0.700)" in paper_row and "below the vision tower" in paper_row


def test_the_setup_names_each_widths_training_settings_where_they_differ(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.params import parse_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").symlink_to(REPO / "profiles")  # the setup compares with the paper profile
    write_model_manifests(("gemma3_270m", "smollm2_135m_it"))
    raw = embedded_params()
    raw["sae"]["gemma3_270m"]["widths"] = ["4k", "16k"]
    raw["train_sae"] |= {"training_samples": 600_000, "batch_size": 1024,
                         "by_width": {"4k": {"training_samples": 1_000_000}, "16k": {"batch_size": 256}}}
    saes = report.describe(parse_params(raw))["saes"]
    assert saes["gemma3_270m"]["training_samples"] == "4k: 1,000,000, 16k: 600,000"
    assert saes["gemma3_270m"]["batch_size"] == "4k: 1,024, 16k: 256"
    assert saes["smollm2_135m_it"]["training_samples"] == 1_000_000  # its one width, 4k
    assert saes["smollm2_135m_it"]["batch_size"] == 1024
    raw["sae"]["gemma3_270m"]["training"] = {"l5__sae16k": {"lr": 0.004, "decoder_init": "data"}}
    raw["train_sae"]["lr"] = 0.002
    saes = report.describe(parse_params(raw))["saes"]
    assert saes["gemma3_270m"]["lr"] == "0.002 (l5__sae16k: 0.004)"
    assert saes["gemma3_270m"]["decoder_init"] == "kaiming (l5__sae16k: data)"
    assert saes["smollm2_135m_it"]["decoder_init"] == "kaiming"
    assert saes["gemma3_270m"]["batch_size"] == "4k: 1,024, 16k: 256"
    assert saes["smollm2_135m_it"]["lr"] == 0.002
