"""The scoring service end to end on a tiny model: extract -> Feast -> train_probes -> promote -> HTTP API.

The stages run in this process on a scratch project, as DVC would run them; the API is called
through FastAPI's TestClient (httpx), or over loopback sockets to uvicorn in a thread where the
wire matters (slow and huge bodies), the CLI through typer's runner.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.core.prepare import text_id
from features.errors import SaefsError
from features.serving.scoring import BadTexts
from features.sources.sae import SAE_INDEX
from features.stores import tracking
from features.stores.activations import HELDOUT_TEXTS
from features.stores.feast.retrieval import historical_frame
from features.stores.files import write_json, write_parquet
from pipelines import (
    build_features,
    extract,
    feast_apply,
    latent_cards,
    materialize,
    paths,
    prepare_model,
    promote,
    serve,
    train_probes,
)
from pipelines.params import ParamsError, load_params, parse_params
from tests.features.tiny import HIDDEN, make_jumprelu_sae, make_model, make_tokenizer
from tests.helpers import embedded_params, write_params
from tests.pipelines.test_feature_stages import copy_repo

mlflow = pytest.importorskip("mlflow")
MODEL, DATASET, WIDTH = "tiny", "alpha", 64
NAME = tracking.registered_name(DATASET)
MAX_TEXTS, MAX_CHARS = 4, 120


def labelled_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Class 1 draws most words from w0..w59, class 0 from w200..w259: a signal a probe on SAE codes can find."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    texts = []
    for label in labels:
        words = rng.integers(0, 60, 8) + (0 if label else 200)
        words[rng.random(8) < 0.3] = rng.integers(60, 200)
        texts.append(" ".join(f"w{w}" for w in words))
    return texts, labels


def scratch_params(root: Path) -> dict[str, Any]:
    params = embedded_params(
        models={MODEL: {"source": "path:tiny"}},
        datasets={DATASET: {"source": "file:alpha.csv", "labels": [0, 1], "label_names": ["calm", "rude"]}},
        sae={MODEL: {"layers": [1], "widths": [str(WIDTH)], "source": "train"}},
        extract={"max_tokens": 12, "batch_size": 8, "poolings": ["sum"], "include_bos": False,
                 "paper_compat": False, "shard_rows": 64, "device": "cpu"},
        build_features={"binarize": [None, 1.0], "binarize_op": ">", "hidden": ["last"]},
        promote={"min_macro_f1": 0.0, "max_drop_vs_hidden": None, "tracking_uri": f"sqlite:///{root}/mlflow.db",
                 "transfer_gates": {}},
        serve={"datasets": [DATASET], "host": "127.0.0.1", "port": 8000, "max_texts": MAX_TEXTS,
               "max_chars": MAX_CHARS, "top_latents": WIDTH, "champion_poll_s": 0.0,
               "torch_threads": 0},  # 0: leave this process's torch threads as they are
    )
    params["train_probes"] = {"poolings": ["sum"], "binarize": [None, 1.0], "hidden": ["last"], "C_grid": [1.0],
                              "cv_folds": 2, "resamples": 1, "select_k": 8, "train_fractions": [1.0], "n_jobs": 1}
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """A scratch project after extract ... promote, and a TestClient on its scoring service."""
    from fastapi.testclient import TestClient

    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        copy_repo(root)
        make_model("gemma3", n_layers=2).save_pretrained(root / "tiny")
        make_tokenizer().save_pretrained(root / "tiny")
        params = scratch_params(root)
        write_params(root, params)
        prepare_model.run(MODEL)
        make_jumprelu_sae(HIDDEN, WIDTH).save_model(paths.sae_dir(MODEL) / "l1__sae64")
        sae_spec = f"path:{paths.sae_dir(MODEL)}/l1__sae64"
        (paths.sae_dir(MODEL) / SAE_INDEX).write_text(json.dumps({"l1__sae64": sae_spec}))
        texts, labels = labelled_texts(80, seed=0)
        write_parquet(paths.prepared(DATASET), pd.DataFrame({
            "text_id": [text_id(DATASET, t) for t in texts], "text": texts, "label": labels,
            "label_name": [["calm", "rude"][y] for y in labels], "split": ["train"] * 60 + ["test"] * 20,
            "lang": "en", "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")}))
        extract.run(f"{MODEL}/{DATASET}")
        corpus, _ = labelled_texts(30, seed=9)  # the held-out corpus texts latent_cards reads
        write_json(paths.activations_dir(MODEL) / HELDOUT_TEXTS, corpus)
        latent_cards.run(MODEL)
        build_features.run(MODEL)
        feast_apply.run("feature_repo")
        materialize.run("feature_repo")
        train_probes.run(f"{MODEL}/{DATASET}")
        report = promote.run(DATASET)
        assert report["champion"] == 1
        scorer = serve.build_scorer(load_params())
        with TestClient(serve.create_app(scorer, load_params().serve)) as client:
            yield {"client": client, "scorer": scorer, "texts": texts, "report": report, "root": root}
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def finish_alias_checks() -> None:
    """Wait for the alias checks `/ready` starts in the background: while one runs, a request is answered by the
    champion already loaded, by design, so a test that moves the alias right after `/ready` raced them."""
    for thread in threading.enumerate():
        if thread.name.startswith("saefs-champion-"):
            thread.join(timeout=60)
            assert not thread.is_alive(), f"{thread.name} still checks its alias after 60 s"


@pytest.fixture(autouse=True)
def no_alias_check_left_running() -> None:
    """No test starts while an earlier test's `/ready` still checks an alias: the tests move it."""
    finish_alias_checks()


def test_new_texts_get_labels_probabilities_versions_and_explanations(project) -> None:
    client = project["client"]
    response = client.post("/score", json={"texts": ["w1 w2 w3 w40 w7", "w201 w230 w250 w209"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dataset"] == DATASET and len(body["results"]) == 2
    service = project["report"]["candidate"]["cell"].split("__select")[0].split("__tree")[0]
    for result, text in zip(body["results"], ["w1 w2 w3 w40 w7", "w201 w230 w250 w209"], strict=True):
        assert result["text_id"] == text_id(DATASET, text) and result["label"] in ("calm", "rude")
        assert result["label"] == ["calm", "rude"][result["label_id"]] and 0.5 <= result["probability"] <= 1
        assert result["registered_model"] == NAME and result["model_version"] == 1
        assert result["feature_service"] == service
    assert "/score" in client.get("/openapi.json").json()["paths"]


def test_top_latents_carry_their_cards_and_a_whole_card_is_served_by_id(project) -> None:
    client = project["client"]
    response = client.post("/score", json={"texts": ["w1 w2 w3 w40 w7"]})
    assert response.status_code == 200, response.text
    latents = response.json()["results"][0]["top_latents"]
    assert latents and all(latent["label"] and latent["density"] is not None for latent in latents)
    fired = [latent for latent in latents if latent["density"] > 0]
    assert fired and all(1 <= len(latent["contexts"]) <= 3 and "«" in latent["contexts"][0] for latent in fired)
    card = client.get(f"/latents/{MODEL}/l1__sae64/{fired[0]['latent']}").json()
    assert card["latent"] == fired[0]["latent"] and card["label"] == fired[0]["label"]
    assert {"top_contexts", "random_contexts", "logit_lens", "label_tokens"} <= set(card)
    assert {context["source"] for context in card["top_contexts"]} <= {"corpus", DATASET}
    test_ids = set(pd.read_parquet(paths.prepared(DATASET)).query("split == 'test'")["text_id"])
    assert not test_ids & {context["text_id"] for context in card["top_contexts"] + card["random_contexts"]}
    relied_on = project["report"]["influential_latents"]  # promote lists the candidate's latents with cards
    assert relied_on and all({"latent", "weight", "label", "density", "contexts"} <= set(e) for e in relied_on)
    assert [abs(e["weight"]) for e in relied_on] == sorted((abs(e["weight"]) for e in relied_on), reverse=True)
    for path, named in ((f"/latents/{MODEL}/l1__sae64/{WIDTH}", "latent 64 is not in SAE l1__sae64"),
                        (f"/latents/{MODEL}/l7__sae64/0", "has no SAE 'l7__sae64' with cards"),
                        ("/latents/other/l1__sae64/0", "no latent cards for model 'other'")):
        missing = client.get(path)
        assert missing.status_code == 404 and named in missing.json()["detail"], missing.text


def test_explain_shows_where_each_top_latent_fires_and_the_page_calls_it(project) -> None:
    client, text = project["client"], "w1 w2 w3 w40 w7"
    response = client.post("/explain", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    scored = client.post("/score", json={"texts": [text]}).json()["results"][0]
    assert body["result"] == scored  # the same decision as POST /score
    champion = project["scorer"].champion(DATASET)
    assert len(body["tokens"]) == 5 and "".join(body["tokens"]).split() == text.split()
    assert {int(latent) for latent in body["activations"]} == {latent["latent"] for latent in scored["top_latents"]}
    for latent in scored["top_latents"]:  # the champion pools by sum: its input is the sum over the tokens
        pooled = sum(body["activations"][str(latent["latent"])])
        if champion.kind == "binary":
            assert latent["activation"] == 1.0 and pooled > champion.threshold
        else:
            assert pooled == pytest.approx(latent["activation"], rel=1e-3, abs=1e-3)
    assert body["latents_url"] == f"/latents/{MODEL}/l1__sae64"
    page = client.get("/")
    assert page.status_code == 200 and 'fetch("/explain"' in page.text and "http" not in page.text
    assert client.post("/explain", json={"text": ""}).status_code == 422


def test_the_api_docs_load_swagger_ui_from_this_service(project) -> None:
    client = project["client"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "https://" not in docs.text
    scripts = re.findall(r"(?:src|href)=['\"](/assets/[^'\"]+)['\"]", docs.text)
    assert len(scripts) == 3
    for url in scripts:
        assert client.get(url).status_code == 200, url


def test_explanations_add_up_to_the_logit(project) -> None:
    """With every active latent listed, the contributions plus the intercept give log(p / (1 - p))."""
    champion = project["scorer"].champion(DATASET)
    clf = champion.probe.steps[-1][1].best_estimator_.steps[-1][1]
    if not hasattr(clf, "coef_"):
        pytest.skip("the champion is a tree: it has no coefficients to explain by")
    [result] = project["client"].post("/score", json={"texts": ["w5 w9 w33 w41 w2 w2"]}).json()["results"]
    contributions = [latent["contribution"] for latent in result["top_latents"]]
    assert contributions == sorted(contributions, reverse=True)
    sign = 1.0 if result["label_id"] == 1 else -1.0
    p = result["probability"]
    assert np.isclose(sum(contributions) + sign * clf.intercept_[0], np.log(p / (1 - p)), atol=1e-4)
    for latent in result["top_latents"]:
        assert np.isclose(latent["coefficient"] * latent["activation"], latent["contribution"], rtol=1e-5)


def test_stored_and_new_text_scoring_agree_with_the_batch_prediction(project) -> None:
    from feast import FeatureStore

    client, text = project["client"], project["texts"][70]  # a test-split text, materialized by the pipeline
    stored = client.get(f"/score/{text_id(DATASET, text)}")
    assert stored.status_code == 200, stored.text
    champion = project["scorer"].champion(DATASET)
    entity = pd.DataFrame({"text_id": [text_id(DATASET, text)], "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
    frame, _ = historical_frame(FeatureStore(repo_path="feature_repo"), champion.service, entity)
    batch = champion.probe.predict_proba(frame)[0]
    assert np.isclose(stored.json()["probability"], batch.max(), atol=1e-6)
    [new] = client.post("/score", json={"texts": [text]}).json()["results"]  # recomputed, pushed, read back
    assert new["text_id"] == stored.json()["text_id"] and new["label"] == stored.json()["label"]
    assert np.isclose(new["probability"], stored.json()["probability"], atol=1e-4)
    assert client.get(f"/score/{text_id(DATASET, 'w3 w4 w5')}").status_code == 404
    client.post("/score", json={"texts": ["w3 w4 w5"]})
    assert client.get(f"/score/{text_id(DATASET, 'w3 w4 w5')}").status_code == 200  # pushed online


def test_the_service_writes_and_reads_the_store_materialize_swapped_in(project) -> None:
    """materialize renames a new SQLite file onto the live one: the service must follow it, or its pushes go to the
    replaced file (lost) and its reads stay old."""
    from feast import FeatureStore

    client, text = project["client"], "w8 w9 w10 w11 w12"
    assert client.get(f"/score/{text_id(DATASET, project['texts'][70])}").status_code == 200  # the store is open
    # another process, as under `dvc repro` while `saefs serve` runs
    done = subprocess.run([sys.executable, "-m", "pipelines.materialize", "feature_repo"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(project["root"])})
    assert done.returncode == 0, done.stderr
    assert client.post("/score", json={"texts": [text]}).status_code == 200
    fresh = FeatureStore(repo_path="feature_repo")  # a reader that opens the file on disk now
    service = fresh.get_feature_service(project["scorer"].champion(DATASET).service)
    row = fresh.get_online_features(features=service, entity_rows=[{"text_id": text_id(DATASET, text)}]).to_dict()
    assert any(values[0] is not None for name, values in row.items() if name != "text_id"), row
    assert client.get(f"/score/{text_id(DATASET, text)}").status_code == 200


@pytest.mark.parametrize(("request_body", "field"), [
    ({"texts": "w1 w2"}, ["body", "texts"]),
    ({"texts": ["w1", 2]}, ["body", "texts", 1]),
    ({"texts": []}, ["body", "texts"]),
    ({"texts": ["w1"] * (MAX_TEXTS + 1)}, ["body", "texts"]),
    ({"texts": ["w1 " * (MAX_CHARS // 3 + 1)]}, ["body", "texts", 0]),
    ({"texts": ["w1"], "dataset": "nowhere"}, ["body", "dataset"]),
    ({"texts": ["w1"], "threshold": 2}, ["body", "threshold"]),
])
def test_bad_requests_get_a_422_naming_the_field(project, request_body: dict, field: list) -> None:
    response = project["client"].post("/score", json=request_body)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [field]


def test_malformed_json_and_textless_input_get_a_422(project) -> None:
    client = project["client"]
    response = client.post("/score", content=b'{"texts": ["w1",', headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    response = client.post("/score", json={"texts": ["w1", "   "]})  # no token besides BOS
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "texts", 1]
    assert "no tokens besides BOS" in response.json()["detail"][0]["msg"]
    for body, field in [(b'{"texts": ["w1 \\ud800"]}', ["body", "texts", 0]),  # valid JSON, but no Unicode text
                        (b'{"texts": ["w1"], "\\udfff": 1}', ["body"]),  # a key that is no Unicode text
                        (b'{"texts": [NaN]}', ["body", "texts", 0])]:  # Python's JSON parser takes NaN
        response = client.post("/score", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == field
    with pytest.raises(BadTexts, match=r"texts at rows \[1\] are not valid Unicode"):  # the CLI's path
        project["scorer"].score_texts(DATASET, ["w1", "w1 \ud800"])


def test_no_champion_gives_503_with_a_message_and_not_ready(project) -> None:
    client = project["client"]
    project["scorer"].warm_up()  # run alone, no earlier test has loaded the champion: /ready said 503
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    finish_alias_checks()  # the full suite on 2 cores once scored with the former champion here (200, not 503)
    mlflow.MlflowClient().delete_registered_model_alias(NAME, tracking.CHAMPION)
    try:
        response = client.post("/score", json={"texts": ["w1 w2"]})
        assert response.status_code == 503 and f"{NAME} has no champion yet" in response.json()["detail"]
        assert client.get(f"/score/{text_id(DATASET, project['texts'][0])}").status_code == 503
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["champions"] == {DATASET: None}
        assert client.get("/health").status_code == 200
    finally:
        tracking.set_alias(NAME, tracking.CHAMPION, 1)
    assert wait_until_ready(client) == {"ready": True, "champions": {DATASET: 1}}


def wait_until_ready(client: Any, timeout_s: float = 60) -> dict:
    """/ready's body once it answers 200: it reports what is loaded and loads, if needed, in the background."""
    deadline = time.monotonic() + timeout_s
    while (response := client.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.1)
    return response.json()


def other_sparse_cell(report: dict) -> tuple[str, str]:
    """A sparse cell besides the champion's, and its logged model: a version the alias can move to."""
    cells = json.loads(paths.probe_metrics(DATASET, MODEL).read_text())["cells"]
    other = next(name for name, cell in cells.items()
                 if cell["input"] == "sparse" and "variant" not in cell and name != report["candidate"]["cell"])
    return other, cells[other]["model_uri"]


def test_a_moved_alias_is_picked_up(project) -> None:
    client = project["client"]
    other, model_uri = other_sparse_cell(project["report"])
    version = tracking.register(model_uri, NAME)
    tracking.set_alias(NAME, tracking.CHAMPION, version)
    try:
        [result] = client.post("/score", json={"texts": ["w1 w2 w3"]}).json()["results"]
        assert result["model_version"] == version and result["feature_service"] == other
        assert client.get(f"/score/{text_id(DATASET, project['texts'][3])}").json()["feature_service"] == other
    finally:
        tracking.set_alias(NAME, tracking.CHAMPION, 1)
    assert client.post("/score", json={"texts": ["w1 w2 w3"]}).json()["results"][0]["model_version"] == 1


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """call()'s result, failing the test if it has not returned within `seconds` (the thread is left to finish)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def held_load(monkeypatch: pytest.MonkeyPatch, version: int) -> tuple[threading.Event, threading.Event]:
    """Makes loading `version` of NAME block, once loaded, until the second Event is set; the first says it began."""
    from features.serving import scoring

    entered, release = threading.Event(), threading.Event()
    real = scoring.load_champion

    def load(*args: Any) -> Any:
        champion = real(*args)
        if champion.registered_model == NAME and champion.version == version:
            entered.set()
            assert release.wait(120)
        return champion

    monkeypatch.setattr(scoring, "load_champion", load)
    return entered, release


def two_dataset_params() -> Any:
    """The project's params serving a second dataset, `beta` (alpha's data, its own registered model)."""
    params = load_params()
    return params.model_copy(update={"datasets": {**params.datasets, "beta": params.datasets[DATASET]},
                                     "serve": params.serve.model_copy(update={"datasets": [DATASET, "beta"]})})


def test_a_slow_champion_load_blocks_no_request_and_swaps_in_whole(project, monkeypatch) -> None:
    """While a moved champion loads, both datasets score with their current champions, and every answer
    comes from one whole champion: its version, feature service and probability belong together."""
    beta = tracking.registered_name("beta")
    first_uri = json.loads(paths.probe_metrics(DATASET, MODEL).read_text())["cells"][
        project["report"]["candidate"]["cell"]]["model_uri"]
    tracking.set_alias(beta, tracking.CHAMPION, tracking.register(first_uri, beta))
    other, model_uri = other_sparse_cell(project["report"])
    moved = tracking.register(model_uri, NAME)
    entered, release = held_load(monkeypatch, moved)
    scorer = serve.build_scorer(two_dataset_params())
    stored = text_id(DATASET, project["texts"][70])
    before = scorer.score_stored(DATASET, [stored])[0]
    assert before.model_version == 1 and scorer.score_texts("beta", ["w1 w2"])[0].model_version == 1
    answers: list[Any] = []
    stop = threading.Event()

    def hammer() -> None:  # scores the stored text all through the swap
        while not stop.is_set():
            answers.append(scorer.score_stored(DATASET, [stored])[0])

    hammering = threading.Thread(target=hammer, daemon=True)
    loader = threading.Thread(target=scorer.champion, args=(DATASET,), daemon=True)
    tracking.set_alias(NAME, tracking.CHAMPION, moved)
    try:
        loader.start()
        assert entered.wait(60)
        hammering.start()
        during = within(30, lambda: [scorer.score_stored(DATASET, [stored])[0],
                                     scorer.score_texts(DATASET, ["w1 w2 w3"])[0],
                                     scorer.score_texts("beta", ["w1 w2 w3"])[0]])
        assert [score.model_version for score in during] == [1, 1, 1]
        assert during[0].feature_service == before.feature_service
        assert within(5, scorer.status) == {DATASET: 1, "beta": 1}
        release.set()
        loader.join(60)
        after = within(30, lambda: scorer.score_stored(DATASET, [stored])[0])
        assert after.model_version == moved and after.feature_service == other
        time.sleep(0.5)  # a few answers after the swap
    finally:
        release.set()
        stop.set()
        hammering.join(60)
        tracking.set_alias(NAME, tracking.CHAMPION, 1)
        mlflow.MlflowClient().delete_registered_model(beta)
    whole = {(1, before.feature_service, round(before.probability, 6)),
             (moved, other, round(after.probability, 6))}
    assert {(a.model_version, a.feature_service, round(a.probability, 6)) for a in answers} <= whole
    assert {a.model_version for a in answers} == {1, moved}


def test_datasets_whose_champions_read_one_model_share_its_forward(project, monkeypatch) -> None:
    """Scoring for alpha and beta (another cell of the same model) runs the model once for the whole request,
    and each dataset's answers equal scoring it alone; over HTTP and the CLI as well."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from features.serving import scoring

    beta = tracking.registered_name("beta")
    other, model_uri = other_sparse_cell(project["report"])
    tracking.set_alias(beta, tracking.CHAMPION, tracking.register(model_uri, beta))
    forwards: list[int] = []
    real = scoring.extract
    monkeypatch.setattr(scoring, "extract", lambda *args, **kwargs: forwards.append(len(args[2])) or real(*args,
                                                                                                         **kwargs))
    texts = ["w1 w2 w3 w40", "w201 w230 w250", "w7 w9"]
    try:
        scorer = serve.build_scorer(two_dataset_params())
        together = scorer.score_many([DATASET, "beta"], texts)
        assert forwards == [3]  # one forward of the three texts for both datasets
        assert [s.feature_service for s in together["beta"]] == [other] * 3
        for dataset in (DATASET, "beta"):
            alone = scorer.score_texts(dataset, texts)
            assert [(a.label, round(a.probability, 5)) for a in alone] == \
                [(t.label, round(t.probability, 5)) for t in together[dataset]]
        with TestClient(serve.create_app(scorer, two_dataset_params().serve)) as client:
            body = client.post("/score/many", json={"texts": texts[:2]}).json()  # default: every served dataset
            assert sorted(body["results"]) == [DATASET, "beta"] and len(body["results"]["beta"]) == 2
            assert client.post("/score/many", json={"texts": texts, "datasets": ["nowhere"]}).status_code == 422
        monkeypatch.setattr(serve, "load_params", two_dataset_params)
        cli = CliRunner().invoke(serve.cli, ["score", "w1 w2", "--dataset", DATASET, "--dataset", "beta"])
        assert cli.exit_code == 0, cli.output
        assert sorted(json.loads(cli.stdout)["results"]) == [DATASET, "beta"]
    finally:
        mlflow.MlflowClient().delete_registered_model(beta)


def test_ready_reports_what_is_loaded_without_waiting_for_a_load(project, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    entered, release = held_load(monkeypatch, 1)
    scorer = serve.build_scorer(load_params())  # nothing loaded yet
    try:
        with TestClient(serve.create_app(scorer, load_params().serve)) as client:
            response = within(10, lambda: client.get("/ready"))
            assert response.status_code == 503 and response.json()["champions"] == {DATASET: None}
            assert "loading" in response.json()["detail"][DATASET]
            assert entered.wait(60)  # /ready started the load, in the background
            assert within(10, lambda: client.get("/ready")).status_code == 503
            release.set()
            assert wait_until_ready(client) == {"ready": True, "champions": {DATASET: 1}}
    finally:
        release.set()


def test_the_feast_registry_is_read_under_the_store_lock(project) -> None:
    scorer = serve.build_scorer(load_params())
    store, unguarded = scorer.store, []

    class Watched:
        """The scorer's store, noting each registry or store call made without the scorer's store lock."""

        def __getattr__(self, name: str) -> Any:
            if name.startswith(("get_", "list_", "write_", "registry")) and not scorer._store_lock.locked():
                unguarded.append(name)
            return getattr(store, name)

    scorer.store = Watched()
    scorer.score_stored(DATASET, [text_id(DATASET, project["texts"][70])])
    scorer.score_texts(DATASET, ["w1 w2 w3"])
    assert unguarded == []


def test_store_and_registry_failures_are_503_with_the_cause_logged(project, monkeypatch, caplog) -> None:
    import sqlite3

    from fastapi.testclient import TestClient
    from mlflow.exceptions import MlflowException

    from features.serving import scoring

    client, stored = project["client"], text_id(DATASET, project["texts"][70])

    def store_down(*_args: Any) -> None:
        raise sqlite3.OperationalError("unable to open database file")

    with monkeypatch.context() as patch:
        patch.setattr(scoring, "online_frame", store_down)
        for response in client.get(f"/score/{stored}"), client.post("/score", json={"texts": ["w1 w2"]}):
            assert response.status_code == 503 and response.headers["Retry-After"]
            assert "store the service reads failed" in response.json()["detail"]
    assert "unable to open database file" in caplog.text

    def registry_down(*_args: Any) -> None:
        raise MlflowException("API request to http://mlflow.internal:5000 failed: Connection refused")

    caplog.clear()
    with monkeypatch.context() as patch:
        patch.setattr(tracking, "get_alias_version", registry_down)
        # A loaded champion goes on serving; a scorer with none answers 503.
        assert client.get(f"/score/{stored}").json()["model_version"] == 1
        with TestClient(serve.create_app(serve.build_scorer(load_params()), load_params().serve)) as fresh:
            response = fresh.post("/score", json={"texts": ["w1 w2"]})
            assert response.status_code == 503 and "Connection refused" not in response.text
    assert "still serving version 1" in caplog.text and "Connection refused" in caplog.text


def test_a_misconfigured_champion_is_a_500_never_the_requests_fault(project, caplog) -> None:
    from fastapi.testclient import TestClient

    cells = json.loads(paths.probe_metrics(DATASET, MODEL).read_text())["cells"]
    hidden = next(name for name, cell in cells.items() if cell["input"] != "sparse" and "variant" not in cell)
    broken = tracking.register(cells[hidden]["model_uri"], NAME)  # a hidden-state probe: no text can be served
    tracking.set_alias(NAME, tracking.CHAMPION, broken)
    try:
        with TestClient(serve.create_app(serve.build_scorer(load_params()), load_params().serve)) as client:
            response = client.post("/score", json={"texts": ["w1 w2"]})
        assert response.status_code == 500, response.text
        assert "misconfigured" in response.json()["detail"] and "texts" not in response.text
        assert f"{NAME} v{broken} reads {hidden}, a dense view" in caplog.text
        # The service that had a champion keeps it, and says why it did not move.
        assert project["client"].post("/score", json={"texts": ["w1 w2"]}).json()["results"][0]["model_version"] == 1
    finally:
        tracking.set_alias(NAME, tracking.CHAMPION, 1)


def test_oversize_deeply_nested_and_invalid_utf8_bodies_get_a_4xx(project) -> None:
    client, json_type = project["client"], {"Content-Type": "application/json"}
    limit = serve.max_body_bytes(load_params().serve)
    big = b'{"texts": ["' + b"w" * limit + b'"]}'
    assert client.post("/score", content=big, headers=json_type).status_code == 413
    chunks = iter([big[:1000], big[1000:]])  # no Content-Length: counted as it arrives
    assert client.post("/score", content=chunks, headers=json_type).status_code == 413
    nested = b'{"texts": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    assert len(nested) < limit
    assert client.post("/score", content=nested, headers=json_type).status_code == 400
    assert client.post("/score", content=b'{"texts": ["w1 \xff\xfe"]}', headers=json_type).status_code == 400
    assert client.get("/health").status_code == 200


@contextmanager
def listening(app: Any) -> Iterator[int]:
    """`app` under uvicorn on a free loopback port, in a thread, for as long as the block runs."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)


def status_line(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    return sock.recv(4096).split(b"\r\n", 1)[0]


def test_slow_stalled_and_huge_bodies_get_a_4xx_and_block_no_one(project) -> None:
    import httpx

    limits = load_params().serve.model_copy(update={"body_timeout_s": 4.0})
    stored = text_id(DATASET, project["texts"][70])
    head = b"POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    with listening(serve.create_app(project["scorer"], limits)) as port:
        huge, stalled, trickle = (socket.create_connection(("127.0.0.1", port)) for _ in range(3))
        huge.sendall(head % 10**9 + b'{"texts": ["')  # announces a gigabyte
        assert status_line(huge, 10).startswith(b"HTTP/1.1 413")
        stalled.sendall(head % 50 + b'{"texts": ["w1')  # then nothing
        trickle.sendall(head % 200 + b'{"texts": ["w1')
        started = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while time.monotonic() - started < 3:  # bytes every 0.1 s, within body_timeout_s; others go on meanwhile
                try:
                    trickle.sendall(b" w1")
                except OSError:  # the server answered and closed: only after body_timeout_s
                    pass
                begun = time.monotonic()
                assert client.get(f"/score/{stored}").status_code == 200
                assert client.get("/health").status_code == 200
                assert time.monotonic() - begun < 2  # well before the 408s: nothing waited for the slow bodies
                time.sleep(0.1)
        assert status_line(stalled, 10).startswith(b"HTTP/1.1 408")
        assert status_line(trickle, 10).startswith(b"HTTP/1.1 408")
        for sock in huge, stalled, trickle:
            sock.close()


def test_cli_scores_a_text(project, caplog: pytest.LogCaptureFixture) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(serve.cli, ["score", "w1 w2 w3", "--dataset", DATASET])
    assert result.exit_code == 0, result.output
    [scored] = json.loads(result.stdout)["results"]
    assert scored["text_id"] == text_id(DATASET, "w1 w2 w3") and scored["model_version"] == 1
    unknown = CliRunner().invoke(serve.cli, ["score", "w1", "--dataset", "nowhere"])
    assert unknown.exit_code == 2
    assert (f"dataset 'nowhere' is not served: serve.datasets in params.yaml lists ['{DATASET}']; add it there"
            in caplog.text)


def test_serve_params_name_the_bad_key_and_unknown_datasets_stop_the_service() -> None:
    params = embedded_params()
    params["serve"]["max_textz"] = 3
    with pytest.raises(ParamsError, match=r"serve\.max_textz: unknown key \(allowed here: datasets, host, port"):
        parse_params(params)
    params = embedded_params()
    params["serve"]["port"] = 70000
    with pytest.raises(ParamsError, match=r"serve\.port: Input should be less than or equal to 65535"):
        parse_params(params)
    params = embedded_params()
    params["serve"]["datasets"] = ["spam", "nowhere"]
    with pytest.raises(ParamsError, match=r"dataset 'nowhere' is not configured"):
        serve.build_scorer(parse_params(params))


def test_serve_names_the_port_it_cannot_listen_on() -> None:
    from pipelines.serve import check_port

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SaefsError, match=rf"cannot serve on 127\.0\.0\.1:{port}: Address already in use "
                                             r"\(pass --port"):
            check_port("127.0.0.1", port)
