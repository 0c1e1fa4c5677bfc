"""Paired comparisons the report makes, all from per-text prediction rows on the same resamples.

Per (dataset, model), and per dataset across models (fits renamed `<model>/<fit>`; every model of a
dataset shares its prepared texts and resamples), the best SAE probe is compared with the best
dense probe, the last-token hidden-state probe (the paper's baseline) and TF-IDF on macro F1 and
AUROC; per layer, the detection gap is the best dense probe minus the best SAE probe at that layer.
Every "best" is chosen on validation macro F1, never on test. Each difference is the corrected
resampled t over the shared resamples (`features.core.predictions.compare`), and the p-values of
everything one report prints are Holm-corrected together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from features.core.evidence import holm
from features.core.predictions import compare, resample_metrics
from features.errors import SaefsError

METRICS = ("macro_f1", "roc_auc")
AGAINST = {"best dense": "dense", "last-token hidden": "last", "TF-IDF": "tfidf"}
COLUMNS = ["scope", "dataset", "model", "comparison", "sae", "other", "metric", "difference", "low", "high", "p",
           "p_holm", "resamples"]


def best_fit(cells: pd.DataFrame, mask: pd.Series) -> str | None:
    """The fit (cell name) with the best validation macro F1 among the logistic-regression cells in `mask`."""
    pool = cells[mask & (cells["variant"] == "logreg")]
    if pool.empty:
        return None
    return str(pool.sort_values(["val_macro_f1", "fit"], ascending=[False, True])["fit"].iloc[0])


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
        pooled_tables, pooled_cells = [], []
        for model in sorted(m for d, m in predictions if d == dataset):
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


def with_holm(*tables: pd.DataFrame) -> list[pd.DataFrame]:
    """The tables with `p_holm`: Holm's step-down over every p-value they hold together (the report's family)."""
    pvalues = [p for table in tables for p in table["p"].dropna()]
    adjusted = iter(holm(pvalues)) if pvalues else iter(())
    out = []
    for table in tables:
        table = table.copy()
        table["p_holm"] = [next(adjusted) if pd.notna(p) else None for p in table["p"]]
        out.append(table)
    return out
