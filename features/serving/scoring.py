"""Scoring texts with a dataset's champion probe, through the online store, with explanations.

A new text goes the way of the batch pipeline: `features.forward.extract.extract` (the same truncated
forward, SAE encoding and pooling, with the `extract` params) gives its pooled codes in the
champion's cell, binarized as its view is; they are pushed to the online store, the champion's
feature service is read back from it, and the probe (`models:/<name>@champion`, resolved to
its version) predicts. A stored text skips the first two steps. Each answer names the model
version and the latents that drove it: coefficient x activation, in the probe's input space.

Language models and SAEs load once per process, when a champion first needs them. The champion
alias is looked up again every `champion_poll_s` seconds; when it moved, the new version (and
its feature service, which may name another model or cell, with that model and SAE) is loaded
whole by the one request that noticed, outside every lock scoring takes, then swapped in: the
dataset's other requests, and every other dataset's, keep scoring with the current champion
meanwhile, and no request sees a half-loaded one.

Errors say whose fault they are: `BadTexts` (the request's texts), `UnknownText` (a text_id the
store lacks), `NoChampion` and `Unavailable` (the registry or a store failed: may pass); any other
SaefsError here is the server's configuration.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from scipy import sparse
from sklearn.pipeline import Pipeline

from features.core.binarize import binarize_codes
from features.core.naming import sae_name
from features.core.prepare import text_id
from features.core.probes import Latent, explain
from features.errors import SaefsError
from features.forward.extract import EmptyTexts, extract
from features.forward.settings import ExtractSettings
from features.serving.explain import TokenActivations, token_activations
from features.serving.online import PUSHABLE_KINDS, missing_rows, online_frame, push_codes, push_views
from features.stores import tracking
from features.stores.cards import CardStore, UnknownLatent, card_summary

log = logging.getLogger("saefs.serve")

T = TypeVar("T")
LmLoader = Callable[[str], tuple[Any, Any]]  # model name -> (causal LM, tokenizer)
SaeLoader = Callable[[str, int, str], Any]  # (model name, layer, SAE width) -> SAE
CardsLoader = Callable[[str, str], CardStore]  # (model name, SAE name) -> its latent cards


class NoChampion(SaefsError):
    """The dataset's registered model has no `champion` alias (yet): nothing may serve."""


class UnknownText(SaefsError):
    """A text_id the online store holds no features for."""


class BadTexts(SaefsError):
    """Texts of a request that cannot be scored (no token, or not encodable as UTF-8); `rows` are their positions."""

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows


class Unavailable(SaefsError):
    """The model registry, the Feast registry or the online store failed or was unreachable: it may pass."""


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Failures of a service the scorer reads, rather than of its configuration or code."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    errors: list[type[BaseException]] = [OSError, sqlite3.OperationalError, OperationalError, MlflowException]
    try:  # the cluster profile's online store; the embedded one does not install a client
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        errors += [RedisConnectionError, RedisTimeoutError]
    except ImportError:
        pass
    return tuple(errors)


def service_call(what: str, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)`, its failure named after `what`: Unavailable when it may pass, else a SaefsError."""
    try:
        return call(*args)
    except SaefsError:
        raise
    except _transient_errors() as err:
        raise Unavailable(f"{what} failed ({type(err).__name__}: {err})") from err
    except Exception as err:
        raise SaefsError(f"{what} failed ({type(err).__name__}: {err}): check the service's configuration") from err


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
class CardedLatent(Latent):
    """A latent behind a decision, with what its card says: label, density, its top contexts (peak in «»)."""

    label: str | None = None  # None: the SAE has no cards (`dvc repro latent_cards`)
    density: float | None = None
    contexts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Score:
    text_id: str
    label: str
    label_id: int
    probability: float  # of the returned label
    registered_model: str
    model_version: int
    feature_service: str
    top_latents: list[CardedLatent]


def load_champion(store: Any, registered_model: str, version: int,
                  registry_lock: AbstractContextManager[Any] | None = None) -> Champion:
    """Version `version` of `registered_model` (a logged probe) and the feature cell its run recorded.

    The Feast registry is read under `registry_lock` (the lock of the scorer's store: Feast loads and
    refreshes its registry cache on first use, unguarded); MLflow is read outside it.
    """
    import mlflow

    cell = service_call("the MLflow registry and tracking server", tracking.logged_cell, registered_model, version)
    with registry_lock or nullcontext():
        service_object, kind, views = service_call("the Feast registry", _service, store, cell["feature_service"])
    view = service_object.feature_view_projections[0].name
    if kind not in PUSHABLE_KINDS:
        raise SaefsError(f"{registered_model} v{version} reads {view}, a {kind} view; the service scores SAE probes "
                         f"only (views of kind {list(PUSHABLE_KINDS)})")
    probe = service_call(f"loading {registered_model} v{version} from MLflow", mlflow.sklearn.load_model,
                         f"models:/{registered_model}/{version}")
    return Champion(registered_model, version, probe, cell["feature_service"], service_object, view, views, kind,
                    cell["model"], cell["layer"], cell["width"], cell["pooling"], cell["binarize"], cell["op"])


def _service(store: Any, service: str) -> tuple[Any, str | None, list[str]]:
    """The feature service object, its view's kind (how the store holds it) and the views its push source
    writes, from the registry."""
    from feast.errors import FeastObjectNotFoundException

    try:
        service_object = store.get_feature_service(service)
        view = service_object.feature_view_projections[0].name
        kind = store.get_feature_view(view).tags.get("kind")
    except FeastObjectNotFoundException as err:
        raise SaefsError(f"{err}: the champion reads {service!r}, which this Feast registry lacks; run `dvc repro "
                         "feast_apply` with the feature_repo it was trained on") from err
    return service_object, kind, push_views(store, view) if kind in PUSHABLE_KINDS else []


def _file_identity(path: Path | None) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`: a rename onto it changes them; None without a file."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


class Scorer:
    """Scores texts of the served datasets with their champions; safe to call from several threads."""

    def __init__(self, store: Any, registered_models: Mapping[str, str], load_lm: LmLoader, load_sae: SaeLoader,
                 settings: ExtractSettings, label_names: Mapping[str, Sequence[str]], *, top_latents: int,
                 champion_poll_s: float, clock: Callable[[], float] = time.monotonic,
                 reopen_store: Callable[[], Any] | None = None, store_file: Path | None = None,
                 load_cards: CardsLoader | None = None) -> None:
        self.store = store
        # materialize swaps a new SQLite file in by rename; Feast's connection keeps the file it opened
        # (whole, but old, and pushes to it are lost): reopen when the file at `store_file` is another one.
        self._reopen_store, self._store_file = reopen_store, store_file
        self._store_identity = _file_identity(store_file)
        self.registered_models = dict(registered_models)
        self.settings = settings
        self.label_names = {name: list(labels) for name, labels in label_names.items()}
        self.top_latents = top_latents
        self.champion_poll_s = champion_poll_s
        self._load_lm, self._load_sae, self._clock = load_lm, load_sae, clock
        self._load_cards = load_cards
        self._cards: dict[tuple[str, str], CardStore] = {}  # (model, SAE name) -> its cards, once opened
        self._without_cards: set[tuple[str, str]] = set()  # SAEs found without cards (logged once)
        self._lms: dict[str, tuple[Any, Any]] = {}
        self._saes: dict[tuple[str, int, str], Any] = {}
        self._champions: dict[str, tuple[Champion, float]] = {}  # dataset -> (champion, when the alias was checked)
        self._problems: dict[str, str] = {}  # dataset -> why its last alias check or load failed
        # _state_lock guards the dicts above for an instant, never across I/O. One refresh (alias look-up,
        # load) per dataset at a time; loads of language models and SAEs one at a time. One forward at a
        # time: extraction hooks the model's blocks. Feast's SQLite store shares one connection, and its
        # registry cache is loaded and refreshed unguarded: every store call holds _store_lock.
        self._state_lock, self._load_lock = threading.Lock(), threading.Lock()
        self._forward_lock, self._store_lock = threading.Lock(), threading.Lock()
        self._refreshing = {dataset: threading.Lock() for dataset in self.registered_models}

    def champion(self, dataset: str) -> Champion:
        """The dataset's champion, reloaded when the alias moved since the last check.

        While another thread checks or loads, the current champion answers; only a dataset with none
        loaded yet waits for it.
        """
        self._registered(dataset)
        with self._state_lock:
            cached = self._champions.get(dataset)
        if cached is not None and self._clock() - cached[1] < self.champion_poll_s:
            return cached[0]
        refreshing = self._refreshing[dataset]
        if cached is None:
            refreshing.acquire()
        elif not refreshing.acquire(blocking=False):
            return cached[0]  # another thread checks or loads: the current champion answers meanwhile
        try:
            return self._refresh(dataset)
        finally:
            refreshing.release()

    def status(self) -> dict[str, int | None]:
        """Version of the champion each served dataset scores with now (None: none loaded); never waits.

        A dataset without one, or whose alias check is due, is checked in a background thread, so a
        readiness probe neither waits for a model load nor leaves the service unready for good.
        """
        with self._state_lock:
            current = {dataset: self._champions.get(dataset) for dataset in self.registered_models}
        now = self._clock()
        for dataset, cached in current.items():
            if cached is None or now - cached[1] >= self.champion_poll_s:
                threading.Thread(target=self._refresh_quietly, args=(dataset,), daemon=True,
                                 name=f"saefs-champion-{dataset}").start()
        return {dataset: None if cached is None else cached[0].version for dataset, cached in current.items()}

    def problems(self) -> dict[str, str]:
        """Per dataset, why its last alias check or champion load failed (none: it succeeded)."""
        with self._state_lock:
            return dict(self._problems)

    def warm_up(self) -> None:
        """Load every champion with its language model and SAE now, rather than on the first request."""
        for dataset in self.registered_models:
            try:
                self.champion(dataset)
            except SaefsError as err:
                log.warning("%s", err)

    def _current_store(self) -> Any:
        """The online store, reopened if materialize replaced its SQLite file since it was opened. Holds
        _store_lock's caller."""
        identity = _file_identity(self._store_file)
        if self._reopen_store is not None and identity != self._store_identity:
            log.info("the online store %s was replaced (materialize): reopening it", self._store_file)
            self.store = service_call("reopening the online store", self._reopen_store)
            self._store_identity = identity
        return self.store

    def score_texts(self, dataset: str, texts: Sequence[str]) -> list[Score]:
        """Features of new texts -> online store (push) -> champion's feature service -> probe."""
        return self.score_many([dataset], texts)[dataset]

    def score_many(self, datasets: Sequence[str], texts: Sequence[str]) -> dict[str, list[Score]]:
        """`texts` scored by the champion of each of `datasets`: one batched forward per language model their
        champions read, however many datasets share it; then per dataset push, read back and predict."""
        unencodable = [row for row, text in enumerate(texts) if not _utf8(text)]
        if unencodable:
            raise BadTexts(f"texts at rows {unencodable[:10]} are not valid Unicode (lone surrogates): send UTF-8 "
                           "text", unencodable)
        champions = {dataset: self.champion(dataset) for dataset in dict.fromkeys(datasets)}
        try:
            codes = self.encode(champions, texts)
        except EmptyTexts as err:
            raise BadTexts(f"{err}; a text needs a word the tokenizer knows", err.rows) from err
        scored = {}
        for dataset, champion in champions.items():
            ids = [text_id(dataset, text) for text in texts]
            with self._store_lock:
                store = self._current_store()
                service_call("writing to the online store", push_codes, store, champion.push_views, champion.kind,
                             ids, codes[dataset], datetime.now(UTC))
                frame = service_call("reading the online store", online_frame, store, champion.service_object,
                                     champion.kind, ids)
            scored[dataset] = self._predict(dataset, champion, ids, frame)
        return scored

    def score_stored(self, dataset: str, text_ids: Sequence[str]) -> list[Score]:
        """Texts already in the online store, by text_id."""
        champion = self.champion(dataset)
        with self._store_lock:
            frame = service_call("reading the online store", online_frame, self._current_store(),
                                 champion.service_object, champion.kind, text_ids)
        missing = missing_rows(frame)
        if missing:
            raise UnknownText(f"text_ids {[text_ids[i] for i in missing][:5]} have no features in {champion.view} "
                              "online: score the text itself (POST /score) to add it")
        return self._predict(dataset, champion, list(text_ids), frame)

    def encode(self, champions: Mapping[str, Champion], texts: Sequence[str]) -> dict[str, sparse.csr_matrix]:
        """Per dataset, the pooled codes of `texts` in its champion's cell, as its view holds them (binarized or
        not). Champions reading the same language model share one forward: every layer, SAE and pooling
        they need is taken from it."""
        by_model: dict[str, dict[str, Champion]] = {}
        for dataset, champion in champions.items():
            by_model.setdefault(champion.model, {})[dataset] = champion
        s, codes = self.settings, {}
        for group in by_model.values():
            saes: dict[int, dict[str, Any]] = {}
            for champion in group.values():
                lm_and_tokenizer, sae = self._encoders(champion)
                saes.setdefault(champion.layer, {})[champion.sae] = sae
            poolings = sorted({champion.pooling for champion in group.values()})
            with self._forward_lock:
                out = extract(*lm_and_tokenizer, texts, sorted(saes), saes, poolings, max_tokens=s.max_tokens,
                              batch_size=s.batch_size, include_bos=s.pools_bos, paper_compat=s.paper_compat,
                              progress=False)
            for dataset, champion in group.items():
                pooled = out.codes[champion.layer, champion.sae, champion.pooling]
                if champion.kind == "binary":
                    pooled = binarize_codes(pooled, champion.threshold, champion.op)  # type: ignore[arg-type]
                codes[dataset] = pooled
        return codes

    def _refresh(self, dataset: str) -> Champion:
        """Look the alias up and load a moved champion whole, outside the locks scoring takes; then swap it in.

        A failed check or load keeps the current champion serving (logged, and retried at the next
        poll); with none loaded, the error goes to the caller.
        """
        name = self.registered_models[dataset]
        with self._state_lock:
            cached = self._champions.get(dataset)
        checked = self._clock()
        try:
            version = service_call("the MLflow model registry", tracking.get_alias_version, name, tracking.CHAMPION)
            if version is None:
                raise NoChampion(f"{name} has no champion yet: run `dvc repro promote@{dataset}` until a probe passes "
                                 f"the gates, or `python -m pipelines.promote {dataset} --rollback --to <version>`")
            if cached is not None and cached[0].version == version:
                champion = cached[0]
            else:
                champion = load_champion(self.store, name, version, self._store_lock)
                self._encoders(champion)  # its language model and SAE too: a champion is swapped in whole
                log.info("%s@champion is version %d (%s)", name, version, champion.service)
        except NoChampion as err:
            with self._state_lock:
                self._champions.pop(dataset, None)
                self._problems[dataset] = str(err)
            raise
        except SaefsError as err:
            with self._state_lock:
                self._problems[dataset] = str(err)
                if cached is not None:
                    self._champions[dataset] = (cached[0], checked)
            if cached is None:
                raise
            log.error("%s@champion could not be checked or loaded; still serving version %d: %s", name,
                      cached[0].version, err)
            return cached[0]
        with self._state_lock:
            self._champions[dataset] = (champion, checked)
            self._problems.pop(dataset, None)
        return champion

    def _refresh_quietly(self, dataset: str) -> None:
        """`_refresh` for a background check: skipped while one runs; its failure is logged and kept in `problems`."""
        refreshing = self._refreshing[dataset]
        if not refreshing.acquire(blocking=False):
            return
        try:
            self._refresh(dataset)
        except SaefsError as err:
            log.warning("%s", err)
        except Exception:
            log.exception("checking the champion of %s failed", dataset)
        finally:
            refreshing.release()

    def _encoders(self, champion: Champion) -> tuple[tuple[Any, Any], Any]:
        """The champion's language model and SAE, loaded once per process (never under the forward lock)."""
        key = (champion.model, champion.layer, champion.sae)
        with self._state_lock:
            if champion.model in self._lms and key in self._saes:
                return self._lms[champion.model], self._saes[key]
        with self._load_lock:
            if champion.model not in self._lms:
                lm = service_call(f"loading the language model {champion.model}", self._load_lm, champion.model)
                with self._state_lock:
                    self._lms[champion.model] = lm
            if key not in self._saes:
                sae = service_call(f"loading the SAE {key}", self._load_sae, *key)
                with self._state_lock:
                    self._saes[key] = sae
            return self._lms[champion.model], self._saes[key]

    def explain(self, dataset: str, text: str) -> tuple[Score, TokenActivations, Champion]:
        """`text` scored by the dataset's champion, where in it the latents behind the score fire, and the
        champion (whose model and SAE name the latents' cards)."""
        [score] = self.score_texts(dataset, [text])
        champion = self.champion(dataset)
        if champion.version != score.model_version:
            raise Unavailable(f"{champion.registered_model}@champion moved while explaining a score: retry")
        (lm, tokenizer), sae = self._encoders(champion)
        with self._forward_lock:
            tokens = token_activations(lm, tokenizer, sae, champion.layer, text,
                                       [latent.latent for latent in score.top_latents], self.settings)
        return score, tokens, champion

    def card(self, model: str, sae: str, latent: int) -> dict[str, Any]:
        """The whole card of one latent; UnknownLatent names an unknown model, SAE or id."""
        return self._card_store(model, sae).card(latent)

    def _card_store(self, model: str, sae: str) -> CardStore:
        """The cards of one SAE, opened once (a store rereads its files itself when latent_cards rebuilds them)."""
        key = (model, sae)
        if key not in self._cards:
            if self._load_cards is None:
                raise UnknownLatent("this service reads no latent cards")
            store = self._load_cards(model, sae)
            with self._state_lock:
                self._cards[key] = store
        return self._cards[key]

    def _cards_of(self, champion: Champion) -> CardStore | None:
        key = (champion.model, sae_name(champion.layer, champion.sae))
        if self._load_cards is None or key in self._without_cards:
            return None
        try:
            return self._card_store(*key)
        except UnknownLatent as err:
            log.warning("%s: scores carry latent ids without labels", err)
            with self._state_lock:
                self._without_cards.add(key)
            return None

    def _predict(self, dataset: str, champion: Champion, ids: Sequence[str], frame: pd.DataFrame) -> list[Score]:
        probabilities = champion.probe.predict_proba(frame)
        predicted = probabilities.argmax(axis=1)
        classes = champion.probe.classes_
        names = self.label_names.get(dataset, [])
        explanations = explain(champion.probe, frame, predicted, self.top_latents)
        cards = self._cards_of(champion)
        scores = []
        for row, index in enumerate(predicted):
            label_id = int(classes[index])
            label = names[label_id] if 0 <= label_id < len(names) else str(label_id)
            scores.append(Score(ids[row], label, label_id, float(probabilities[row, index]), champion.registered_model,
                                champion.version, champion.service,
                                [_carded(latent, cards) for latent in explanations[row]]))
        return scores

    def _registered(self, dataset: str) -> str:
        if dataset not in self.registered_models:
            raise SaefsError(f"dataset {dataset!r} is not served: serve.datasets in params.yaml lists "
                             f"{sorted(self.registered_models)}; add it there to score with its champion")
        return self.registered_models[dataset]


def _carded(latent: Latent, cards: CardStore | None) -> CardedLatent:
    return CardedLatent(**asdict(latent), **(card_summary(cards.card(latent.latent)) if cards else {}))


def _utf8(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (JSON's \\ud800 escapes decode to lone surrogates, which do not)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
