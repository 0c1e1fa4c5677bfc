"""The promote stage: best probe by validation -> challenger; champion only past the gates; rollback CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from features.core.probes import influential_latents, make_probe
from features.errors import SaefsError
from features.stores import tracking
from features.stores.cards import write_cards
from pipelines import paths, promote
from tests.features.test_probes import FAST, WIDTH, split, synthetic_frame
from tests.helpers import embedded_params, write_params

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    params = embedded_params()
    store = f"sqlite:///{tmp_path}/mlflow.db"  # absolute: MLflow caches stores by URI, across tests
    # the comparison with the champion in office has tests of its own below
    params["promote"] = {"min_macro_f1": 0.8, "max_drop_vs_hidden": 0.02, "tracking_uri": store,
                         "transfer_gates": {}, "non_inferiority_margin": None}
    write_params(tmp_path, params)
    tracking.configure(store)
    tracking.experiment("saefs/spam")
    train, y_train, test, _ = split(*synthetic_frame())
    with tracking.start_parent("probes"):
        uri = tracking.log_probe(make_probe("logreg", width=WIDTH, **FAST).fit(train, y_train), train.head(3)).model_uri
    yield params, uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def write_results(params: dict, uri: str, sae_f1: float, hidden_f1: float, sae_mean_f1: float = 0.5) -> None:
    """What train_probes leaves for every model of the profile: one SAE cell and one hidden-state cell, each with
    the logged (registered) fit's macro F1 and, apart, the mean over resamples (`sae_mean_f1`, never gated)."""
    for model in params["sae"]:
        cells = {f"{model}__sae": {"input": "sparse", "macro_f1": sae_mean_f1, "logged_macro_f1": sae_f1,
                                   "val_macro_f1": 0.9, "model_uri": uri, "layer": 1, "width": str(WIDTH),
                                   "pooling": "sum"},
                 f"{model}__hidden": {"input": "dense", "macro_f1": hidden_f1, "logged_macro_f1": hidden_f1,
                                      "val_macro_f1": 0.8, "model_uri": uri}}
        path = paths.probe_metrics("spam", model)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cells": cells, "baselines": {"majority": {"macro_f1": 0.33}}}))


def test_a_probe_past_the_gates_becomes_champion_and_a_worse_one_does_not(project) -> None:
    params, uri = project
    write_results(params, uri, sae_f1=0.93, hidden_f1=0.92)
    first = promote.run("spam")
    assert first["promoted"] and first["champion"] == first["challenger_version"] == 1
    assert first["mlflow_validation"]["passed"]

    write_results(params, uri, sae_f1=0.85, hidden_f1=0.92)  # trails the hidden-state probe by 0.07
    second = promote.run("spam")
    assert second["challenger_version"] == 2 and second["champion"] == 1 and not second["promoted"]
    failed = [c["name"] for c in second["checks"] if not c["passed"]]
    assert failed == ["macro_f1_minus_hidden"]
    assert json.loads(paths.promotion_report("spam").read_text())["decision"].startswith("keep the champion (v1)")


def test_the_gate_judges_the_registered_fit_not_the_mean_over_resamples(project) -> None:
    params, uri = project
    write_results(params, uri, sae_f1=0.7, hidden_f1=0.7, sae_mean_f1=0.95)  # the mean would pass, the model not
    report = promote.run("spam")
    assert not report["promoted"] and report["champion"] is None
    assert [c["value"] for c in report["checks"] if c["name"] == "macro_f1"] == [0.7]
    # with no champion there is none to keep: the report says so
    assert report["decision"].startswith("no champion yet: FAIL macro_f1")


def test_promote_leaves_a_receipt_of_what_it_registered(project) -> None:
    params, uri = project
    write_results(params, uri, sae_f1=0.93, hidden_f1=0.92)
    report = promote.run("spam")
    receipt = json.loads(paths.promotion_receipt("spam").read_text())
    assert receipt == {"tracking_store": params["promote"]["tracking_uri"], "registered_model": "saefs-spam",
                       "version": report["challenger_version"], "champion": report["champion"]}


def test_rollback_moves_champion_to_the_version_before(project) -> None:
    params, uri = project
    for _ in range(2):
        write_results(params, uri, sae_f1=0.95, hidden_f1=0.9)
        promote.run("spam")
    assert tracking.get_alias_version("saefs-spam", tracking.CHAMPION) == 2
    assert promote.main(["spam", "--rollback"]) == 0
    assert tracking.get_alias_version("saefs-spam", tracking.CHAMPION) == 1



def test_thresholds_that_can_never_pass_are_reported_and_no_alias_moves(project) -> None:
    params, uri = project
    write_results(params, uri, sae_f1=0.95, hidden_f1=0.9)
    assert promote.run("spam")["champion"] == 1
    params["promote"]["min_macro_f1"] = 1.2
    write_params(Path.cwd(), params)
    report = promote.run("spam")
    assert report["champion"] == 1 and report["challenger_version"] == 2 and not report["promoted"]
    assert "min_macro_f1=1.2 can never pass" in report["decision"]
    assert not report["mlflow_validation"]["passed"]


def test_a_dataset_whose_cells_were_all_skipped_registers_nothing(project) -> None:
    params, _ = project
    reason = "no latent is active in any of its 80 training texts"
    for model in params["sae"]:
        path = paths.probe_metrics("spam", model)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cells": {}, "baselines": {},
                                    "skipped": {f"{model}__bin9": {"input": "sparse", "reason": reason}}}))
    report = promote.run("spam")
    assert report["challenger_version"] is None and report["champion"] is None and not report["promoted"]
    assert "no SAE cell could be probed" in report["decision"] and reason in report["decision"]
    assert len(report["skipped_cells"]) == len(params["sae"])
    assert mlflow.MlflowClient().search_registered_models() == []
    assert json.loads(paths.promotion_report("spam").read_text())["decision"] == report["decision"]


N_TEST = 400


def write_predictions(params: dict, y_pred: np.ndarray) -> np.ndarray:
    """Prepared texts (N_TEST of them test) and each model's `<model>__sae` test predictions; returns the labels."""
    y = np.arange(N_TEST) % 2
    ids = [f"spam-{i}" for i in range(N_TEST)]
    prepared = pd.DataFrame({"text_id": ids, "label": y, "split": "test",
                             "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")})
    paths.prepared("spam").parent.mkdir(parents=True, exist_ok=True)
    prepared.to_parquet(paths.prepared("spam"))
    for model in params["sae"]:
        frame = pd.DataFrame({"fit": f"{model}__sae", "resample": 0, "split": "test", "text_id": ids, "y_true": y,
                              "y_pred": y_pred, "converged": True, "proba_0": 1.0 - y_pred, "proba_1": y_pred * 1.0})
        paths.probe_predictions("spam", model).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(paths.probe_predictions("spam", model))
    return y


@pytest.fixture
def versus_champion(project, monkeypatch: pytest.MonkeyPatch):
    """The project with the non-inferiority gate on; the champion in office answers every test text right."""
    params, uri = project
    params["promote"]["non_inferiority_margin"] = 0.02
    write_params(Path.cwd(), params)
    rescored = []

    def champion_predictions(name, version, service, texts, params):
        rescored.append((name, version, list(texts["text_id"])))
        return np.arange(len(texts)) % 2

    monkeypatch.setattr(promote, "champion_predictions", champion_predictions)
    monkeypatch.setattr(tracking, "logged_cell", lambda name, version: {"feature_service": "spam__cell"})
    return params, uri, rescored


def test_a_challenger_worse_than_the_champion_on_the_same_texts_is_refused(versus_champion) -> None:
    params, uri, rescored = versus_champion
    y = write_predictions(params, np.arange(N_TEST) % 2)
    write_results(params, uri, sae_f1=0.95, hidden_f1=0.9)
    assert promote.run("spam")["champion"] == 1 and rescored == []  # no champion in office: nothing to compare

    worse = y.copy()
    worse[:40] = 1 - worse[:40]  # 10% of the texts flipped: about 0.1 macro F1 below the champion
    write_predictions(params, worse)
    report = promote.run("spam")
    assert not report["promoted"] and report["champion"] == 1
    assert [c["name"] for c in report["checks"] if not c["passed"]] == ["minus_champion_low"]
    versus = report["versus_champion"]
    assert versus["champion"] == 1 and versus["n"] == N_TEST and versus["difference"] == pytest.approx(-0.1, abs=0.01)
    assert versus["high"] < 0 and rescored[-1][:2] == ("saefs-spam", 1)
    assert sorted(rescored[-1][2]) == sorted(f"spam-{i}" for i in range(N_TEST))  # the same texts


def test_a_challenger_as_good_as_the_champion_passes_the_comparison(versus_champion) -> None:
    params, uri, _ = versus_champion
    write_predictions(params, np.arange(N_TEST) % 2)
    write_results(params, uri, sae_f1=0.95, hidden_f1=0.9)
    promote.run("spam")
    report = promote.run("spam")
    assert report["promoted"] and report["champion"] == 2
    assert report["versus_champion"]["difference"] == 0 and "ok minus_champion_low" in report["decision"]


@pytest.mark.parametrize("error", [SaefsError("feature service 'old__cell' is not in the registry"),
                                   MlflowException("No such artifact: ''")])
def test_a_champion_that_cannot_be_rescored_is_replaced_and_the_report_says_why(versus_champion, monkeypatch,
                                                                                 error) -> None:
    params, uri, _ = versus_champion
    write_predictions(params, np.arange(N_TEST) % 2)
    write_results(params, uri, sae_f1=0.95, hidden_f1=0.9)
    promote.run("spam")

    def gone(*args):
        raise error  # its feature view, or its model's artifacts, are gone: it cannot serve either

    monkeypatch.setattr(promote, "champion_predictions", gone)
    report = promote.run("spam")
    assert report["promoted"] and report["champion"] == 2
    versus = report["versus_champion"]
    assert versus["low"] is None and versus["error"].startswith("champion v1 (spam__cell) cannot be rescored")
    assert "minus_champion_low" not in report["decision"]


def test_a_stale_prediction_file_is_refused_by_name(versus_champion) -> None:
    params, uri, _ = versus_champion
    write_predictions(params, np.arange(N_TEST) % 2)
    write_results(params, uri, sae_f1=0.95, hidden_f1=0.9)
    promote.run("spam")
    pd.read_parquet(paths.prepared("spam")).head(10).to_parquet(paths.prepared("spam"))  # the data moved on
    with pytest.raises(SaefsError, match=r"predicted text ids .* are not in the prepared data"):
        promote.run("spam")


def write_transfer(macro_f1: float | None, status: str = "ok") -> None:
    """What the transfer stage leaves: one cross-model cell per source, predicting smollm2's judgements."""
    path = paths.transfer_table("cross_model")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"task": "offensive_judgement", "source": source, "target": "smollm2_135m_it", "macro_f1": macro_f1,
             "majority_f1": 0.4, "status": status} for source in ("gemma3_270m", "smollm2_135m_it")]
    pd.DataFrame(rows).to_csv(path, index=False)


def test_the_transfer_gate_blocks_a_promotion_until_the_transfer_check_passes(project) -> None:
    params, uri = project
    gate = {"task": "offensive_judgement", "target": "smollm2_135m_it", "min_macro_f1": 0.6, "min_margin": 0.05}
    params["promote"]["transfer_gates"] = {model: gate for model in params["sae"]}
    write_params(Path.cwd(), params)
    write_results(params, uri, sae_f1=0.93, hidden_f1=0.92)  # passes every other gate

    write_transfer(0.58)
    blocked = promote.run("spam")
    assert not blocked["promoted"] and blocked["champion"] is None
    assert [c["name"] for c in blocked["checks"] if not c["passed"]] == ["transfer_macro_f1"]
    assert blocked["transfer_check"]["transfer_macro_f1"] == 0.58 and not blocked["mlflow_validation"]["passed"]

    write_transfer(None, status="skipped: one class (every label is 1)")  # nothing measured: fails closed
    skipped = promote.run("spam")
    assert not skipped["promoted"] and skipped["transfer_check"]["status"].startswith("skipped")

    write_transfer(0.75)
    passed = promote.run("spam")
    assert passed["promoted"] and passed["champion"] == passed["challenger_version"]
    assert "ok transfer_minus_majority" in passed["decision"]


def test_the_report_audits_the_candidate_for_shortcuts_on_its_cards_and_training_texts(project, monkeypatch) -> None:
    """Latent 0 peaks on punctuation in its card; in the training texts latents 0 and 1 are on in class 1's texts
    alone and 2 in class 0's (tests.features.test_probes.synthetic_frame): the audit flags each, and why."""
    params, uri = project
    frame, y = synthetic_frame()
    n_train = 150
    ids = [f"spam-{i}" for i in range(len(y))]
    paths.prepared("spam").parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text_id": ids, "label": y, "split": ["train"] * n_train + ["test"] * (len(y) - n_train),
                  "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")}).to_parquet(paths.prepared("spam"))
    monkeypatch.setattr(tracking, "logged_cell", lambda name, version: {"feature_service": "spam__cell"})
    monkeypatch.setattr(promote, "service_frame", lambda service, texts, params: frame.set_index(pd.Index(ids))
                        .loc[texts["text_id"]].reset_index(drop=True))
    punctuation = [{"text_id": f"t{i}", "source": "spam", "peak": 1, "tokens": [f" w{i}", token, " so"],
                    "activations": [0.0, 2.0, 0.0]} for i, token in enumerate([" !", "!!", " ?", "."])]
    word = [{**context, "tokens": [f" w{i}", " prize", " so"]} for i, context in enumerate(punctuation)]
    cards = {0: {"latent": 0, "fires": 9, "density": 0.01, "label": "' !'", "top_contexts": punctuation,
                 "random_contexts": punctuation[:2]},
             1: {"latent": 1, "fires": 9, "density": 0.01, "label": "' prize'", "top_contexts": word,
                 "random_contexts": word[:2]}}
    for model in params["sae"]:
        write_cards(paths.cards_dir(model) / f"l1__sae{WIDTH}", cards, WIDTH, {"n_tokens": 900})
    write_results(params, uri, sae_f1=0.93, hidden_f1=0.92)
    report = promote.run("spam")
    audit = report["shortcut_audit"]
    assert audit["evidence"] == {"cards": f"l1__sae{WIDTH}", "training_texts": n_train}
    kinds = {entry["latent"]: [finding["kind"] for finding in entry["findings"]] for entry in audit["flagged_latents"]}
    assert kinds[0] == ["punctuation", "class marker"] and kinds[1] == kinds[2] == ["class marker"]
    assert "' !'" in next(entry for entry in audit["flagged_latents"] if entry["latent"] == 0)["findings"][0]["reason"]
    relied = {entry["latent"]: entry for entry in report["influential_latents"]}
    assert relied[0]["shortcuts"] == ["punctuation", "class marker"] and relied[0]["label"] == "' !'"
    weights = dict(influential_latents(mlflow.sklearn.load_model(uri), WIDTH))
    assert audit["flagged"] == 3 and audit["latents"] == sum(1 for w in weights.values() if w)
    assert audit["flagged_weight_share"] == pytest.approx(
        sum(abs(weights[latent]) for latent in (0, 1, 2)) / sum(abs(w) for w in weights.values()), abs=1e-4)
    assert 0 < audit["weight_share_by_kind"]["punctuation"] < audit["weight_share_by_kind"]["class marker"]


def test_without_cards_or_feature_views_the_audit_says_what_it_went_without(project) -> None:
    params, uri = project
    write_results(params, uri, sae_f1=0.93, hidden_f1=0.92)
    audit = promote.run("spam")["shortcut_audit"]
    assert audit["evidence"]["cards"] is None and audit["evidence"]["training_texts"].startswith("not read")
    assert audit["flagged"] == 0 and audit["flagged_weight_share"] == 0 and audit["latents"] > 3
