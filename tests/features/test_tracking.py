"""MLflow helpers against a sqlite store in a temporary folder: runs, logged probes, aliases, rollback, gates."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from features.core.probes import make_probe
from features.errors import SaefsError
from features.reporting.promotion import version_story
from features.stores import tracking
from features.stores.tracking import Thresholds, promotion_decision
from tests.features.test_probes import FAST, WIDTH, split, synthetic_frame

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One sqlite store for the module (a fresh one costs ~4 s of migrations), chosen through the env var."""
    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        tracking.configure("sqlite:////nonexistent/ignored.db")
        tracking.experiment("probes", artifact_location=(folder / "artifacts").as_uri())
        yield folder
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, pd.DataFrame]:
    train, y_train, test, _ = split(*synthetic_frame())
    return make_probe("logreg", width=WIDTH, binarize=1.0, **FAST).fit(train, y_train), test


def test_configure_prefers_the_environment_and_leaves_it_as_found(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    try:
        assert tracking.configure(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"
        assert "MLFLOW_TRACKING_URI" not in os.environ  # MLflow exported it; configure takes it back
        assert tracking.configure(f"sqlite:///{tmp_path}/b.db") == f"sqlite:///{tmp_path}/b.db"
        assert mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/b.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
        assert tracking.configure(f"sqlite:///{tmp_path}/b.db") == f"sqlite:///{tmp_path}/env.db"
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/env.db"
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_parent_and_child_runs_log_params_metrics_and_tags(store: Path) -> None:
    with pytest.raises(SaefsError, match="needs an active parent run"):
        with tracking.child_run("orphan"):
            pass
    with tracking.start_parent("sweep", tags={"dataset": "toy"}, params={"seed": 0}) as parent:
        with tracking.child_run("l9__sae4k__sum__bin1", params={"C": 0.1}, tags={"kind": "logreg"}) as child:
            tracking.log_metrics({"macro_f1": 0.9, "roc_auc": None})
    run = mlflow.MlflowClient().get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.params == {"C": "0.1"} and run.data.tags["kind"] == "logreg"
    assert run.data.metrics == {"macro_f1": 0.9}  # the undefined AUC is left out
    assert mlflow.MlflowClient().get_run(parent.info.run_id).data.tags["dataset"] == "toy"


def test_logged_probe_serves_list_columns_by_alias(store: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    probe, test = fitted
    with tracking.start_parent("log"):
        info = tracking.log_probe(probe, test, registered_model_name="toy_probe")
    assert info.model_uri.startswith("models:/m-")
    inputs = {c.name: str(c.type) for c in info.signature.inputs.inputs}
    assert inputs == {"latent_ids": "Array(long)", "latent_values": "Array(double)"}
    requirements = (Path(mlflow.artifacts.download_artifacts(info.model_uri)) / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "skops==" in requirements

    tracking.set_alias("toy_probe", tracking.CHAMPION, info.registered_model_version)
    served = mlflow.pyfunc.load_model("models:/toy_probe@champion")
    np.testing.assert_allclose(served.predict(test), probe.predict_proba(test), rtol=1e-6)
    as_arrays = pd.DataFrame({"latent_ids": [np.asarray(r, dtype=np.int32) for r in test["latent_ids"]],
                              "latent_values": [np.asarray(r, dtype=np.float32) for r in test["latent_values"]]})
    np.testing.assert_allclose(served.predict(as_arrays), probe.predict_proba(test), rtol=1e-5)
    with pytest.raises(mlflow.exceptions.MlflowException, match="got NoneType"):
        served.predict(pd.DataFrame({"latent_ids": [[1], None], "latent_values": [[2.0], None]}))


def test_a_registered_probe_reads_back_the_cell_its_run_recorded(store: Path,
                                                                   fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    probe, test = fitted
    cell = {"feature_service": "m__l1__sae64__sum__bin1", "model": "m", "layer": 1, "width": "64", "pooling": "sum",
            "binarize": 1.0, "op": ">"}
    with tracking.start_parent("cells"):
        with tracking.child_run("recorded", tags=tracking.cell_tag(cell)):
            recorded = tracking.log_probe(probe, test).model_uri
        with tracking.child_run("unrecorded"):
            unrecorded = tracking.log_probe(probe, test).model_uri
    name = tracking.registered_name("cells")
    assert name == "saefs-cells"
    assert tracking.logged_cell(name, tracking.register(recorded, name)) == cell  # the layer an int, binarize a float
    with pytest.raises(SaefsError, match="without its feature cell"):
        tracking.logged_cell(name, tracking.register(unrecorded, name))


def test_dense_probe_round_trips_through_pyfunc(store: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    frame = pd.DataFrame({"hidden": list(rng.normal(size=(60, 6)) + y[:, None])})
    probe = make_probe("logreg", input="dense", **FAST).fit(frame, y)
    with tracking.start_parent("dense"):
        info = tracking.log_probe(probe, frame)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(info.model_uri).predict(frame), probe.predict_proba(frame),
                               rtol=1e-6)


class _NotFound(BaseHTTPRequestHandler):
    """A web server that is no MLflow server: every path answers 404 'Not Found'."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(404)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"Not Found")

    def log_message(self, *args: object) -> None:
        pass


def test_a_registry_that_is_no_mlflow_server_is_an_error_not_a_missing_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, previous = f"http://127.0.0.1:{server.server_port}", mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)  # MLflow exports the registry URI; restored after the test
    mlflow.set_registry_uri(url)
    try:
        with pytest.raises(MlflowException) as err:  # its 404 says "Not Found", yet no alias was looked up
            tracking.get_alias_version("any_probe", tracking.CHAMPION)
        assert err.value.error_code == "ENDPOINT_NOT_FOUND"
    finally:
        mlflow.set_registry_uri(previous)
        server.shutdown()


def test_foreign_types_are_refused_before_logging() -> None:
    with pytest.raises(SaefsError, match=r"\['math.log1p'\]"):  # numpy's ufuncs are trusted already
        tracking.trusted_types(Pipeline([("log", FunctionTransformer(math.log1p))]))


def test_aliases_rollback_walks_the_champion_history(store: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    probe, test = fitted
    with tracking.start_parent("versions"):
        uri = tracking.log_probe(probe, test).model_uri
    name = "rollback_probe"
    versions = [tracking.register(uri, name) for _ in range(3)]
    assert versions == [1, 2, 3]
    assert tracking.get_alias_version(name, tracking.CHAMPION) is None
    assert tracking.get_alias_version("no_such_model", tracking.CHAMPION) is None
    for version in versions:
        tracking.set_alias(name, tracking.CHAMPION, version)
    tracking.set_alias(name, tracking.CHALLENGER, 3)
    assert tracking.alias_history(name, tracking.CHAMPION) == [1, 2, 3]

    assert tracking.rollback(name) == 2 and tracking.get_alias_version(name, tracking.CHAMPION) == 2
    assert tracking.rollback(name) == 1  # one further back, not back to 3
    with pytest.raises(SaefsError, match="no earlier version"):
        tracking.rollback(name)
    assert tracking.rollback(name, to_version=3) == 3
    assert tracking.alias_history(name, tracking.CHAMPION) == [1, 3]
    assert tracking.get_alias_version(name, tracking.CHALLENGER) == 3  # other aliases untouched

    client = mlflow.MlflowClient()
    assert "champion_rolled_back" in client.get_model_version(name, "2").tags
    assert "champion_since" in client.get_model_version(name, "3").tags
    # the log keeps every move, rollbacks included, and the registered model's description shows it
    moves = tracking.alias_log(name, tracking.CHAMPION)
    assert [(m["version"], m["why"]) for m in moves] == [
        (1, "promoted"), (2, "promoted"), (3, "promoted"), (2, "rolled back from version 3"),
        (1, "rolled back from version 2"), (3, "rolled back from version 1")]
    assert [m["since"] for m in moves] == sorted(m["since"] for m in moves)
    table = client.get_registered_model(name).description.splitlines()
    assert table[4].startswith("| 3 | ") and table[4].endswith(" | now | rolled back from version 1 |")
    assert table[5].startswith(f"| 1 | {moves[4]['since']} | {moves[5]['since']} | ")
    assert len(table) == 4 + len(moves)
    assert mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(test.head(2)).shape == (2, 2)


def test_a_version_carries_its_promotion_story(store: Path, fitted: tuple[Pipeline, pd.DataFrame]) -> None:
    probe, test = fitted
    with tracking.start_parent("story"):
        uri = tracking.log_probe(probe, test).model_uri
    version = tracking.register(uri, "story_probe")
    report = {"registered_model": "story_probe", "challenger_version": version, "champion": version,
              "decision": "promote: ok macro_f1", "candidate": {"cell": "m__l1__sae64__sum__raw", "model": "m",
                                                                 "layer": 1, "logged_macro_f1": 0.81,
                                                                 "logged_macro_f1_low": 0.74,
                                                                 "logged_macro_f1_high": 0.88},
              "hidden_baseline": {"cell": "m__l1__hidden__mean", "logged_macro_f1": 0.79},
              "checks": [{"name": "macro_f1", "value": 0.81, "threshold": 0.8, "passed": True,
                          "detail": "macro F1 0.81 >= 0.8"}],
              "influential_latents": [{"latent": 7, "weight": 1.5, "label": "'idiot'"}]}
    tracking.annotate_version("story_probe", version, *version_story(
        report, "m__l1__sae64__sum__raw", {"data/prepared/d.parquet": "9a7b46be"}))
    shown = mlflow.MlflowClient().get_model_version("story_probe", str(version))
    assert "Promotion of `story_probe` version 1: promoted to champion" in shown.description
    assert "| macro_f1 | 0.8100 | 0.8 | yes | macro F1 0.81 >= 0.8 |" in shown.description
    assert "| data/prepared/d.parquet | 9a7b46be |" in shown.description
    assert "| 7 | 1.5 | 'idiot' |" in shown.description
    assert shown.tags["saefs.test_macro_f1"] == "0.810 [0.740, 0.880]" and shown.tags["saefs.gates"] == "passed"
    assert shown.tags["saefs.feature_service"] == "m__l1__sae64__sum__raw"


GATES = Thresholds(min_macro_f1=0.8, max_drop_vs_hidden=0.02, min_transfer_f1=0.7, min_transfer_margin=0.05)
BASELINES = {"hidden_macro_f1": 0.85, "transfer_majority_macro_f1": 0.4}


@pytest.mark.parametrize(("candidate", "baselines", "failed"), [
    ({"macro_f1": 0.84, "transfer_macro_f1": 0.75}, BASELINES, []),
    ({"macro_f1": 0.79, "transfer_macro_f1": 0.75}, {**BASELINES, "hidden_macro_f1": 0.7}, ["macro_f1"]),
    ({"macro_f1": 0.82, "transfer_macro_f1": 0.75}, BASELINES, ["macro_f1_minus_hidden"]),
    ({"macro_f1": 0.84, "transfer_macro_f1": 0.69}, {**BASELINES, "transfer_majority_macro_f1": 0.66},
     ["transfer_macro_f1", "transfer_minus_majority"]),
    ({"macro_f1": 0.84, "transfer_macro_f1": 0.72}, {**BASELINES, "transfer_majority_macro_f1": 0.7},
     ["transfer_minus_majority"]),
    ({"macro_f1": 0.84}, {"transfer_majority_macro_f1": 0.4}, ["macro_f1_minus_hidden", "transfer_macro_f1",
                                                               "transfer_minus_majority"]),
    ({"macro_f1": math.nan, "transfer_macro_f1": 0.75}, BASELINES, ["macro_f1", "macro_f1_minus_hidden"]),
])
def test_promotion_gates_and_mlflow_agree(candidate: dict, baselines: dict, failed: list[str]) -> None:
    decision = promotion_decision(candidate, baselines, GATES)
    assert [c.name for c in decision.checks if not c.passed] == failed
    assert decision.promote is (not failed)
    passed, message = tracking.mlflow_validation(decision)
    assert passed is decision.promote
    assert all(name in message for name in failed)


def test_gates_that_are_off_are_not_checked() -> None:
    decision = promotion_decision({"macro_f1": 0.81}, {}, Thresholds(min_macro_f1=0.8, max_drop_vs_hidden=None))
    assert decision.promote and [c.name for c in decision.checks] == ["macro_f1"]
    assert decision.summary().startswith("promote: ok macro_f1: macro F1 0.8100 >= 0.8")


@pytest.mark.parametrize(("thresholds", "key"), [
    (Thresholds(min_macro_f1=1.2, max_drop_vs_hidden=0.02), "min_macro_f1=1.2"),
    (Thresholds(min_macro_f1=0.8, max_drop_vs_hidden=-1.5), "max_drop_vs_hidden=-1.5"),
    (GATES.model_copy(update={"min_transfer_f1": 0.5, "min_transfer_margin": 2.0}), "min_transfer_margin=2.0"),
])
def test_thresholds_that_can_never_pass_say_so_and_fail_even_a_perfect_probe(thresholds: Thresholds,
                                                                             key: str) -> None:
    perfect = {"macro_f1": 1.0, "transfer_macro_f1": 1.0}
    decision = promotion_decision(perfect, {"hidden_macro_f1": 0.0, "transfer_majority_macro_f1": 0.0}, thresholds)
    assert not decision.promote
    assert decision.checks[0].name == "thresholds" and key in decision.checks[0].detail
    assert "can never pass" in decision.summary()
    assert tracking.mlflow_validation(decision)[0] is False


def test_reachable_thresholds_are_not_flagged() -> None:
    assert Thresholds(min_macro_f1=1.0, max_drop_vs_hidden=-1.0).impossible() == []
    transfer_off = Thresholds(min_macro_f1=0.8, max_drop_vs_hidden=0.02, min_transfer_margin=3.0)
    assert transfer_off.impossible() == []
