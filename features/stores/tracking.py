"""MLflow, reached through one thin module: runs, logged probes, registry aliases, promotion gates.

`import mlflow` costs seconds, so it happens inside the functions that talk to MLflow; the pure
promotion logic (`promotion_decision`) needs none of it.

Registry conventions (MLflow 3: aliases, never stages):
  * `champion` serves, `challenger` waits for its gate; `models:/<name>@champion` loads the server's model.
  * `set_alias` also appends the version to the registered-model tag `saefs.alias_history.<alias>`
    (a JSON list, oldest first) and stamps the version with `<alias>_since` (UTC, ISO 8601), so
    `rollback` knows which version held the alias before, without a second store.
  * MLflow keeps no history of an alias, so every move of `champion` is also appended to the tag
    `saefs.alias_log.champion` (version, when, why; a rollback included) and shown as a table in the
    registered model's description, where the UI renders it. Each registered version carries its
    promotion story in its description (`annotate_version`): decision, gates and their evidence,
    feature service, the DVC hashes of its data and features.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field

from features.core.config import Strict
from features.errors import SaefsError
from features.stores.services import check_bucket, check_mlflow, display_address

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import ActiveRun
    from mlflow.models.model import ModelInfo

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "saefs.alias_history.{alias}"
LOG_TAG = "saefs.alias_log.{alias}"
LOGGED_MOVES = 30  # of the alias log kept in its tag (MLflow caps a tag value at 5,000 characters)
SINCE_TAG = "{alias}_since"
ROLLED_BACK_TAG = "{alias}_rolled_back"
CELL_TAG = "saefs.cell"  # a probe run's feature cell, as one JSON object (`cell_tag`, `logged_cell`)
# What a logged probe needs to load: the flavour's libraries and skops (the serialization format).
# `features` itself must be importable where it loads (install saefs, or pass code_paths).
PROBE_REQUIREMENTS = ("scikit-learn", "scipy", "numpy", "pandas", "pyarrow", "skops")
TRUSTED_MODULES = ("features.", "sklearn.")  # skops types a probe may hold: ours and scikit-learn's


# --- tracking ------------------------------------------------------------------------------------

def store_uris(tracking_uri_default: str) -> tuple[str, str]:
    """The tracking and registry URIs `configure` points MLflow at (without importing it)."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri_default
    return tracking_uri, os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri


def configure(tracking_uri_default: str) -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI` if set, else at the caller's default (e.g. `sqlite:////abs/mlflow.db`).

    The registry follows `MLFLOW_REGISTRY_URI` if set, else the tracking URI. Returns the tracking URI.
    """
    import mlflow

    exported = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    tracking_uri, registry_uri = store_uris(tracking_uri_default)
    check_mlflow(tracking_uri)  # a server or database that is down fails here, before any run starts
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    # MLflow also exports both URIs to os.environ; undo that, or the next configure() in this
    # process would take this default for the user's choice.
    for key, value in exported.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return tracking_uri


def experiment(name: str, artifact_location: str | None = None) -> str:
    """Get or create the experiment `name` (restoring it if deleted), make it current, return its id.

    `artifact_location` applies only on creation: MLflow never moves an experiment's artifacts.
    """
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None and artifact_location and artifact_location.startswith("s3://"):
        check_bucket("MLflow artifact store", artifact_location, os.environ.get("MLFLOW_S3_ENDPOINT_URL"))
    if found is None:
        experiment_id = client.create_experiment(name, artifact_location=artifact_location)
    else:
        experiment_id = found.experiment_id
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def start_parent(name: str, tags: Mapping[str, Any] | None = None,
                 params: Mapping[str, Any] | None = None) -> Iterator[ActiveRun]:
    """A top-level run (one grid sweep or one training job) in the current experiment."""
    import mlflow

    with mlflow.start_run(run_name=name, tags=_strings(tags)) as run:
        if params:
            mlflow.log_params(dict(params))
        yield run


@contextlib.contextmanager
def child_run(name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None) -> Iterator[ActiveRun]:
    """A nested run (one grid cell) under the active parent run."""
    import mlflow

    if mlflow.active_run() is None:
        raise SaefsError(f"child run {name!r} needs an active parent run: open one with start_parent() first")
    with mlflow.start_run(run_name=name, nested=True, tags=_strings(tags)) as run:
        if params:
            mlflow.log_params(dict(params))
        yield run


def log_metrics(metrics: Mapping[str, float | None], step: int | None = None) -> None:
    """Log the metrics that exist: None (undefined, e.g. ROC AUC on one class) is left out, not logged as 0."""
    import mlflow

    mlflow.log_metrics({key: float(value) for key, value in metrics.items() if value is not None}, step=step)


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """A result row's finite numbers, what MLflow can log of it as metrics (texts, flags and NaN left out)."""
    return {key: float(value) for key, value in row.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    """Attach a file (a prediction table, a figure) to the active run."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def _strings(tags: Mapping[str, Any] | None) -> dict[str, str] | None:
    return {key: str(value) for key, value in tags.items()} if tags else None


# --- logged probes ------------------------------------------------------------------------------

def probe_requirements() -> list[str]:
    """Exact pins of what loading a probe needs, from this environment (no inference subprocess)."""
    return [f"{package}=={installed_version(package)}" for package in PROBE_REQUIREMENTS]


def log_probe(pipeline: Any, input_example: pd.DataFrame, name: str = "model",
              registered_model_name: str | None = None, pip_requirements: Sequence[str] | None = None,
              pyfunc_predict_fn: str = "predict_proba", code_paths: Sequence[str] | None = None) -> ModelInfo:
    """Log a fitted probe (skops format) with a signature of its input frame and its `pyfunc_predict_fn` output.

    The signature holds the frame's list columns as MLflow `Array` columns (`latent_ids:
    Array(long)`), so `mlflow.pyfunc` accepts exactly what Feast returns: lists or numpy arrays
    per row; a None row (a text the store does not hold) is refused by schema enforcement.
    The served model returns class probabilities by default (`predict_proba`); the sklearn
    flavour keeps `predict`.
    """
    import mlflow
    from mlflow.models import infer_signature

    if len(input_example) == 0:
        raise SaefsError("log_probe needs a non-empty input_example (a few rows of the training frame) to infer "
                         "the model signature")
    example = input_example.head(3)
    signature = infer_signature(example, getattr(pipeline, pyfunc_predict_fn)(example))
    return mlflow.sklearn.log_model(
        pipeline, name=name, signature=signature, input_example=example,
        registered_model_name=registered_model_name,
        pip_requirements=list(pip_requirements) if pip_requirements is not None else probe_requirements(),
        skops_trusted_types=trusted_types(pipeline), pyfunc_predict_fn=pyfunc_predict_fn,
        code_paths=list(code_paths) if code_paths else None)


def trusted_types(pipeline: Any) -> list[str]:
    """The types skops must be told to trust to load `pipeline`: ours and scikit-learn's, nothing else."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    foreign = [name for name in untrusted if not name.startswith(TRUSTED_MODULES)]
    if foreign:
        raise SaefsError(f"the probe holds types {foreign} from outside {list(TRUSTED_MODULES)}; skops would refuse "
                         "to load them: build probes from scikit-learn and features/core/probes.py estimators")
    return untrusted


def cell_tag(cell: Mapping[str, Any]) -> dict[str, str]:
    """The run tag that records the feature cell a probe reads (its Feast feature service, model, layer, SAE
    width, pooling, binarization), so that whoever serves the probe computes the same features."""
    return {CELL_TAG: json.dumps(dict(cell), sort_keys=True)}


def logged_cell(name: str, version: int) -> dict[str, Any]:
    """The feature cell (`cell_tag`) of the run that logged version `version` of the registered model `name`."""
    import mlflow

    client = mlflow.MlflowClient()
    run_id = client.get_model_version(name, str(version)).run_id
    tags = client.get_run(run_id).data.tags if run_id else {}
    if CELL_TAG not in tags:
        raise SaefsError(f"{name} v{version} was logged without its feature cell (run tag {CELL_TAG}): register "
                         "probes logged by train_probes")
    return json.loads(tags[CELL_TAG])


# --- registry -----------------------------------------------------------------------------------

def registered_name(dataset: str) -> str:
    """The registered model whose `champion` serves `dataset`."""
    return f"saefs-{dataset}"


def register(model_uri: str, name: str) -> int:
    """Register a logged model (`models:/m-...` or `runs:/...`) as a new version of `name`; returns the version."""
    import mlflow

    return int(mlflow.register_model(model_uri, name).version)


def get_alias_version(name: str, alias: str) -> int | None:
    """The version `name@alias` points at, or None if the model or the alias does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    # By error code, never by message: a missing registered model is RESOURCE_DOES_NOT_EXIST (sqlite and REST
    # stores); a missing alias is read from the model's alias map, since get_model_version_by_alias reports it
    # as INVALID_PARAMETER_VALUE, the code of an invalid alias name too.
    try:
        aliases = mlflow.MlflowClient().get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return int(aliases[alias]) if alias in aliases else None


def set_alias(name: str, alias: str, version: int, why: str = "promoted") -> None:
    """Point `name@alias` at `version` and record it in the alias history and log (see the module docstring)."""
    import mlflow

    client = mlflow.MlflowClient()
    previous = get_alias_version(name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    now = _now()
    client.set_model_version_tag(name, str(version), SINCE_TAG.format(alias=alias), now)
    history = alias_history(name, alias)
    if not history or history[-1] != version:
        _write_history(name, alias, [*history, version])
    if alias == CHAMPION and previous != version:
        moves = [*alias_log(name, alias), {"version": version, "since": now, "why": why}][-LOGGED_MOVES:]
        client.set_registered_model_tag(name, LOG_TAG.format(alias=alias), json.dumps(moves))
        client.update_registered_model(name, description=alias_log_markdown(alias, moves))


def alias_log(name: str, alias: str) -> list[dict[str, Any]]:
    """Every move of `alias` (the last LOGGED_MOVES), oldest first: {"version", "since", "why"}."""
    import mlflow

    tags = mlflow.MlflowClient().get_registered_model(name).tags
    return json.loads(tags.get(LOG_TAG.format(alias=alias), "[]"))


def alias_log_markdown(alias: str, moves: Sequence[Mapping[str, Any]]) -> str:
    """The registered model's description: who held `alias` and when, newest first."""
    rows = [f"| {move['version']} | {move['since']} | {until} | {move['why']} |"
            for move, until in zip(reversed(moves), ["now", *(m["since"] for m in reversed(moves))], strict=False)]
    return "\n".join([f"**`{alias}` history** (saefs, newest first)", "", "| version | from (UTC) | until | why |",
                      "|---|---|---|---|", *rows])


def annotate_version(name: str, version: int, description: str, tags: Mapping[str, Any]) -> None:
    """Write a registered version's promotion story where the MLflow UI shows it: description and tags."""
    import mlflow

    client = mlflow.MlflowClient()
    client.update_model_version(name, str(version), description=description)
    for key, value in (_strings(tags) or {}).items():
        client.set_model_version_tag(name, str(version), key, value)


def alias_history(name: str, alias: str) -> list[int]:
    """The versions that held `alias`, oldest first, as `set_alias` and `rollback` recorded them."""
    import mlflow

    tags = mlflow.MlflowClient().get_registered_model(name).tags
    return [int(v) for v in json.loads(tags.get(HISTORY_TAG.format(alias=alias), "[]"))]


def rollback(name: str, alias: str = CHAMPION, to_version: int | None = None) -> int:
    """Move `name@alias` back to the version that held it before (or to `to_version`); returns that version.

    The rolled-back version leaves the end of the history and is tagged `<alias>_rolled_back`, so
    a second rollback goes one further back instead of returning to it. Versions deleted since
    they held the alias are skipped.
    """
    import mlflow

    client = mlflow.MlflowClient()
    current = get_alias_version(name, alias)
    if to_version is not None:
        client.get_model_version(name, str(to_version))  # fails clearly if the version does not exist
        target = to_version
    else:
        existing = {int(v.version) for v in client.search_model_versions(f"name = '{name}'")}
        history = alias_history(name, alias)
        while history and (history[-1] == current or history[-1] not in existing):
            history.pop()
        if not history:
            raise SaefsError(f"{name}@{alias} has no earlier version to roll back to (history "
                             f"{alias_history(name, alias)}): pass to_version= or promote a version")
        target = history[-1]
        _write_history(name, alias, history)  # ends at the target, so set_alias below appends nothing
    if current is not None and current != target:
        client.set_model_version_tag(name, str(current), ROLLED_BACK_TAG.format(alias=alias), _now())
    set_alias(name, alias, target, why=f"rolled back from version {current}")
    return target


def _write_history(name: str, alias: str, versions: list[int]) -> None:
    import mlflow

    mlflow.MlflowClient().set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(versions))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- receipts: what a stage left in the store, checked before DVC trusts it ------------------

def store_address(tracking_uri: str) -> str:
    """The tracking store as a receipt records it: a SQLite/file URI as given, a database or server as
    `<scheme>://host:port[/database]`, never a credential."""
    scheme = urlsplit(tracking_uri).scheme
    if scheme in ("", "file") or scheme.startswith("sqlite"):
        return tracking_uri
    return f"{scheme.split('+', 1)[0]}://{display_address(tracking_uri)}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def logged_model_files(model_uris: Sequence[str]) -> dict[str, str | None]:
    """Each logged model's (`models:/m-...`) MLmodel file, a local path or its artifact URI; None for a model the
    store no longer holds: no record, or no MLmodel file in its artifacts (the database kept, the folder deleted)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, files = mlflow.MlflowClient(), {}
    for uri in model_uris:
        try:
            location = client.get_logged_model(uri.removeprefix("models:/")).artifact_location
            listed = mlflow.artifacts.list_artifacts(artifact_uri=location)
            present = any(PurePosixPath(item.path).name == "MLmodel" for item in listed)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            present = False
        if not present:
            files[uri] = None
            continue
        parts = urlsplit(location)
        files[uri] = (str(Path(unquote(parts.path)) / "MLmodel") if parts.scheme in ("", "file")
                      else f"{location.rstrip('/')}/MLmodel")
    return files


def missing_registration(name: str, version: int | None, champion: int | None) -> str | None:
    """Why the registry no longer holds what a promotion recorded (`name` v`version`, and a `champion` alias
    when it set one), or None when it does. A champion moved since (a rollback) still counts as held."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if version is not None:
            client.get_model_version(name, str(version))
        if champion is not None and get_alias_version(name, CHAMPION) is None:
            return f"{name} has no {CHAMPION} alias"
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return f"{name} v{version} is not registered"
    return None


# --- promotion ----------------------------------------------------------------------------------

# Keys of the candidate's and the baselines' metric dicts (test-split macro F1 each; MACRO_F1_LOW: the
# lower 95% bound of the candidate's, INCUMBENT_LOW: of the candidate minus the champion on the same texts).
MACRO_F1, MACRO_F1_LOW, TRANSFER_F1 = "macro_f1", "macro_f1_low", "transfer_macro_f1"
HIDDEN_F1, TRANSFER_MAJORITY_F1 = "hidden_macro_f1", "transfer_majority_macro_f1"
INCUMBENT_LOW = "minus_champion_low"


class ChampionGates(Strict):
    """The gates of every champion (params.yaml's promote group extends them); None turns a gate off."""

    min_macro_f1: float = Field(ge=0, description="above 1 can never pass: promote reports it and moves no alias")
    gate_statistic: Literal["point", "lower"] = Field(
        "point", description="what min_macro_f1 judges: the registered fit's test macro F1, or the lower bound of "
        "its 95% bootstrap interval over the test texts")
    max_drop_vs_hidden: float | None = Field(description="may trail the best hidden-state probe by this much "
                                             "(negative: must lead it by as much)")
    non_inferiority_margin: float | None = Field(
        0.02, ge=0, description="the challenger may be worse than the champion on the same test texts by at most "
        "this macro F1, at 95% confidence (paired bootstrap); None turns the comparison off")


class Thresholds(ChampionGates):
    """Promotion gates: the champion's, and the transfer gate of its features' source model."""

    min_transfer_f1: float | None = None  # transfer (other model, language or dataset) gate, off by default
    min_transfer_margin: float = 0.05  # and at least this far above the transfer set's majority floor

    def impossible(self) -> list[str]:
        """Why these gates can never pass, whatever the probe; empty if a perfect probe could pass them.

        Macro F1 lies in [0, 1], so a minimum above 1, a required lead over the hidden-state probe
        above 1 (max_drop_vs_hidden < -1) or a transfer margin above 1 is unreachable.
        """
        transfer = self.min_transfer_f1 is not None
        needs = {"min_macro_f1": self.min_macro_f1, "min_transfer_f1": self.min_transfer_f1,
                 "max_drop_vs_hidden": None if self.max_drop_vs_hidden is None else -self.max_drop_vs_hidden,
                 "min_transfer_margin": self.min_transfer_margin if transfer else None}
        return [f"{key}={getattr(self, key)} can never pass (macro F1 lies in [0, 1]): set it so that a perfect "
                "probe would pass" for key, need in needs.items() if need is not None and need > 1.0]


@dataclass(frozen=True)
class Check:
    """One gate, always of the form value >= threshold (value None: a metric that was not measured)."""

    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    checks: list[Check] = field(default_factory=list)

    def summary(self, incumbent: int | None = None) -> str:
        """The verdict and each check; `incumbent` is the version that held champion before (None: none did)."""
        verdict = "promote" if self.promote else verdict_without_promotion(incumbent)
        return f"{verdict}: " + "; ".join(f"{'ok' if c.passed else 'FAIL'} {c.detail}" for c in self.checks)


def verdict_without_promotion(incumbent: int | None) -> str:
    return "no champion yet" if incumbent is None else f"keep the champion (v{incumbent})"


def promotion_decision(candidate: Mapping[str, float], baselines: Mapping[str, float],
                       thresholds: Thresholds) -> Decision:
    """Whether a candidate probe may become champion; every gate is a `Check` (value >= threshold).

    `candidate`: `macro_f1` and its `macro_f1_low`, and `transfer_macro_f1` when the transfer gate is on.
    `baselines`: `hidden_macro_f1` (the hidden-state probe of the same cell), `transfer_majority_macro_f1`
    and, when a champion exists, `minus_champion_low` (None if it could not be compared). A metric
    the gate needs but nobody measured fails the gate: promotion fails closed.
    """
    checks = [Check("thresholds", None, 0.0, False, f"thresholds: {reason}") for reason in thresholds.impossible()]
    floor = MACRO_F1 if thresholds.gate_statistic == "point" else MACRO_F1_LOW
    shown = "macro F1" if floor == MACRO_F1 else "macro F1's lower 95% bound"
    checks += [_check(floor, candidate.get(floor), thresholds.min_macro_f1,
                      f"{shown} {{value}} >= {thresholds.min_macro_f1}")]
    if thresholds.max_drop_vs_hidden is not None:
        checks.append(_check("macro_f1_minus_hidden", _difference(candidate.get(MACRO_F1), baselines.get(HIDDEN_F1)),
                             -thresholds.max_drop_vs_hidden,
                             f"macro F1 minus the hidden-state probe's ({baselines.get(HIDDEN_F1)}) {{value}} "
                             f">= -{thresholds.max_drop_vs_hidden}"))
    if thresholds.non_inferiority_margin is not None and INCUMBENT_LOW in baselines:
        checks.append(_check(INCUMBENT_LOW, baselines[INCUMBENT_LOW], -thresholds.non_inferiority_margin,
                             "macro F1 minus the champion's on the same test texts, lower 95% bound {value} "
                             f">= -{thresholds.non_inferiority_margin}"))
    if thresholds.min_transfer_f1 is not None:
        transfer = candidate.get(TRANSFER_F1)
        checks.append(_check(TRANSFER_F1, transfer, thresholds.min_transfer_f1,
                             f"transfer macro F1 {{value}} >= {thresholds.min_transfer_f1}"))
        checks.append(_check("transfer_minus_majority", _difference(transfer, baselines.get(TRANSFER_MAJORITY_F1)),
                             thresholds.min_transfer_margin,
                             f"transfer macro F1 minus the majority floor's ({baselines.get(TRANSFER_MAJORITY_F1)}) "
                             f"{{value}} >= {thresholds.min_transfer_margin}"))
    return Decision(promote=all(c.passed for c in checks), checks=checks)


def _check(name: str, value: float | None, threshold: float, detail: str) -> Check:
    passed = value is not None and value >= threshold  # NaN fails too
    shown = "missing" if value is None else f"{value:.4f}"
    return Check(name, value, float(threshold), bool(passed), f"{name}: " + detail.format(value=shown))


def _difference(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or baseline is None else float(value) - float(baseline)


def mlflow_validation(decision: Decision) -> tuple[bool, str]:
    """Re-run a decision's checks through `mlflow.validate_evaluation_results` (offline, no model needed).

    Each check becomes `MetricThreshold(threshold, greater_is_better=True)` on a metric of the same
    name; a missing value is left out of the metrics, which MLflow reports as a failure. Returns
    MLflow's verdict and its message, for logging beside `promotion_decision`'s, which stays the source.
    """
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    thresholds = {c.name: MetricThreshold(threshold=float(c.threshold), greater_is_better=True)
                  for c in decision.checks}
    metrics = {c.name: float(c.value) for c in decision.checks if c.value is not None}
    try:
        mlflow.validate_evaluation_results(thresholds, EvaluationResult(metrics=metrics, artifacts={}))
    except ModelValidationFailedException as err:
        return False, err.message
    return True, "all checks passed"
