"""Paired comparisons the report makes, all from per-text prediction rows on the same resamples.

Per (dataset, model), and per dataset across models (fits renamed `<model>/<fit>`; every model of a
dataset shares its prepared texts and resamples, which is checked), the best SAE probe is compared
with the best dense probe, the last-token hidden-state probe (the paper's baseline) and TF-IDF on
macro F1 and AUROC; per layer, the detection gap is the best dense probe minus the best SAE probe
at that layer. Every "best" is chosen on validation macro F1, never on test. Each difference is the
corrected resampled t over the shared resamples (`features.core.predictions.compare`), and the
p-values of every distinct test one report prints are Holm-corrected together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from features.core.evidence import holm
from features.core.predictions import TEST, compare, resample_metrics
from features.errors import SaefsError
from features.reporting.report import ranked

METRICS = ("macro_f1", "roc_auc")
CALLED = 0.05  # a paired difference is called a win or a loss only where its Holm-corrected p is below this
COLUMNS = ["scope", "dataset", "model", "comparison", "sae", "other", "metric", "difference", "low", "high", "p",
           "p_holm", "resamples"]


def best_fit(cells: pd.DataFrame, mask: pd.Series) -> str | None:
    """The fit (cell name) with the best validation macro F1 among the logistic-regression cells in `mask`."""
    pool = ranked(cells[mask])
    return None if pool.empty else str(pool["fit"].iloc[0])


def _test_texts(frame: pd.DataFrame) -> dict[int, frozenset]:
    """Per resample, the texts its test part holds (every fit of one file is scored on the same ones)."""
    first = frame[(frame["split"] == TEST) & (frame["fit"] == frame["fit"].iloc[0])]
    return {int(r): frozenset(ids) for r, ids in first.groupby("resample")["text_id"]}


def check_same_splits(dataset: str, frames: Mapping[str, pd.DataFrame]) -> None:
    """Refuse to pool models whose prediction files hold different test texts for a resample: their
    differences would not be paired (one file is stale, or the resamples changed in between)."""
    splits = {model: _test_texts(frame) for model, frame in frames.items()}
    first = next(iter(splits))
    differ = sorted(model for model, texts in splits.items() if texts != splits[first])
    if differ:
        raise SaefsError(f"{dataset}: the prediction files of {differ} and {first} hold different test texts for "
                         f"the same resamples, so no paired comparison across models: rerun `dvc repro "
                         f"train_probes` for {dataset}")


def _pairs(cells: pd.DataFrame, tfidf: str) -> dict[str, tuple[str, str]]:
    """What the best SAE fit is compared with: {comparison: (sae fit, other fit)}, where both exist."""
    sae = best_fit(cells, cells["features"] == "sae")
    if sae is None:
        return {}
    others = {"best dense": best_fit(cells, cells["features"] == "hidden"),
              "last-token hidden": best_fit(cells, (cells["features"] == "hidden") & (cells["pooling"] == "last")),
              "TF-IDF": tfidf}
    return {name: (sae, other) for name, other in others.items() if other is not None}


def _rows(table: pd.DataFrame, pairs: dict[str, tuple[str, str]], scope: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for comparison, (sae, other) in pairs.items():
        for metric in METRICS:
            if table.loc[table["fit"].isin([sae, other]), metric].isna().all():
                continue  # AUROC is undefined where a test part lacks a class: nothing to compare
            try:
                result = compare(table, sae, other, metric)
            except SaefsError as err:  # fewer than two shared resamples: say so, never a number
                rows.append({**scope, "comparison": comparison, "sae": sae, "other": other, "metric": metric,
                             "note": str(err)})
                continue
            rows.append({**scope, "comparison": comparison, "sae": sae, "other": other, "metric": metric,
                         "difference": result["mean"], "low": result["low"], "high": result["high"],
                         "p": result["p_value"], "resamples": result["n"]})
    return rows


def paired_table(cells: pd.DataFrame, predictions: Mapping[tuple[str, str], pd.DataFrame],
                 labels: Mapping[str, list[Any]]) -> pd.DataFrame:
    """Every paired comparison of the report, per (dataset, model) and per dataset across models.

    `cells` is `report.cells_frame` (a `fit` column names each cell's prediction rows), `predictions`
    the train_probes prediction rows per (dataset, model), `labels` each dataset's classes.
    """
    rows: list[dict[str, Any]] = []
    for dataset in sorted({d for d, _ in predictions}):
        models = sorted(m for d, m in predictions if d == dataset)
        check_same_splits(dataset, {m: predictions[dataset, m] for m in models})
        pooled_tables, pooled_cells = [], []
        for model in models:
            table = resample_metrics(predictions[dataset, model], labels[dataset])
            mine = cells[(cells["dataset"] == dataset) & (cells["model"] == model)]
            rows += _rows(table, _pairs(mine, "tfidf"), {"scope": "model", "dataset": dataset, "model": model})
            pooled_tables.append(table.assign(fit=model + "/" + table["fit"]))
            pooled_cells.append(mine.assign(fit=model + "/" + mine["fit"]))
        if len(pooled_tables) > 1:  # TF-IDF reads no model: any model's copy of its fit is the same texts' scores
            table, mine = pd.concat(pooled_tables), pd.concat(pooled_cells)
            rows += _rows(table, _pairs(mine, f"{mine['model'].min()}/tfidf"),
                          {"scope": "dataset", "dataset": dataset, "model": "all"})
    return pd.DataFrame(rows).reindex(columns=[*COLUMNS, "note"])


def detection_gaps(cells: pd.DataFrame, predictions: Mapping[tuple[str, str], pd.DataFrame],
                   labels: Mapping[str, list[Any]]) -> pd.DataFrame:
    """Per (dataset, model, layer): the best dense probe minus the best SAE probe at that layer, macro F1."""
    rows = []
    for (dataset, model), frame in sorted(predictions.items()):
        table = resample_metrics(frame, labels[dataset])
        mine = cells[(cells["dataset"] == dataset) & (cells["model"] == model)]
        for layer in sorted(mine["layer"].unique()):
            at = mine["layer"] == layer
            dense = best_fit(mine, at & (mine["features"] == "hidden"))
            sae = best_fit(mine, at & (mine["features"] == "sae"))
            if dense is None or sae is None:
                continue
            scope = {"scope": "layer", "dataset": dataset, "model": model, "layer": int(layer)}
            try:
                result = compare(table, dense, sae)
            except SaefsError as err:
                rows.append({**scope, "dense": dense, "sae": sae, "note": str(err)})
                continue
            rows.append({**scope, "dense": dense, "sae": sae, "gap": result["mean"], "low": result["low"],
                         "high": result["high"], "p": result["p_value"], "resamples": result["n"]})
    return pd.DataFrame(rows).reindex(columns=["dataset", "model", "layer", "dense", "sae", "gap", "low", "high",
                                               "p", "p_holm", "resamples", "note"])


def _tested(table: pd.DataFrame) -> list[tuple[str, str, frozenset]]:
    """What each row tested: its dataset, metric and two fits named with their model (a pooled row's fits
    already are). The same test printed twice (best dense is the last-token probe; a pooled best is one
    model's) is one member of the Holm family, not two."""
    a, b = ("sae", "other") if "other" in table else ("dense", "sae")
    return [(row["dataset"], row.get("metric", "macro_f1"), frozenset(
        fit if row.get("scope") == "dataset" else f"{row['model']}/{fit}" for fit in (row[a], row[b])))
        for row in table.to_dict("records")]


def with_holm(*tables: pd.DataFrame) -> list[pd.DataFrame]:
    """The tables with `p_holm`: Holm's step-down over every distinct test they hold together (the report's family)."""
    keys = [_tested(table) for table in tables]
    family: dict[tuple, float] = {}
    for table, tested in zip(tables, keys, strict=True):
        for key, p in zip(tested, table["p"], strict=True):
            if pd.notna(p):
                family.setdefault(key, p)
    adjusted = dict(zip(family, holm(list(family.values())), strict=True)) if family else {}
    out = []
    for table, tested in zip(tables, keys, strict=True):
        p_holm = [adjusted[key] if pd.notna(p) else None for key, p in zip(tested, table["p"], strict=True)]
        out.append(table.assign(p_holm=p_holm))
    return out
