"""Scoring texts with a dataset's champion probe, through the online store, with explanations.

A new text goes the way of the batch pipeline: `features.extract.extract` (the same truncated
forward, SAE encoding and pooling, with the `extract` params) gives its pooled codes in the
champion's cell, binarized as its view is; they are pushed to the online store, the champion's
feature service is read back from it, and the probe (`models:/<name>@champion`, resolved to
its version) predicts. A stored text skips the first two steps. Each answer names the model
version and the latents that drove it: coefficient x activation, in the probe's input space.

Language models and SAEs load once per process, when a champion first needs them. The champion
alias is looked up again every `champion_poll_s` seconds; when it moved, the new version (and
its feature service, which may name another model or cell) is loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.pipeline import Pipeline

from features import tracking
from features.errors import SaefsError
from features.extract import extract
from features.feature_store import binarize_codes
from features.online import PUSHABLE_KINDS, missing_rows, online_frame, push_codes, push_views
from features.prepare import text_id

log = logging.getLogger("saefs.serve")

LmLoader = Callable[[str], tuple[Any, Any]]  # model name -> (causal LM, tokenizer)
SaeLoader = Callable[[str, int, str], Any]  # (model name, layer, SAE width) -> SAE


class NoChampion(SaefsError):
    """The dataset's registered model has no `champion` alias (yet): nothing may serve."""


class UnknownText(SaefsError):
    """A text_id the online store holds no features for."""


@dataclass(frozen=True)
class ExtractSettings:
    """The `extract` params that decide a text's features; the service must use the batch run's."""

    max_tokens: int
    batch_size: int
    include_bos: bool
    paper_compat: bool


@dataclass(frozen=True)
class Champion:
    """The probe behind `<registered_model>@champion` and the cell of the feature service it reads."""

    registered_model: str
    version: int
    probe: Pipeline
    service: str
    service_object: Any  # feast.FeatureService, looked up once
    view: str
    push_views: list[str]  # the views its push source writes (the feature service's view)
    kind: str  # "sparse" or "binary"
    model: str
    layer: int
    sae: str
    pooling: str
    threshold: float | None
    op: str


@dataclass(frozen=True)
class Latent:
    latent: int
    coefficient: float  # the probe's weight on this latent's input value, signed toward the returned label
    activation: float  # the value the probe read (pooled code, or 1 when binarized)
    contribution: float  # coefficient x activation: its share of the decision's logit


@dataclass(frozen=True)
class Score:
    text_id: str
    label: str
    label_id: int
    probability: float  # of the returned label
    registered_model: str
    model_version: int
    feature_service: str
    top_latents: list[Latent]


def load_champion(store: Any, registered_model: str, version: int) -> Champion:
    """Version `version` of `registered_model` (a logged probe) and the Feast cell its run's `feature_service` names."""
    import mlflow

    client = mlflow.MlflowClient()
    model_version = client.get_model_version(registered_model, str(version))
    service = client.get_run(model_version.run_id).data.tags.get("feature_service") if model_version.run_id else None
    if not service:
        raise SaefsError(f"{registered_model} v{version} has no run tagged feature_service: register probes logged "
                         "by train_probes")
    service_object = store.get_feature_service(service)
    view = service_object.feature_view_projections[0].name
    tags = dict(store.get_feature_view(view).tags)
    if tags.get("kind") not in PUSHABLE_KINDS:
        raise SaefsError(f"{registered_model} v{version} reads {view}, a {tags.get('kind')} view; the service scores "
                         f"SAE probes only (views of kind {list(PUSHABLE_KINDS)})")
    probe = mlflow.sklearn.load_model(f"models:/{registered_model}/{version}")
    threshold = tags.get("threshold")
    return Champion(registered_model, version, probe, service, service_object, view, push_views(store, view),
                    tags["kind"], tags["model"], int(tags["layer"]), tags["sae"], tags["pooling"],
                    None if threshold is None else float(threshold), tags.get("op", ">"))


def explain(probe: Pipeline, frame: pd.DataFrame, predicted: np.ndarray, top: int) -> list[list[Latent]]:
    """Per row, the `top` latents by contribution toward its predicted class (an index into `classes_`).

    The contribution of a latent is the linear classifier's weight times the value it saw after
    the probe's scaling, i.e. its term of the logit; `coefficient` is that weight brought back to
    the probe's input (contribution / activation). Probes without coefficients (trees) explain nothing.
    """
    search = probe.steps[-1][1]
    best = getattr(search, "best_estimator_", search)
    steps = best.steps if isinstance(best, Pipeline) else [("clf", best)]
    clf = steps[-1][1]
    if top == 0 or not hasattr(clf, "coef_"):
        return [[] for _ in range(len(frame))]
    inputs = sparse.csr_matrix(probe[:-1].transform(frame))  # columns (and binarize): what the probe reads
    scaled = inputs
    for _, step in steps[:-1]:
        scaled = step.transform(scaled)
    scaled = sparse.csr_matrix(scaled)
    selected = dict(steps).get("select")
    latents = selected.selected_ if selected is not None else np.arange(inputs.shape[1])
    inputs = inputs[:, latents]
    out = []
    for row, label in enumerate(predicted):
        # Binary logistic regression has one row of weights, toward classes_[1].
        weights = clf.coef_[0] * (1.0 if label == 1 else -1.0) if clf.coef_.shape[0] == 1 else clf.coef_[label]
        columns = scaled[row].indices
        contributions = scaled[row].data * weights[columns]
        activations = inputs[row].toarray()[0, columns]
        order = np.argsort(-contributions, kind="stable")[:top]
        out.append([Latent(int(latents[columns[i]]), float(contributions[i] / activations[i]),
                           float(activations[i]), float(contributions[i])) for i in order])
    return out


class Scorer:
    """Scores texts of the served datasets with their champions; safe to call from several threads."""

    def __init__(self, store: Any, registered_models: Mapping[str, str], load_lm: LmLoader, load_sae: SaeLoader,
                 settings: ExtractSettings, label_names: Mapping[str, Sequence[str]], *, top_latents: int,
                 champion_poll_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.registered_models = dict(registered_models)
        self.settings = settings
        self.label_names = {name: list(labels) for name, labels in label_names.items()}
        self.top_latents = top_latents
        self.champion_poll_s = champion_poll_s
        self._load_lm, self._load_sae, self._clock = load_lm, load_sae, clock
        self._lms: dict[str, tuple[Any, Any]] = {}
        self._saes: dict[tuple[str, int, str], Any] = {}
        self._champions: dict[str, tuple[Champion, float]] = {}  # dataset -> (champion, when the alias was checked)
        # One forward at a time: extraction hooks the model's blocks; Feast's SQLite store shares one connection.
        self._champion_lock, self._forward_lock, self._store_lock = threading.Lock(), threading.Lock(), threading.Lock()

    def champion(self, dataset: str) -> Champion:
        """The dataset's champion, reloaded when the alias moved since the last check."""
        name = self._registered(dataset)
        with self._champion_lock:
            cached = self._champions.get(dataset)
            now = self._clock()
            if cached is not None and now - cached[1] < self.champion_poll_s:
                return cached[0]
            version = tracking.get_alias_version(name, tracking.CHAMPION)
            if version is None:
                self._champions.pop(dataset, None)
                raise NoChampion(f"{name} has no champion yet: run `dvc repro promote@{dataset}` until a probe passes "
                                 f"the gates, or `python -m pipelines.promote {dataset} --rollback --to <version>`")
            champion = cached[0] if cached is not None and cached[0].version == version else None
            if champion is None:
                champion = load_champion(self.store, name, version)
                log.info("%s@champion is version %d (%s)", name, version, champion.service)
            self._champions[dataset] = (champion, now)
            return champion

    def status(self) -> dict[str, int | None]:
        """Champion version per served dataset (None: no champion)."""
        versions: dict[str, int | None] = {}
        for dataset in self.registered_models:
            try:
                versions[dataset] = self.champion(dataset).version
            except NoChampion:
                versions[dataset] = None
        return versions

    def warm_up(self) -> None:
        """Load every champion with its language model and SAE now, rather than on the first request."""
        for dataset in self.registered_models:
            try:
                champion = self.champion(dataset)
            except NoChampion as err:
                log.warning("%s", err)
                continue
            self._encoders(champion)

    def score_texts(self, dataset: str, texts: Sequence[str]) -> list[Score]:
        """Features of new texts -> online store (push) -> champion's feature service -> probe."""
        champion = self.champion(dataset)
        ids = [text_id(dataset, text) for text in texts]
        codes = self.encode(champion, texts)
        with self._store_lock:
            push_codes(self.store, champion.push_views, champion.kind, ids, codes, datetime.now(UTC))
            frame = online_frame(self.store, champion.service_object, champion.kind, ids)
        return self._predict(dataset, champion, ids, frame)

    def score_stored(self, dataset: str, text_ids: Sequence[str]) -> list[Score]:
        """Texts already in the online store, by text_id."""
        champion = self.champion(dataset)
        with self._store_lock:
            frame = online_frame(self.store, champion.service_object, champion.kind, text_ids)
        missing = missing_rows(frame)
        if missing:
            raise UnknownText(f"text_ids {[text_ids[i] for i in missing][:5]} have no features in {champion.view} "
                              "online: score the text itself (POST /score) to add it")
        return self._predict(dataset, champion, list(text_ids), frame)

    def encode(self, champion: Champion, texts: Sequence[str]) -> sparse.csr_matrix:
        """Pooled codes of `texts` in the champion's cell, as its view holds them (binarized or not)."""
        (lm, tokenizer), sae = self._encoders(champion)
        s = self.settings
        with self._forward_lock:
            out = extract(lm, tokenizer, texts, [champion.layer], {champion.layer: {champion.sae: sae}},
                          [champion.pooling], max_tokens=s.max_tokens, batch_size=s.batch_size,
                          include_bos=s.include_bos, paper_compat=s.paper_compat, progress=False)
        codes = out.codes[champion.layer, champion.sae, champion.pooling]
        if champion.kind == "binary":
            codes = binarize_codes(codes, champion.threshold, champion.op)  # type: ignore[arg-type]
        return codes

    def _encoders(self, champion: Champion) -> tuple[tuple[Any, Any], Any]:
        with self._forward_lock:
            if champion.model not in self._lms:
                self._lms[champion.model] = self._load_lm(champion.model)
            key = (champion.model, champion.layer, champion.sae)
            if key not in self._saes:
                self._saes[key] = self._load_sae(*key)
            return self._lms[champion.model], self._saes[key]

    def _predict(self, dataset: str, champion: Champion, ids: Sequence[str], frame: pd.DataFrame) -> list[Score]:
        probabilities = champion.probe.predict_proba(frame)
        predicted = probabilities.argmax(axis=1)
        classes = champion.probe.classes_
        names = self.label_names.get(dataset, [])
        explanations = explain(champion.probe, frame, predicted, self.top_latents)
        scores = []
        for row, index in enumerate(predicted):
            label_id = int(classes[index])
            label = names[label_id] if 0 <= label_id < len(names) else str(label_id)
            scores.append(Score(ids[row], label, label_id, float(probabilities[row, index]), champion.registered_model,
                                champion.version, champion.service, explanations[row]))
        return scores

    def _registered(self, dataset: str) -> str:
        if dataset not in self.registered_models:
            raise SaefsError(f"dataset {dataset!r} is not served; serve.datasets: {sorted(self.registered_models)}")
        return self.registered_models[dataset]
