"""The paper's three questions, answered from the marginal sweeps train_probes fits (features.core.design):
which layer; which SAE width and pooling; whether, and where, to binarize.

Per model and axis, the values are ranked by validation macro F1 averaged over the datasets (never by test),
and the best value is compared with every other one, paired on the same resamples: per dataset (the
corrected resampled t over its splits) and over datasets (each split's differences averaged over the datasets,
then the same t). Every p-value the three sections print is Holm-corrected as one family; an answer says
"no difference detectable" where none of its comparisons is called. Hidden-state probes sit beside the SAE
layer sweep, and the detection gap per layer is the report's (features.reporting.comparisons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.core.design import AXES
from features.core.evidence import corrected_resampled_t, holm
from features.core.predictions import compare, resample_metrics
from features.errors import SaefsError
from features.reporting.report import ranked, threshold_label

CALLED = 0.05
POOLED = "over datasets"
COLUMNS = ["scope", "dataset", "model", "axis", "value", "best", "macro_f1", "macro_f1_low", "macro_f1_high",
           "val_macro_f1", "difference", "low", "high", "p", "p_holm", "resamples"]


def centers(probes: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, the center its sweeps share (binarize as tables name it); {} for a run fitted as a full grid."""
    found: dict[str, dict[str, Any]] = {}
    for (dataset, model), results in sorted(probes.items()):
        center = (results.get("design") or {}).get("center")
        if center is None:
            continue
        center = center | {"binarize": threshold_label(center["binarize"])}
        if found.setdefault(model, center) != center:
            raise SaefsError(f"{model}: {dataset}'s probes were swept around {center}, other datasets' around "
                             f"{found[model]}: rerun `dvc repro train_probes` so that every dataset shares one design")
    return found


def along(cells: pd.DataFrame, model: str, center: Mapping[str, Any], axis: str) -> pd.DataFrame:
    """The SAE logistic-regression cells of `model` that vary `axis` only, the other axes at `center`, in the
    order train_probes fitted them (the configured order of the axis's values)."""
    mine = cells[(cells["model"] == model) & (cells["features"] == "sae") & (cells["variant"] == "logreg")]
    for other in AXES:
        if other != axis:
            mine = mine[mine[other].astype(str) == str(center[other])]
    return mine


def _pooled(tables: Mapping[str, pd.DataFrame], fits: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """Per (resample, value), the macro F1 averaged over the datasets that have the value (`fits`: dataset ->
    value -> fit), as a `resample_metrics`-shaped table whose fits are the values."""
    rows = []
    for dataset, table in tables.items():
        for value, fit in fits[dataset].items():
            part = table[table["fit"] == fit]
            rows.append(part.assign(fit=value, dataset=dataset)[["fit", "dataset", "resample", "macro_f1", "n_train",
                                                                 "n_test"]])
    frame = pd.concat(rows)
    shared = frame.groupby(["fit", "resample"])["dataset"].transform("nunique") == frame["dataset"].nunique()
    return frame[shared].groupby(["fit", "resample"], as_index=False)[["macro_f1", "n_train", "n_test"]].mean()


def _difference(table: pd.DataFrame, best: str, other: str) -> dict[str, Any]:
    try:
        result = compare(table, best, other)
    except SaefsError:  # fewer than two shared resamples: no test, no number
        return {}
    return {"difference": result["mean"], "low": result["low"], "high": result["high"], "p": result["p_value"],
            "resamples": result["n"]}


def axis_rows(cells: pd.DataFrame, predictions: Mapping[tuple[str, str], pd.DataFrame],
              labels: Mapping[str, list[Any]], model: str, center: Mapping[str, Any], axis: str) -> list[dict]:
    """Every value of `axis` for `model`, per dataset and over datasets, with its paired difference from the best
    value (best minus it; the best is the value with the highest validation macro F1 over datasets)."""
    sweep = along(cells, model, center, axis)
    if sweep.empty:
        return []
    sweep = sweep.assign(value=sweep[axis].astype(str))
    best = str(sweep.groupby("value", sort=False)["val_macro_f1"].mean().idxmax())
    tables, fits, rows = {}, {}, []
    for dataset, part in sweep.groupby("dataset", sort=True):
        tables[dataset] = resample_metrics(predictions[dataset, model], labels[dataset])
        fits[dataset] = dict(zip(part["value"], part["fit"], strict=True))
        for record in part.to_dict("records"):
            diff = ({} if record["value"] == best or best not in fits[dataset]
                    else _difference(tables[dataset], fits[dataset][best], record["fit"]))
            rows.append({"scope": "dataset", "dataset": dataset, "model": model, "axis": axis,
                         "value": record["value"], "best": record["value"] == best,
                         **{k: record[k] for k in ("macro_f1", "macro_f1_low", "macro_f1_high", "val_macro_f1")},
                         **diff})
    pooled = _pooled(tables, fits)
    means = sweep.groupby("value", sort=False)[["macro_f1", "val_macro_f1"]].mean()
    for value in means.index:
        diff = {} if value == best else _difference(pooled, best, value)
        rows.append({"scope": POOLED, "dataset": POOLED, "model": model, "axis": axis, "value": value,
                     "best": value == best, "macro_f1": means.loc[value, "macro_f1"],
                     "val_macro_f1": means.loc[value, "val_macro_f1"], **_interval(pooled, value), **diff})
    return rows


def _interval(pooled: pd.DataFrame, value: str) -> dict[str, float]:
    """The over-datasets mean test macro F1's interval: the corrected resampled t over the splits' means."""
    runs = pooled[pooled["fit"] == value]
    if len(runs) < 2:
        return {}
    result = corrected_resampled_t(runs["macro_f1"].to_numpy(), int(runs["n_train"].mean()),
                                   int(runs["n_test"].mean()))
    return {"macro_f1_low": result["low"], "macro_f1_high": result["high"]}


def study_table(cells: pd.DataFrame, probes: Mapping[tuple[str, str], dict[str, Any]],
                predictions: Mapping[tuple[str, str], pd.DataFrame], labels: Mapping[str, list[Any]]) -> pd.DataFrame:
    """Every axis of every model's sweep (`axis_rows`), with one Holm correction over all the tests it holds."""
    rows = [row for model, center in centers(probes).items() for axis in AXES
            for row in axis_rows(cells, predictions, labels, model, center, axis)]
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    tested = table["p"].notna()
    if tested.any():
        table.loc[tested, "p_holm"] = holm(table.loc[tested, "p"].tolist())
    return table


def _name(axis: str, value: str, depth: Mapping[str, int] | None = None, model: str | None = None) -> str:
    if axis == "layer":
        blocks = (depth or {}).get(model or "")
        return f"block {value}" + (f" (depth {int(value) / blocks:.2f})" if blocks else "")
    if axis == "binarize":
        return "continuous codes" if value == "none" else f"threshold {value}"
    return {"width": "width {}", "pooling": "{} pooling"}[axis].format(value)


def answer(table: pd.DataFrame, model: str, axis: str, depth: Mapping[str, int] | None = None) -> str:
    """One sentence: the best value over datasets, and what the paired evidence says against each other value."""
    rows = table[(table["model"] == model) & (table["axis"] == axis) & (table["scope"] == POOLED)]
    if rows.empty:
        return f"{model}: no {axis} sweep in this run."
    best = rows[rows["best"]].iloc[0]
    others = rows[~rows["best"]]
    if others.empty:
        return f"{model}: one {axis} only ({_name(axis, best['value'], depth, model)}), so nothing to compare."
    won = others[others["p_holm"] < CALLED]
    # ahead with an uncorrected interval clear of zero, but not called once Holm counts every test printed
    uncorrected = others[~(others["p_holm"] < CALLED) & (others["p"] < CALLED)]
    silent = others[~(others["p"] < CALLED)]
    n = int(table[(table["model"] == model) & (table["axis"] == axis) & (table["scope"] == "dataset")]
            ["dataset"].nunique())
    def name(r: Mapping[str, Any]) -> str:
        return _name(axis, r["value"], depth, model)

    def gap(r: Mapping[str, Any]) -> str:
        return f"{r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"

    text = (f"{model}: {_name(axis, best['value'], depth, model)} is best on validation over {n} datasets "
            f"(mean test macro F1 {best['macro_f1']:.3f})")
    if not won.empty:
        text += "; it beats " + ", ".join(f"{name(r)} by {gap(r)}" for r in won.to_dict("records"))
    if not uncorrected.empty:
        ahead = ", ".join(f"{name(r)} by {gap(r)} (p {r['p']:.2g})" for r in uncorrected.to_dict("records"))
        text += (f"; it is ahead of {ahead} uncorrected, which does not survive Holm's correction over the "
                 f"{int(table['p'].notna().sum())} tests of these sections")
    if not silent.empty:
        text += ("; no difference detectable from " if won.empty and uncorrected.empty
                 else "; and no difference is detectable from ")
        text += ", ".join(f"{name(r)} ({gap(r)})" if pd.notna(r["difference"]) else name(r)
                          for r in silent.to_dict("records"))
    return text + " (paired over splits, Holm-corrected)."


def binarization_answer(table: pd.DataFrame, model: str) -> str:
    """Whether the best binarized threshold beats continuous codes, from the pooled binarize sweep."""
    rows = table[(table["model"] == model) & (table["axis"] == "binarize") & (table["scope"] == POOLED)]
    continuous, binarized = rows[rows["value"] == "none"], rows[rows["value"] != "none"]
    if continuous.empty or binarized.empty:
        return f"{model}: the run lacks continuous or binarized codes, so binarization is not compared."
    top = binarized.sort_values("val_macro_f1", ascending=False).iloc[0]
    lead = f"{model}: the best binarized codes ({_name('binarize', top['value'])}, test macro F1 {top['macro_f1']:.3f})"
    base = f"continuous codes ({continuous.iloc[0]['macro_f1']:.3f})"
    row = top if not top["best"] else continuous.iloc[0]
    if pd.isna(row["difference"]):
        return f"{lead} against {base}: no paired test (too few shared splits)."
    sign = 1 if top["best"] else -1  # the rows hold best minus value
    diff, low, high = sign * row["difference"], *sorted((sign * row["low"], sign * row["high"]))
    verdict = ("beat" if diff > 0 else "trail") if row["p_holm"] < CALLED else "do not differ detectably from"
    return f"{lead} {verdict} {base}: {diff:+.3f} [{low:+.3f}, {high:+.3f}], Holm p {row['p_holm']:.3g}."


def depth_table(cells: pd.DataFrame, probes: Mapping[tuple[str, str], dict[str, Any]],
                depth: Mapping[str, int]) -> pd.DataFrame:
    """Per dataset, model and layer: the SAE probe at the center (the layer sweep) and the best hidden-state
    probe (validation), with the layer's relative depth (block / the model's blocks)."""
    frames = []
    for model, center in centers(probes).items():
        sae = along(cells, model, center, "layer").assign(features="sae")
        hidden = ranked(cells[(cells["model"] == model) & (cells["features"] == "hidden")])
        hidden = hidden.groupby(["dataset", "layer"], sort=True).head(1).assign(features="hidden")
        frames += [sae, hidden]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    table["depth"] = [layer / depth[model] if model in depth else np.nan
                      for layer, model in zip(table["layer"], table["model"], strict=True)]
    return table.sort_values(["dataset", "model", "features", "layer"]).reset_index(drop=True)


def best_values(table: pd.DataFrame) -> dict[str, Any]:
    """For `dvc metrics show`: per model and axis, the best value over datasets with its mean test macro F1, and
    per dataset the value it ranks best on its own validation."""
    out: dict[str, Any] = {}
    for (model, axis), rows in table.groupby(["model", "axis"], sort=True):
        pooled = rows[(rows["scope"] == POOLED) & rows["best"]]
        per_dataset = rows[rows["scope"] == "dataset"].sort_values("val_macro_f1", ascending=False)
        out.setdefault(model, {})[axis] = {
            "best": pooled["value"].iloc[0], "macro_f1": float(pooled["macro_f1"].iloc[0]),
            "low": float(pooled["macro_f1_low"].iloc[0]), "high": float(pooled["macro_f1_high"].iloc[0]),
            "beats_called": int(((rows["scope"] == POOLED) & (rows["p_holm"] < CALLED)).sum()),
            "per_dataset": {dataset: {"best": part["value"].iloc[0], "macro_f1": float(part["macro_f1"].iloc[0]),
                                      "low": float(part["macro_f1_low"].iloc[0]),
                                      "high": float(part["macro_f1_high"].iloc[0])}
                            for dataset, part in per_dataset.groupby("dataset", sort=True)}}
    return out
