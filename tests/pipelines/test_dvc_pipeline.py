"""The DVC pipeline end to end on a scratch repo: a tiny local model, two small file datasets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features.core.naming import codes_name, hidden_name
from features.stores.shards import read_csr, read_dense
from pipelines import paths
from tests.helpers import write_params
from tests.scratch import (
    ALWAYS,
    FEAST_STAGES,
    STAGES,
    TRACKING_STAGES,
    champions,
    dvc,
    open_gates,
    promised_champions,
    ran,
)


def test_repro_runs_every_stage_then_nothing(scratch: Path) -> None:
    assert ran(dvc(scratch, "repro")) == STAGES
    assert ran(dvc(scratch, "repro")) == ALWAYS
    assert json.loads(dvc(scratch, "status", "--json")) == {stage: ["always changed"] for stage in ALWAYS}


def test_outputs_line_up_with_the_prepared_rows(scratch: Path) -> None:
    dvc(scratch, "repro")
    prepared = pd.read_parquet(scratch / paths.prepared("alpha"))
    features = scratch / paths.features_dir("tiny", "alpha")
    codes, row_ids = read_csr(features, codes_name(2, "64", "top2"))
    hidden, _ = read_dense(features, hidden_name(1, "last"))
    assert row_ids.tolist() == prepared["text_id"].tolist()
    assert codes.shape == (100, 64) and hidden.shape == (100, 32)
    metrics = json.loads((scratch / paths.extract_metrics("tiny", "alpha")).read_text())
    assert set(metrics["sae_quality"]) == {"l1__sae64", "l2__sae64"} and metrics["texts"] == 100
    assert metrics["truncated"] == int((prepared["text"].str.split().str.len() > 11).sum())


def test_changing_one_datasets_max_rows_reruns_only_its_stages(scratch: Path) -> None:
    dvc(scratch, "repro")
    params = yaml.safe_load((scratch / "params.yaml").read_text())
    params["datasets"]["beta"]["max_rows"] = 110
    write_params(scratch, params)
    # a Feast view holds every dataset's texts, so the other dataset's probes read a changed view
    # and retrain too; its data, validation and extraction stay as they are. The SAE check (one per model, over
    # every dataset's tokens) and the latent cards read every dataset, so they run again. The judgement judges
    # beta's texts; the behaviour stage depends on the prepared folder as a whole (a DVC matrix cannot list each
    # task's datasets), so the multiple-choice task is labelled again too, and transfer follows.
    assert ran(dvc(scratch, "repro")) == {"prepare_data@beta", "validate_data@beta", "extract@tiny-beta",
                                          "check_sae@tiny", "latent_cards@tiny", *FEAST_STAGES, *ALWAYS,
                                          *TRACKING_STAGES, "lodo@tiny", "behaviour_labels@tiny-judge",
                                          "behaviour_labels@tiny-items", "transfer"}
    assert len(pd.read_parquet(scratch / paths.prepared("beta"))) == 110


def test_a_new_sae_training_setting_retrains_from_the_cache_without_rerunning_the_model(scratch: Path) -> None:
    dvc(scratch, "repro")
    manifest = json.loads((scratch / paths.activations_dir("tiny") / "manifest.json").read_text())
    assert manifest["layers"] == [1, 2] and manifest["splits"]["train"]["tokens"] >= 1200
    metrics = json.loads((scratch / paths.train_sae_metrics("tiny")).read_text())["saes"]
    assert {"fve", "dead_fraction", "dense_fraction", "loss_recovered"} <= set(metrics["l2__sae64"]["heldout"])
    params = yaml.safe_load((scratch / "params.yaml").read_text())
    edited = json.loads(json.dumps(params))
    edited["train_sae"]["lr"] = 0.002
    write_params(scratch, edited)
    try:
        changed = set(json.loads(dvc(scratch, "status", "--json"))) - ALWAYS
        assert "train_sae@tiny" in changed and "collect_activations@tiny" not in changed
    finally:
        write_params(scratch, params)


def test_editing_a_users_file_or_model_folder_reruns_what_reads_it(scratch: Path) -> None:
    dvc(scratch, "repro")
    data, weights = scratch / "alpha.csv", next((scratch / "tiny").glob("*.safetensors"))
    before = {path: path.read_bytes() for path in (data, weights)}
    try:
        data.write_text(data.read_text().replace("w1 ", "w2 ", 1))  # one edited text
        assert data.read_bytes() != before[data]
        weights.write_bytes(before[weights][:-1] + bytes([before[weights][-1] ^ 1]))  # one flipped bit
        dvc(scratch, "repro", "preflight")
        changed = set(json.loads(dvc(scratch, "status", "--json"))) - ALWAYS
        assert {"prepare_data@alpha", "prepare_model@tiny"} <= changed
        assert "prepare_data@beta" not in changed
    finally:
        for path, content in before.items():
            path.write_bytes(content)
        dvc(scratch, "repro", "preflight")
    assert set(json.loads(dvc(scratch, "status", "--json"))) == ALWAYS


def test_editing_a_module_reruns_exactly_the_stages_that_import_it(scratch: Path) -> None:
    dvc(scratch, "repro")
    module = scratch / "features" / "reporting" / "figures.py"  # the report and transfer import it
    before = module.read_bytes()
    try:
        module.write_bytes(before + b"\n# an edit\n")
        dvc(scratch, "repro", "preflight")
        changed = {stage.partition("@")[0] for stage in json.loads(dvc(scratch, "status", "--json"))} - ALWAYS
        assert changed == {"report", "transfer"}
    finally:
        module.write_bytes(before)
        dvc(scratch, "repro", "preflight")
    assert set(json.loads(dvc(scratch, "status", "--json"))) == ALWAYS


def test_probes_are_tracked_and_the_gate_reports_why(scratch: Path) -> None:
    dvc(scratch, "repro")
    results = json.loads((scratch / paths.probe_metrics("alpha", "tiny")).read_text())
    expected = {"tiny__l1__sae64__sum__raw", "tiny__l2__sae64__sum__bin1", "tiny__l1__hidden__last"}
    assert expected <= set(results["cells"])
    assert set(results["baselines"]) == {"tfidf", "tfidf_truncated", "majority"}
    assert len(results["training_curve"]) == 2
    # every number comes from the prediction rows: each fit on both resamples, test and validation texts
    rows = pd.read_parquet(scratch / paths.probe_predictions("alpha", "tiny"))
    curve = {f"{results['best_cell']}__curve{point['fraction']:g}" for point in results["training_curve"]}
    assert set(rows["fit"]) == set(results["cells"]) | set(results["baselines"]) | curve
    assert set(rows["resample"]) == {0, 1} and set(rows["split"]) == {"test", "val"}
    whole, own = (rows[rows["fit"] == fit].drop(columns="fit").reset_index(drop=True)
                  for fit in (f"{results['best_cell']}__curve1", results["best_cell"]))
    pd.testing.assert_frame_equal(whole, own)  # the curve on every training row is the best cell's own fit
    cost = json.loads((scratch / paths.stage_cost("train_probes", "tiny/alpha")).read_text())
    # every fit on both resamples, counted where it ran: the curve's whole-row point reuses the best cell's
    assert cost["work"] == {"texts": len(pd.read_parquet(scratch / paths.prepared("alpha"))),
                            "fits": 2 * (rows["fit"].nunique() - 1)}
    best = results["cells"][results["best_cell"]]
    assert best["resamples"] == 2 and best["macro_f1_low"] <= best["macro_f1"] <= best["macro_f1_high"]
    assert {"roc_auc", "recall_at_1fpr", "recall_at_5fpr", "logged_macro_f1_low"} <= set(best)
    empty = {"tiny__l1__sae64__sum__bin100000", "tiny__l2__sae64__sum__bin100000"}
    # the tiny model's layer-1 codes may also stay under 1.0 everywhere: skipped too, never probed
    assert empty <= set(results["skipped"]) and not set(results["skipped"]) & set(results["cells"])
    assert all("no latent is active" in cell["reason"] for cell in results["skipped"].values())
    assert {"retrieval", "fitting", "logging", "total"} <= set(results["seconds"])
    report = json.loads((scratch / paths.promotion_report("alpha")).read_text())
    assert report["challenger_version"] >= 1 and report["candidate"]["cell"] in results["cells"]
    assert set(report["skipped_cells"]) == set(results["skipped"])
    # random labels: no probe reaches the macro F1 gate, so champion stays unset, and the report says so
    assert report["promoted"] is False and report["champion"] is None
    assert any(not check["passed"] and check["name"] == "macro_f1" for check in report["checks"])
    assert (scratch / "mlflow.db").is_file()


def test_report_and_its_dvc_plots(scratch: Path) -> None:
    dvc(scratch, "repro")
    html = (scratch / "reports/index.html").read_text()
    assert 'id="sae-quality"' in html and "tiny__l2__sae64" in html and "Not produced yet" not in html
    shown = dvc(scratch, "plots", "show", "--json")  # declared in dvc.yaml, rendered by DVC's templates
    assert all(f'"plots/report/{name}.csv": [{{"type": "vega"' in shown
               for name in ("layer", "pooling_binarize", "width", "baselines", "training_curve"))


def test_a_marginal_design_sweeps_every_axis_value_and_the_report_answers_the_three_questions(scratch: Path) -> None:
    dvc(scratch, "repro")
    original = (scratch / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["train_probes"] |= {"poolings": ["sum", "top2"], "binarize": [None, 1.0, "q50"], "design": "marginal",
                               "center": {"width": "64", "pooling": "sum", "binarize": None}}
    write_params(scratch, params)
    try:
        assert "train_probes@tiny-alpha" in ran(dvc(scratch, "repro"))
        results = json.loads((scratch / paths.probe_metrics("alpha", "tiny")).read_text())
        assert results["design"] == {"design": "marginal",
                                     "center": {"layer": 1, "width": "64", "pooling": "sum", "binarize": None}}
        sae = [cell for cell in results["cells"].values() if cell["input"] == "sparse" and "variant" not in cell]
        # layers 1 and 2, then top2 pooling, then thresholds 1.0 and q50, each around the center: 5, not 2 x 2 x 3
        assert len(sae) == 5
        for axis, values in (("layer", {1, 2}), ("width", {"64"}), ("pooling", {"sum", "top2"}),
                             ("binarize", {None, 1.0, "q50"})):
            assert {cell[axis] for cell in sae} == values
        quantile = results["cells"]["tiny__l1__sae64__sum__binq50"]
        assert quantile["feature_service"] == "tiny__l1__sae64__sum__raw"
        answers = json.loads((scratch / paths.STUDY_METRICS).read_text())
        assert answers["design"] == "marginal"
        assert set(answers["tiny"]) == {"layer", "width", "pooling", "binarize"}
        assert set(answers["tiny"]["layer"]["per_dataset"]) == {"alpha", "beta"}
        html = (scratch / "reports/index.html").read_text()
        assert all(title in html for title in ("Which layer?", "Which SAE width and pooling?",
                                               "Binarize, and at which threshold?"))
    finally:
        (scratch / "params.yaml").write_text(original)


def test_transfer_stages_label_behaviour_and_fill_both_matrices(scratch: Path) -> None:
    dvc(scratch, "repro")
    labels = pd.read_parquet(scratch / paths.behaviour_labels("tiny", "items"))
    report = json.loads((scratch / paths.behaviour_metrics("tiny", "items")).read_text())
    assert report["items"] == len(labels) == 60 and report["accuracy"] == pytest.approx(labels["label"].mean())
    assert {"text_id", "label", "split", "option_logprobs", "answer"} <= set(labels.columns)
    judged = pd.read_parquet(scratch / paths.behaviour_labels("tiny", "judge"))
    judgement = json.loads((scratch / paths.behaviour_metrics("tiny", "judge")).read_text())
    # the texts of both datasets (each once), half of them above the target's median leaning: balanced
    prepared = pd.concat([pd.read_parquet(scratch / paths.prepared(d)) for d in ("alpha", "beta")])
    assert set(judged["text"]) <= set(prepared["text"]) and judgement["items"] == len(judged) == 150
    assert judgement["minority_share"] == pytest.approx(0.5) and set(judged["dataset"]) == {"alpha", "beta"}
    assert {"margin", "answered_positive", "source_text_id", "source_label"} <= set(judged.columns)
    cross_model = pd.read_csv(scratch / paths.transfer_table("cross_model"))
    assert cross_model[["task", "source", "target"]].values.tolist() == [["items", "tiny", "tiny"],
                                                                         ["judge", "tiny", "tiny"]]
    assert cross_model["sae_minus_target_hidden_p_holm"].notna().all()  # the target is a source: its own probe
    lingual = pd.read_csv(scratch / paths.transfer_table("cross_lingual"))
    assert len(lingual) == 4 and set(lingual["test_lang"]) == {"en", "es"} and (lingual["resamples"] == 2).all()
    predictions = pd.read_parquet(scratch / paths.transfer_predictions())
    assert cross_model["status"].tolist() == ["ok", "ok"] and cross_model["resamples"].tolist() == [2, 2]
    assert {f"{task}:tiny->tiny:{probe}" for task in ("items", "judge")
            for probe in ("sae", "hidden", "tfidf", "target_hidden", "majority")} <= set(predictions["fit"])
    assert {f"xl:tiny:L2:en->es:{probe}" for probe in ("sae", "hidden", "tfidf", "majority")} <= set(predictions["fit"])
    assert {"roc_auc", "recall_at_1fpr", "hidden_f1_low", "tfidf_f1_high"} <= set(lingual.columns)
    assert (scratch / "plots/transfer/cross_lingual.png").is_file()
    # the judged texts are prepared texts that extract featurized: read from the store, never a second forward
    cost = json.loads((scratch / "metrics/cost/transfer.json").read_text())
    diagonal = lingual[lingual["train_lang"] == lingual["test_lang"]]
    assert cost["work"]["texts"] == len(labels) + int((diagonal["n_train"] + diagonal["n_test"]).sum())
    forward = cost["forward"]["tiny"]  # the items' and languages' forward, its rate recorded
    assert forward["tokens"] > cost["work"]["tokens"] and forward["tokens_per_second"] > 0
    shown = dvc(scratch, "metrics", "show")
    assert "metrics/transfer/cross_lingual.json" in shown and "metrics/behaviour_labels/tiny/items.json" in shown


def test_lodo_holds_out_each_dataset_and_the_report_shows_the_gap(scratch: Path) -> None:
    dvc(scratch, "repro")
    results = json.loads((scratch / paths.lodo_metrics("tiny")).read_text())
    cells = pd.DataFrame(results["cells"])
    assert sorted(zip(cells["held_out"], cells["probe"], strict=True)) == [
        (held, probe) for held in ("alpha", "beta") for probe in ("hidden", "sae", "tfidf")]
    assert ((cells["in_split_low"] <= cells["in_split_f1"]) & (cells["in_split_f1"] <= cells["in_split_high"])).all()
    assert (cells["gap"] - (cells["in_split_f1"] - cells["held_out_f1"])).abs().max() < 1e-3
    predictions = pd.read_parquet(scratch / paths.lodo_predictions("tiny"))
    for held, rows in predictions.groupby("held_out"):
        test = pd.read_parquet(scratch / paths.prepared(held)).query("split == 'test'")
        assert set(rows["text_id"]) == set(test["text_id"])  # both probes scored on the held-out test texts
        assert set(rows["fit"]) == {f"{probe}:{side}" for probe in ("sae", "hidden", "tfidf")
                                    for side in ("own", "others")}
    assert 0 <= results["top_latent_overlap"]["across_folds_mean_jaccard"] <= 1
    assert "Leave one dataset out" in (scratch / paths.REPORT_DIR / "index.html").read_text()


def test_dag_lists_the_stages(scratch: Path) -> None:
    assert STAGES <= set(dvc(scratch, "stage", "list", "--name-only").split())


def test_a_lost_tracking_store_is_refilled_by_repro(scratch: Path) -> None:
    dvc(scratch, "repro")
    open_gates(scratch)
    assert ran(dvc(scratch, "repro")) == {*ALWAYS, "promote@alpha", "promote@beta", "report"}
    promised = promised_champions(scratch)
    assert None not in promised.values() and champions(scratch) == promised
    (scratch / "mlflow.db").unlink()  # the registry is gone; the artifacts stay
    assert ran(dvc(scratch, "repro")) == {*ALWAYS, *TRACKING_STAGES}
    assert champions(scratch) == promised_champions(scratch) == {"alpha": 1, "beta": 1}
    shutil.rmtree(scratch / "mlruns")  # the artifacts are gone; the registry stays
    assert ran(dvc(scratch, "repro")) == {*ALWAYS, *TRACKING_STAGES}
    assert champions(scratch) == promised_champions(scratch) == {"alpha": 2, "beta": 2}
    assert ran(dvc(scratch, "repro")) == ALWAYS


# Run in the scratch repo by a fresh process, as a user would: the champion from the registry, the test split's
# features from the Feast offline store, and the macro F1 the promotion gate judged.
REPLAY = """
import json, mlflow, pandas as pd
from sklearn.metrics import f1_score
from features.stores import tracking
from features.stores.feast.retrieval import historical_frame
from pipelines import paths
from pipelines.params import load_params
from pipelines.stores import feature_store
mlflow.set_tracking_uri("sqlite:///mlflow.db")
name = tracking.registered_name("alpha")
cell = tracking.logged_cell(name, tracking.get_alias_version(name, "champion"))
probe = mlflow.sklearn.load_model(f"models:/{name}@champion")
prepared = pd.read_parquet(paths.prepared("alpha"))
X, _ = historical_frame(feature_store(load_params().feast_apply), cell["feature_service"],
                        prepared[["text_id", "event_timestamp"]])
test = (prepared["split"] == "test").to_numpy()
report = json.loads(paths.promotion_report("alpha").read_text())
rows = pd.read_parquet(paths.probe_predictions("alpha", report["candidate"]["model"]))
rows = rows[(rows["fit"] == report["candidate"]["cell"]) & (rows["resample"] == 0) & (rows["split"] == "test")]
gated = rows.set_index("text_id").loc[prepared["text_id"][test], ["proba_0", "proba_1"]].to_numpy()
print(json.dumps({"replayed": f1_score(prepared["label"][test], probe.predict(X[test]), average="macro"),
                  "gated": [c["value"] for c in report["checks"] if c["name"] == "macro_f1"],
                  "largest_proba_gap": float(abs(probe.predict_proba(X[test]) - gated).max()),
                  "cell": cell["feature_service"], "candidate": report["candidate"]["cell"]}))
"""


def test_the_champion_reproduces_the_score_its_promotion_gated(scratch: Path) -> None:
    dvc(scratch, "repro")
    open_gates(scratch)
    dvc(scratch, "repro")
    proc = subprocess.run([sys.executable, "-c", REPLAY], cwd=scratch, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(scratch)})
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["cell"] == seen["candidate"] and seen["gated"] == [seen["replayed"]]
    assert seen["largest_proba_gap"] < 1e-6  # the registered model is the fit whose predictions were gated


def test_a_fresh_clone_ends_with_the_champions_its_promotion_reports_name(
        scratch: Path, tmp_path: Path) -> None:
    """What git holds of a run (code, params, dvc.lock, metrics, reports, the inputs), without data/ or MLflow:
    every stage reruns, the probes and promotions included, though the lock already matches their inputs."""
    open_gates(scratch)
    dvc(scratch, "repro")
    clone = tmp_path / "clone"
    ignore = shutil.ignore_patterns("data", "mlruns", "mlflow.db", "cache", "tmp", "__pycache__")
    shutil.copytree(scratch, clone, ignore=ignore)
    assert ran(dvc(clone, "repro")) == STAGES
    promised = promised_champions(clone)
    assert None not in promised.values() and champions(clone) == promised
