"""Stage promote: register the best probe of a dataset as `challenger`; move `champion` only if it passes.

The candidate is the probe with the best validation macro F1 (out of fold, mean over resamples)
over every model and SAE cell of the dataset (the test split chooses nothing). What is registered
is the candidate's fit on the prepared split (resample 0), and every gate judges that fit's own
predictions on the prepared test texts, read from train_probes' prediction file:

  * its macro F1 (or, with `promote.gate_statistic: lower`, the lower bound of its 95% bootstrap
    interval over the test texts) is at least `promote.min_macro_f1`;
  * it trails the best hidden-state probe (also chosen on validation) by at most
    `promote.max_drop_vs_hidden`;
  * when a champion exists, it is not worse than the champion on the same test texts: the lower
    95% bound of the paired bootstrap difference of macro F1 (challenger minus champion, the
    champion rescored now through its own feature service) lies above `-promote.non_inferiority_margin`;
  * when `promote.transfer_gates` names the candidate's model, its features must also have
    predicted the gate's target model's correctness on the gate's task (plots/transfer/cross_model.csv)
    with macro F1 at least `min_macro_f1` and `min_margin` above that cell's majority floor.

The gates are also run through MLflow's `validate_evaluation_results`. The report (JSON, and an
MLflow run) says what was compared and why the alias moved or stayed, and lists the candidate's ten most
weighted latents with their cards (label, density, top contexts: the latent_cards stage), and its shortcut
audit: the share of its absolute weight on latents that fire on surface features (punctuation, URLs,
mentions, capitals, length, boilerplate) or mark a class alone (features.core.shortcuts), which and why.
A receipt (data/tracking/promote/) records the version and champion left in the registry, for check_stores.

    python -m pipelines.promote <dataset>                      # the stage
    python -m pipelines.promote <dataset> --rollback [--to N]  # champion back to the previous (or N)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from features.core.evidence import paired_difference
from features.core.naming import sae_name
from features.core.predictions import TEST, check_texts, macro_f1
from features.core.probes import influential_latents, selected_latents
from features.core.shortcuts import ClassFirings, audit, audit_latent, class_firings
from features.errors import SaefsError
from features.reporting.promotion import version_story
from features.sources.fingerprint import locked_outputs
from features.sources.sae import DENSE_DENSITY
from features.stores import tracking
from features.stores.cards import CardStore, UnknownLatent, card_summary, open_cards
from features.stores.files import write_json
from pipelines import cost, paths, run_cli
from pipelines.params import Params, TransferGate, load_params

log = logging.getLogger("saefs.promote")
INFLUENTIAL = 10  # latents of the candidate the report lists with their cards


def _best(cells: dict[str, dict[str, Any]]) -> tuple[str | None, dict[str, Any]]:
    if not cells:
        return None, {}
    name = max(cells, key=lambda k: cells[k].get("val_macro_f1", -1.0))
    return name, cells[name]


def transfer_check(source: str, gate: TransferGate) -> dict[str, Any]:
    """The cross-model cell a gate needs; macro F1 None (the gate fails closed) when it was skipped or not run."""
    where = paths.transfer_table("cross_model")
    table = pd.read_csv(where) if where.is_file() else pd.DataFrame(columns=["task", "source", "target"])
    cell = table[(table["task"] == gate.task) & (table["source"] == source) & (table["target"] == gate.target)]
    row = cell.iloc[0].to_dict() if len(cell) else {"status": f"missing from {where}: run the transfer stage"}
    ok = row.get("status") == "ok"
    return {"task": gate.task, "source": source, "target": gate.target, "status": row["status"],
            tracking.TRANSFER_F1: float(row["macro_f1"]) if ok else None,
            tracking.TRANSFER_MAJORITY_F1: float(row["majority_f1"]) if ok else None}


def run(dataset: str) -> dict[str, Any]:
    params = load_params()
    params.dataset(dataset)
    sae_cells, hidden_cells, baselines, skipped = {}, {}, {}, {}
    for model in params.sae:
        results = json.loads(paths.probe_metrics(dataset, model).read_text())
        for name, cell in results["cells"].items():
            (hidden_cells if cell["input"] == "dense" else sae_cells)[name] = cell | {"model": model}
        baselines[model] = results["baselines"]
        skipped |= results.get("skipped", {})
    candidate_name, candidate = _best(sae_cells)
    hidden_name, hidden = _best(hidden_cells)
    if candidate_name is None:
        return _nothing_to_promote(dataset, skipped, baselines, params.promote.tracking_uri)
    gate = params.promote.transfer_gates.get(candidate["model"])
    transfer = transfer_check(candidate["model"], gate) if gate else None
    thresholds = tracking.Thresholds(**params.promote.model_dump(include=set(tracking.ChampionGates.model_fields)),
                                     min_transfer_f1=gate.min_macro_f1 if gate else None,
                                     min_transfer_margin=gate.min_margin if gate else 0.0)
    tracking_uri = tracking.configure(params.promote.tracking_uri)
    tracking.experiment(f"saefs/{dataset}")
    name = tracking.registered_name(dataset)
    previous = tracking.get_alias_version(name, tracking.CHAMPION)
    versus = (incumbent_comparison(dataset, name, previous, candidate_name, candidate["model"], params)
              if previous is not None and params.promote.non_inferiority_margin is not None else None)
    # The gates judge the registered model itself (the resample-0 fit train_probes logged), not a mean.
    decision = tracking.promotion_decision(
        {tracking.MACRO_F1: candidate["logged_macro_f1"], tracking.MACRO_F1_LOW: candidate.get("logged_macro_f1_low"),
         tracking.TRANSFER_F1: (transfer or {}).get(tracking.TRANSFER_F1)},
        {tracking.HIDDEN_F1: hidden.get("logged_macro_f1"),
         tracking.TRANSFER_MAJORITY_F1: (transfer or {}).get(tracking.TRANSFER_MAJORITY_F1),
         **({tracking.INCUMBENT_LOW: versus["low"]} if versus and versus["low"] is not None else {})}, thresholds)
    mlflow_passed, mlflow_message = tracking.mlflow_validation(decision)
    version = tracking.register(candidate["model_uri"], name)
    tracking.set_alias(name, tracking.CHALLENGER, version)
    if decision.promote and mlflow_passed:
        tracking.set_alias(name, tracking.CHAMPION, version)
    champion = tracking.get_alias_version(name, tracking.CHAMPION)
    service = feature_service(name, version)
    relied, shortcut_audit = relied_on(dataset, candidate, service, params)
    report = {
        "dataset": dataset, "registered_model": name, "candidate": {"cell": candidate_name, **candidate},
        "influential_latents": relied, "shortcut_audit": shortcut_audit,
        "hidden_baseline": {"cell": hidden_name, **hidden}, "other_baselines": baselines, "transfer_check": transfer,
        "versus_champion": versus,
        "challenger_version": version, "previous_champion": previous, "champion": champion,
        "promoted": champion == version and previous != version,
        "decision": decision.summary(previous), "checks": [asdict(c) for c in decision.checks],
        "mlflow_validation": {"passed": mlflow_passed, "message": mlflow_message}, "skipped_cells": skipped,
    }
    data = locked_outputs(paths.DVC_LOCK, upstream_stages(dataset, candidate["model"]))
    tracking.annotate_version(name, version, *version_story(report, service or "not recorded by its run", data))
    with tracking.start_parent(f"promote:{dataset}", tags={"stage": "promote", "dataset": dataset,
                                                          "registered_model": name}):
        tracking.log_metrics({"candidate_macro_f1": candidate["logged_macro_f1"],
                              "candidate_macro_f1_low": candidate.get("logged_macro_f1_low"),
                              "candidate_roc_auc": candidate.get("logged_roc_auc"),
                              "candidate_recall_at_1fpr": candidate.get("logged_recall_at_1fpr"),
                              "hidden_macro_f1": hidden.get("logged_macro_f1"),
                              "shortcut_weight_share": shortcut_audit["flagged_weight_share"],
                              "minus_champion": (versus or {}).get("difference"),
                              "minus_champion_low": (versus or {}).get("low"),
                              "promoted": float(report["promoted"])})
        import mlflow

        mlflow.log_dict(report, "promotion_report.json")
    write_json(paths.promotion_report(dataset), report)
    write_receipt(dataset, tracking_uri, name, version, champion)
    log.info("%s: %s v%d (%s): %s", dataset, name, version, candidate_name, report["decision"])
    return report


def feature_service(name: str, version: int) -> str | None:
    """The feature service the version's run recorded (train_probes tags every probe it logs); None, warned,
    where its run recorded none."""
    try:
        return tracking.logged_cell(name, version)["feature_service"]
    except SaefsError as err:
        log.warning("%s", err)
        return None


def upstream_stages(dataset: str, model: str) -> list[str]:
    """The stages whose data and features a candidate of `dataset` on `model` was trained on."""
    return [f"prepare_data@{dataset}", f"extract@{model}-{dataset}", f"build_features@{model}",
            f"train_probes@{model}-{dataset}"]


def relied_on(dataset: str, candidate: dict[str, Any], service: str | None,
              params: Params) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The candidate's INFLUENTIAL most weighted latents (features.core.probes.influential_latents), each with
    its card's label, density and top contexts, so a reviewer sees what the model relies on; and the shortcut
    audit (features.core.shortcuts) of every latent it weighs, on their cards and its training texts."""
    import mlflow

    probe = mlflow.sklearn.load_model(candidate["model_uri"])
    weights = [(latent, weight) for latent, weight in influential_latents(probe, selected_latents(probe).size)
               if weight]
    cards = candidate_cards(candidate)
    card_of = {latent: cards.card(latent) for latent, _ in weights} if cards else {}
    firings, texts = training_firings(dataset, probe, service, params)
    findings = {latent: audit_latent(latent, card_of.get(latent), firings, pooling=candidate["pooling"],
                                     dense_density=DENSE_DENSITY) for latent, _ in weights}
    shortcut_audit = audit(weights, findings, {latent: card["label"] for latent, card in card_of.items()}) | {
        "evidence": {"cards": cards.folder.name if cards else None, "training_texts": texts}}
    relied = [{"latent": latent, "weight": round(weight, 4)} | (card_summary(card_of[latent]) if cards else {})
              | {"shortcuts": [finding.kind for finding in findings[latent]]}
              for latent, weight in weights[:INFLUENTIAL]]
    return relied, shortcut_audit


def candidate_cards(candidate: dict[str, Any]) -> CardStore | None:
    """The cards of the candidate's SAE, or None (warned) when latent_cards has not built them."""
    try:
        return open_cards(paths.cards_dir(candidate["model"]), sae_name(candidate["layer"], candidate["width"]))
    except UnknownLatent as err:
        log.warning("%s: the promotion report lists latent ids without cards, and audits them without", err)
        return None


def training_firings(dataset: str, probe: Any, service: str | None,
                     params: Params) -> tuple[ClassFirings | None, int | str]:
    """Per class, the training texts each latent is on in, in the registered probe's own input (its feature
    service through Feast, then its column and binarize steps), and how many texts; or None and why not."""
    from feast.errors import FeastObjectNotFoundException
    from mlflow.exceptions import MlflowException

    if service is None:
        return None, "not read: the probe's run recorded no feature service"
    try:
        prepared = pd.read_parquet(paths.prepared(dataset))
        train = prepared[prepared["split"] == "train"].reset_index(drop=True)
        inputs = probe[:-1].transform(service_frame(service, train, params))
    except (FeastObjectNotFoundException, SaefsError, MlflowException) as err:
        log.warning("%s: the shortcut audit goes without the training texts: %s", dataset, err)
        return None, f"not read: {err}"
    return class_firings(inputs, train["label"], list(params.dataset(dataset).class_names)), len(train)


def gated_predictions(dataset: str, model: str, fit: str, text_ids: Any) -> pd.DataFrame:
    """The registered fit's own predictions on the prepared test texts (train_probes' resample 0), by text id."""
    where = paths.probe_predictions(dataset, model)
    if not where.is_file():
        raise SaefsError(f"{where} is missing: rerun train_probes for {model}/{dataset} (dvc repro)")
    frame = pd.read_parquet(where)
    check_texts(frame, text_ids, str(where))
    rows = frame[(frame["fit"] == fit) & (frame["resample"] == 0) & (frame["split"] == TEST)]
    if rows.empty:
        raise SaefsError(f"{where} holds no test predictions of {fit}: rerun train_probes for {model}/{dataset}")
    return rows.set_index("text_id")


def incumbent_comparison(dataset: str, name: str, incumbent: int, fit: str, model: str,
                         params: Params) -> dict[str, Any]:
    """Challenger minus the champion in office on the prepared test texts: macro F1, paired bootstrap.

    A champion that cannot be rescored (its model's artifacts or its feature views are gone) cannot
    serve either: the comparison records why and has no bound, so the challenger is judged on the
    floors alone and may replace it.
    """
    from feast.errors import FeastObjectNotFoundException
    from mlflow.exceptions import MlflowException

    prepared = pd.read_parquet(paths.prepared(dataset))
    test = prepared[prepared["split"] == "test"].reset_index(drop=True)
    challenger = gated_predictions(dataset, model, fit, prepared["text_id"])["y_pred"].reindex(test["text_id"])
    service = tracking.logged_cell(name, incumbent)["feature_service"]
    out: dict[str, Any] = {"champion": incumbent, "champion_cell": service, "n": len(test)}
    try:
        champion = champion_predictions(name, incumbent, service, test, params)
    except (FeastObjectNotFoundException, SaefsError, MlflowException) as err:
        log.warning("%s: champion v%d cannot be rescored, so it cannot serve either; the challenger is judged on "
                    "the floors alone: %s", dataset, incumbent, err)
        return out | {"low": None, "error": f"champion v{incumbent} ({service}) cannot be rescored: {err}"}
    labels = np.unique(prepared["label"]).tolist()
    return out | paired_difference(test["label"].to_numpy(), challenger.to_numpy(), champion,
                                   lambda truth, guess: macro_f1(truth, guess, labels))


def champion_predictions(name: str, version: int, service: str, texts: pd.DataFrame, params: Params) -> np.ndarray:
    """Version `version`'s labels for `texts` (text_id, event_timestamp), read now through its feature service."""
    import mlflow

    return mlflow.sklearn.load_model(f"models:/{name}/{version}").predict(service_frame(service, texts, params))


def service_frame(service: str, texts: pd.DataFrame, params: Params) -> pd.DataFrame:
    """The feature service's columns for `texts` (text_id, event_timestamp), read now from the offline store."""
    from features.stores.feast.retrieval import historical_frame
    from pipelines.stores import feature_store

    X, _ = historical_frame(feature_store(params.feast_apply), service, texts[["text_id", "event_timestamp"]])
    return X


def write_receipt(dataset: str, tracking_uri: str, name: str, version: int | None, champion: int | None) -> None:
    """What this promotion left in the registry; check_stores deletes it when the registry loses it (DVC reruns)."""
    write_json(paths.promotion_receipt(dataset), {"tracking_store": tracking.store_address(tracking_uri),
                                                  "registered_model": name, "version": version,
                                                  "champion": champion})


def _nothing_to_promote(dataset: str, skipped: dict, baselines: dict, tracking_uri: str) -> dict[str, Any]:
    """No SAE cell was probed (all skipped): report it, register nothing, move no alias."""
    name = tracking.registered_name(dataset)
    tracking_uri = tracking.configure(tracking_uri)
    tracking.experiment(f"saefs/{dataset}")
    reasons = sorted({cell["reason"] for cell in skipped.values()})
    champion = tracking.get_alias_version(name, tracking.CHAMPION)
    report = {"dataset": dataset, "registered_model": name, "candidate": None, "challenger_version": None,
              "champion": champion, "promoted": False,
              "decision": f"{tracking.verdict_without_promotion(champion)}: no SAE cell could be probed "
                          f"({len(skipped)} skipped: " + "; ".join(reasons) + ")",
              "checks": [], "skipped_cells": skipped, "other_baselines": baselines}
    with tracking.start_parent(f"promote:{dataset}", tags={"stage": "promote", "dataset": dataset,
                                                          "registered_model": name, "status": "nothing to promote"}):
        import mlflow

        mlflow.log_dict(report, "promotion_report.json")
    write_json(paths.promotion_report(dataset), report)
    write_receipt(dataset, tracking_uri, name, None, champion)
    log.error("%s: %s", dataset, report["decision"])
    return report


def _rollback_or_run(args: argparse.Namespace) -> None:
    if args.rollback:
        tracking.configure(load_params().promote.tracking_uri)
        version = tracking.rollback(tracking.registered_name(args.dataset), tracking.CHAMPION, args.to)
        log.info("%s: champion is now version %d", tracking.registered_name(args.dataset), version)
    else:
        with cost.recording(paths.stage_cost("promote", args.dataset)):  # the DVC stage (stage_main's record)
            run(args.dataset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a key of `datasets` in params.yaml")
    parser.add_argument("--rollback", action="store_true", help="move champion back to the version before it")
    parser.add_argument("--to", type=int, help="with --rollback: the version to move champion to")
    return run_cli(parser, argv, _rollback_or_run)


if __name__ == "__main__":
    sys.exit(main())
