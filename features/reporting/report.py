"""The run's results laid out like the paper's: tidy tables from the stage metrics, and where they differ.

Every table comes from what other stages wrote (probe results and per-text predictions per
dataset and model, SAE quality per dataset, promotion reports, transfer CSVs); nothing here
refits. A "best" row is chosen on validation macro F1 (as `promote` chooses); its test scores are
means over the resampled splits `train_probes` fitted, with the intervals it names
(`features.core.predictions.INTERVALS`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from features.core.naming import parse_sae_name
from features.errors import SaefsError

F1 = ["macro_f1", "macro_f1_low", "macro_f1_high"]
SAFETY = ["roc_auc", "recall_at_1fpr", "recall_at_5fpr"]  # a safety monitor's view, beside macro F1
# What the report needs of the transfer CSVs; the stage may write more (AUROC, recall at FPR, resamples),
# which the tables then show as well.
BASELINE_F1 = [f"{probe}_f1{end}" for probe in ("hidden", "tfidf") for end in ("", "_low", "_high")]
CROSS_MODEL_COLUMNS = ["task", "source", "target", *F1, *BASELINE_F1, "target_hidden_f1", "target_hidden_f1_low",
                       "target_hidden_f1_high", "majority_f1",
                       *(f"sae_minus_{probe}{end}" for probe in ("tfidf", "target_hidden")
                         for end in ("", "_low", "_high", "_p_holm")), "minority_share", "n_train", "n_test", "status"]
CROSS_LINGUAL_COLUMNS = ["task", "model", "layer", "train_lang", "test_lang", *F1, *BASELINE_F1, "majority_f1",
                         "n_train", "n_test", "status"]


@dataclass(frozen=True)
class RunInputs:
    """What the report reads, already parsed; `pipelines/report.py` knows where each file lives."""

    probes: Mapping[tuple[str, str], dict[str, Any]]  # (dataset, model) -> metrics/train_probes JSON
    predictions: Mapping[tuple[str, str], pd.DataFrame]  # (dataset, model) -> train_probes prediction rows
    labels: Mapping[str, list[Any]]  # dataset -> its classes
    sae_quality: Mapping[tuple[str, str], dict[str, Any]]  # (model, dataset) -> metrics/extract JSON
    sae_training: Mapping[str, dict[str, Any]]  # model -> metrics/train_sae JSON
    promotion: Mapping[str, dict[str, Any]]  # dataset -> reports/promotion JSON
    cross_model: pd.DataFrame | None = None  # plots/transfer/cross_model.csv, None until transfer has run
    cross_lingual: pd.DataFrame | None = None
    cost: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # "<stage>[/<item>]" -> metrics/cost JSON
    lodo: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # model -> metrics/lodo JSON
    cross_modal: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # model -> metrics/cross_modal JSON
    # profile, models, datasets, SAEs, resamples (params); paper_profile: what profiles/paper.yaml holds
    setup: dict[str, Any] = field(default_factory=dict)


def check_columns(frame: pd.DataFrame, expected: list[str], source: str) -> pd.DataFrame:
    """The transfer CSV contract: every expected column present (extra columns are kept and shown)."""
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise SaefsError(f"{source} lacks columns {missing}; the transfer contract needs {expected}")
    return frame


def _scores(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {"resamples": int(summary["resamples"]), **{k: summary.get(k, math.nan) for k in (*F1, *SAFETY)}}


def cells_frame(probes: Mapping[tuple[str, str], dict[str, Any]]) -> pd.DataFrame:
    """One row per probed cell (`fit` names its prediction rows): dataset, model, features (sae/hidden), layer,
    width, pooling, binarize, and its scores."""
    rows = []
    for (dataset, model), results in probes.items():
        for name, cell in results["cells"].items():
            rows.append({"dataset": dataset, "model": model, "cell": name, "fit": name,
                         "features": "hidden" if cell["input"] == "dense" else "sae",
                         "layer": int(cell["layer"]), "width": str(cell["width"]), "pooling": cell["pooling"],
                         "binarize": threshold_label(cell["binarize"]),
                         "variant": cell.get("variant", "logreg"), "val_macro_f1": cell.get("val_macro_f1", math.nan),
                         **_scores(cell)})
    if not rows:
        raise SaefsError("no probe cells in the train_probes metrics: run `dvc repro train_probes`")
    return pd.DataFrame(rows)


def threshold_label(threshold: float | str | None) -> str:
    """How tables name a cell's threshold: `none` (continuous codes), `1.0`, or a quantile as named (`q50`)."""
    if threshold is None:
        return "none"
    return threshold if isinstance(threshold, str) else str(float(threshold))


def ranked(cells: pd.DataFrame) -> pd.DataFrame:
    """The logistic-regression cells, best validation macro F1 first (ties by fit name, so the order is stable)."""
    return cells[cells["variant"] == "logreg"].sort_values(["val_macro_f1", "fit"], ascending=[False, True])


def best_by(cells: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`, the logistic-regression cell with the best validation macro F1."""
    return ranked(cells).groupby(keys, sort=True).head(1).sort_values(keys).reset_index(drop=True)


def layer_table(cells: pd.DataFrame) -> pd.DataFrame:
    return best_by(cells, ["dataset", "model", "features", "layer"])


def pooling_table(cells: pd.DataFrame) -> pd.DataFrame:
    return best_by(cells[cells["features"] == "sae"], ["dataset", "model", "pooling", "binarize"])


def width_table(cells: pd.DataFrame) -> pd.DataFrame:
    return best_by(cells[cells["features"] == "sae"], ["dataset", "model", "width"])


def baselines_table(cells: pd.DataFrame, probes: Mapping[tuple[str, str], dict[str, Any]]) -> pd.DataFrame:
    """Per dataset and model: the best SAE probe, the best last-token and mean-pooled hidden-state probes (the
    paper compared with last-token only), top-k selection, tree, TF-IDF on the whole text and on the tokens
    the LM read (`tfidf_truncated`), and majority."""
    keep = ["cell", "resamples", *F1, *SAFETY]
    sae = best_by(cells[cells["features"] == "sae"], ["dataset", "model"]).assign(method="sae (best)")
    hidden = cells[cells["features"] == "hidden"]
    hidden = best_by(hidden, ["dataset", "model", "pooling"]).assign(method=lambda f: "hidden " + f["pooling"])
    extras = cells[cells["variant"] != "logreg"].assign(method=lambda f: "sae " + f["variant"])
    rows = [{"dataset": dataset, "model": model, "method": name, "cell": name, **_scores(baseline)}
            for (dataset, model), results in probes.items() for name, baseline in results["baselines"].items()]
    table = pd.concat([frame[["dataset", "model", "method", *keep]] for frame in (sae, hidden, extras)]
                      + [pd.DataFrame(rows, columns=["dataset", "model", "method", *keep])])
    return table.sort_values(["dataset", "model", "method"]).reset_index(drop=True)


def curve_table(probes: Mapping[tuple[str, str], dict[str, Any]]) -> pd.DataFrame:
    """The training-size curve of each (dataset, model)'s best cell: mean and interval over resamples per fraction."""
    rows = [{"dataset": dataset, "model": model, "cell": results["best_cell"], "fraction": point["fraction"],
             "train_rows": int(point["train_rows"]), **_scores(point)}
            for (dataset, model), results in probes.items() for point in results["training_curve"]]
    return pd.DataFrame(rows).sort_values(["dataset", "model", "fraction"]).reset_index(drop=True)


def best_config_table(promotion: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per dataset, what `promote` chose (on validation, over every model) and what it was compared with."""
    rows = []
    for dataset, report in sorted(promotion.items()):
        row = {"dataset": dataset, "champion": f"v{report['champion']}" if report["champion"] is not None else "none",
               "decision": report["decision"]}
        if (candidate := report["candidate"]) is not None:  # None: every SAE cell was skipped, as `decision` says
            hidden = report["hidden_baseline"]
            baselines = next(iter(report["other_baselines"].values()))  # the same split for every model
            row |= {"model": candidate["model"], "cell": candidate["cell"], **_scores(candidate),
                    "hidden_cell": hidden["cell"], "hidden_f1": hidden.get("macro_f1", math.nan),
                    "tfidf_f1": baselines["tfidf"]["macro_f1"], "majority_f1": baselines["majority"]["macro_f1"]}
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["dataset", "model", "cell", "resamples", *F1, *SAFETY, "hidden_cell",
                                               "hidden_f1", "tfidf_f1", "majority_f1", "champion", "decision"])


def _registered(report: Mapping[str, Any]) -> dict[str, Any]:
    return {"version": f"v{report['challenger_version']}",
            "champion": report["champion"] == report["challenger_version"], "cell": report["candidate"]["cell"]}


def relied_on_table(promotion: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per dataset, the latents its registered candidate weighs most, with their cards and the surface features
    the shortcut audit flags them for (promote's report)."""
    rows = [{"dataset": dataset, **_registered(report), "latent": entry["latent"], "weight": entry["weight"],
             "label": entry.get("label"), "density": entry.get("density"),
             "top context": next(iter(entry.get("contexts", [])), None),
             "shortcut": ", ".join(entry.get("shortcuts", []))}
            for dataset, report in sorted(promotion.items()) for entry in report.get("influential_latents", [])]
    return pd.DataFrame(rows).reindex(columns=["dataset", "version", "champion", "cell", "latent", "weight", "label",
                                               "density", "top context", "shortcut"])


def shortcut_table(promotion: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per dataset, the shortcut audit of its registered candidate (features.core.shortcuts): the share of its
    absolute weight on flagged latents, in all and per kind, and what the audit read."""
    rows = [{"dataset": dataset, **_registered(report), "flagged_weight_share": audit["flagged_weight_share"],
             "by kind": ", ".join(f"{kind} {share:.0%}" for kind, share in sorted(
                 audit["weight_share_by_kind"].items(), key=lambda item: -item[1])),
             "flagged": audit["flagged"], "latents": audit["latents"], "cards": audit["evidence"]["cards"],
             "training texts": audit["evidence"]["training_texts"]}
            for dataset, report in sorted(promotion.items()) if (audit := report.get("shortcut_audit"))]
    return pd.DataFrame(rows).reindex(columns=["dataset", "version", "champion", "cell", "flagged_weight_share",
                                               "by kind", "flagged", "latents", "cards", "training texts"])


def shortcut_latents_table(promotion: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per dataset, the most weighted latents the shortcut audit flagged, one row per finding, with its reason."""
    rows = [{"dataset": dataset, "latent": entry["latent"], "weight": entry["weight"], "label": entry.get("label"),
             "kind": finding["kind"], "why": finding["reason"]}
            for dataset, report in sorted(promotion.items())
            for entry in report.get("shortcut_audit", {}).get("flagged_latents", []) for finding in entry["findings"]]
    return pd.DataFrame(rows).reindex(columns=["dataset", "latent", "weight", "label", "kind", "why"])


def sae_quality_table(sae_quality: Mapping[tuple[str, str], dict[str, Any]],
                      sae_training: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per SAE (model, layer, width) and dataset: variance explained, L0, dead latents; plus how it was trained."""
    rows = []
    for (model, dataset), metrics in sae_quality.items():
        trained = sae_training.get(model, {})
        for sae, quality in metrics["sae_quality"].items():
            layer, width = parse_sae_name(sae)
            info = trained.get("saes", {}).get(sae, {})
            rows.append({"model": model, "sae": sae, "layer": layer, "width": width, "dataset": dataset,
                         "fve": quality["fve"], "l0": quality["l0"], "dead_fraction": quality["dead_fraction"],
                         "tokens": int(quality["tokens"]), "architecture": info.get("architecture", "pretrained"),
                         "source": trained.get("source", "?")})
    return pd.DataFrame(rows).sort_values(["model", "layer", "width", "dataset"]).reset_index(drop=True)


HELDOUT_FIGURES = ["fve", "l0", "dead_fraction", "dense_fraction", "loss_recovered", "loss_clean", "loss_spliced",
                   "loss_ablated"]


def sae_heldout_table(sae_training: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per SAE (model, layer, width): its figures on held-out corpus tokens (train_sae), as the field measures SAEs."""
    rows = []
    for model, metrics in sae_training.items():
        for sae, info in metrics["saes"].items():
            layer, width = parse_sae_name(sae)
            heldout = info["heldout"]
            rows.append({"model": model, "layer": layer, "width": width, "architecture": info["architecture"],
                         **{key: heldout[key] for key in HELDOUT_FIGURES}, "tokens": heldout["tokens"],
                         "training_tokens": info.get("training_tokens", "pretrained"),
                         "train_s": info.get("seconds"),
                         "window_dead_at_end": info.get("training", {}).get("dead_fraction_at_end")})
    return pd.DataFrame(rows).sort_values(["model", "layer", "width"]).reset_index(drop=True)


def dead_history_table(sae_training: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per trained SAE and recorded step: the trainer's dead-latent window as a fraction of the width, the step as
    a fraction of training, and where the learning-rate decay starts (train_sae's `training` record)."""
    rows = []
    for model, metrics in sae_training.items():
        for sae, info in metrics["saes"].items():
            if "training" not in info:  # a pretrained SAE
                continue
            layer, width = parse_sae_name(sae)
            record, d_sae = info["training"], info["d_sae"]
            for step, dead in zip(record["dead_history"]["step"], record["dead_history"]["dead"], strict=True):
                rows.append({"model": model, "layer": layer, "width": width, "step": step,
                             "progress": step / record["steps"], "dead_fraction": dead / d_sae,
                             "decay_from": record["lr_decay_from_step"] / record["steps"]})
    return pd.DataFrame(rows, columns=["model", "layer", "width", "step", "progress", "dead_fraction", "decay_from"])


def sae_quality_summary(quality: pd.DataFrame) -> pd.DataFrame:
    """Per SAE: mean variance explained and its range over the datasets it encoded."""
    grouped = quality.groupby(["model", "layer", "width", "sae", "architecture", "source"], sort=True)
    return grouped.agg(fve=("fve", "mean"), fve_min=("fve", "min"), fve_max=("fve", "max"), l0=("l0", "mean"),
                       dead_fraction=("dead_fraction", "mean"), datasets=("dataset", "count")).reset_index()


def test_rows(probes: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, int]:
    """Test-part size per dataset (every cell records it), for the sampling-noise caveat."""
    return {dataset: int(next(iter(results["cells"].values()))["n_test"]) for (dataset, _), results in probes.items()
            if results["cells"]}


def binomial_half_width(n: int, p: float = 0.8) -> float:
    """95% normal-approximation half-width of a proportion p measured on n test items."""
    return 1.96 * math.sqrt(p * (1 - p) / n)


def plot_tables(cells: pd.DataFrame, probes: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Tidy tables for `dvc plots show` (bar_horizontal: x = macro_f1, y = label), by file stem."""
    def labelled(frame: pd.DataFrame, parts: list[str], prefix: dict[str, str] | None = None) -> pd.DataFrame:
        prefix = prefix or {}
        label = frame[parts].astype(str).apply(lambda r: " ".join(prefix.get(k, "") + r[k] for k in parts), axis=1)
        return frame.assign(label=label).reset_index(drop=True)

    keep = ["dataset", "model", "cell", *F1, *SAFETY, "resamples"]
    layers, pooling, widths = layer_table(cells), pooling_table(cells), width_table(cells)
    curve = curve_table(probes)
    return {
        "layer": labelled(layers[["features", "layer", *keep]], ["dataset", "model", "features", "layer"],
                          {"layer": "L"}),
        "pooling_binarize": labelled(pooling[["pooling", "binarize", *keep]],
                                     ["dataset", "model", "pooling", "binarize"], {"binarize": "bin "}),
        "width": labelled(widths[["width", "layer", *keep]], ["dataset", "model", "width"]),
        "baselines": labelled(baselines_table(cells, probes), ["dataset", "model", "method"]),
        "training_curve": labelled(curve, ["dataset", "model", "train_rows"], {"train_rows": "n="}),
    }


def cost_table(cost: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per stage instance (pipelines.cost records): times, memory, work done and, for a model-bound
    step, its rate and fraction of the machine's matmul limit."""
    rows = []
    for name, record in sorted(cost.items()):
        stage, _, item = name.partition("/")
        forward = record.get("forward", {})
        rows.append({"stage": stage, "item": item, "wall_s": record["wall_seconds"],
                     "startup_s": record["startup_seconds"], "cpu_s": record["cpu_seconds"],
                     "peak_rss_mb": record["peak_rss_mb"],
                     "work": ", ".join(f"{key} {value:,.0f}" for key, value in record.get("work", {}).items()),
                     "tokens_per_s": "; ".join(f"{step} {rate['tokens_per_second']:,.0f}"
                                               for step, rate in forward.items()),
                     "matmul_limit": "; ".join(f"{step} {rate['fraction_of_matmul_limit']:.0%}"
                                               for step, rate in forward.items()),
                     "load": "-".join(f"{load:.1f}" for load in record["load_average"])})
    return pd.DataFrame(rows, columns=["stage", "item", "wall_s", "startup_s", "cpu_s", "peak_rss_mb", "work",
                                       "tokens_per_s", "matmul_limit", "load"])


def cost_machines(cost: Mapping[str, dict[str, Any]]) -> str:
    """Which machines the records were made on: DVC keeps a skipped stage's record from the run that made its
    outputs, so one report can mix machines, whose times and rates do not compare."""
    counts = Counter(record.get("machine", "a machine not recorded") for record in cost.values())
    if len(counts) == 1:
        return f"Measured on one machine: {next(iter(counts))}."
    return ("Measured on several machines, whose times do not compare: "
            + "; ".join(f"{machine} ({n} instance{'s' if n > 1 else ''})" for machine, n in counts.most_common()) + ".")


def cost_by_stage(table: pd.DataFrame) -> pd.DataFrame:
    """Per stage: instances, summed wall, start-up and CPU seconds and the share of the run's wall time."""
    by = table.groupby("stage", sort=False).agg(instances=("item", "size"), wall_s=("wall_s", "sum"),
                                                startup_s=("startup_s", "sum"), cpu_s=("cpu_s", "sum"))
    by["share"] = by["wall_s"] / by["wall_s"].sum()
    return by.sort_values("wall_s", ascending=False).reset_index()


def lodo_table(lodo: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Leave one dataset out: per model, held-out dataset and probe, in-split and held-out macro F1 on the same
    held-out test texts with their intervals, and the gap (in-split minus held-out) with its Holm-adjusted p."""
    def interval(row: Mapping[str, Any], value: str, prefix: str, form: str = "{:.3f}") -> str:
        low, high = row[f"{prefix}_low"], row[f"{prefix}_high"]
        return f"{form.format(row[value])} [{form.format(low)}, {form.format(high)}]"

    rows = [{"model": model, "held out": row["held_out"], "probe": row["probe"],
             "in-split macro F1": interval(row, "in_split_f1", "in_split"),
             "held-out macro F1": interval(row, "held_out_f1", "held_out"),
             "gap": interval(row, "gap", "gap", "{:+.3f}"), "Holm p": row["gap_p_holm"], "test texts": row["n_test"],
             "trained on (others / own)": f"{row['n_train_others']} / {row['n_train_own']}"}
            for model, results in sorted(lodo.items()) for row in results["cells"]]
    return pd.DataFrame(rows)


def lodo_overlap_table(lodo: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """How many of the SAE probes' most weighted latents the folds share (Jaccard), per model."""
    rows = []
    for model, results in sorted(lodo.items()):
        overlap = results["top_latent_overlap"]
        rows.append({"model": model, "across folds (mean Jaccard)": overlap["across_folds_mean_jaccard"],
                     **{f"own vs others, {held} held out": value
                        for held, value in overlap["own_vs_others_jaccard"].items()}})
    return pd.DataFrame(rows)


# A guess at the label rate scores macro F1 0.5 on any binary task (a class of share p gets F1 p, the other 1 - p),
# so that, not the majority floor (which a probe's worst mistake already beats), is the line a transfer must clear.
CHANCE_F1 = 0.5


def _span(row: Any, column: str) -> str:
    return f"{row[column]:.2f} [{row[f'{column}_low']:.2f}, {row[f'{column}_high']:.2f}]"


def transfer_claims(cross_model: pd.DataFrame | None, cross_lingual: pd.DataFrame | None,
                    called: float = 0.05) -> pd.DataFrame:
    """The paper's transfer claims (PAPER.md §5-6) against this run: claim, what the paper reports, what this
    run measured (with 95% intervals), and whether it holds here ("holds", "does not hold", "partly",
    "not measured"). A difference counts only where its Holm-corrected p is below `called`."""
    rows = []

    def add(claim: str, paper: str, here: str, verdict: str) -> None:
        rows.append({"claim": claim, "paper": paper, "this run": here, "holds here": verdict})

    def share(hits: int, total: int) -> str:
        return "not measured" if not total else "holds" if hits == total else "partly" if hits else "does not hold"

    if cross_model is None:
        cross_model = pd.DataFrame(columns=CROSS_MODEL_COLUMNS)
    if cross_lingual is None:
        cross_lingual = pd.DataFrame(columns=CROSS_LINGUAL_COLUMNS)
    cells = cross_model[(cross_model["status"] == "ok") & (cross_model["source"] != cross_model["target"])]
    above = cells[cells["macro_f1_low"] > CHANCE_F1]
    add(f"A model's SAE features predict another model's behaviour (macro F1 above chance, {CHANCE_F1})",
        "2B features predict 9B-IT PubMedQA correctness, macro F1 0.63",
        "; ".join(f"{r.task} {r.source}→{r.target} {_span(r._asdict(), 'macro_f1')} (majority {r.majority_f1:.2f}, "
                  f"minority {r.minority_share:.0%})" for r in cells.itertuples()) or "no cross-model cell ran",
        share(len(above), len(cells)))
    own = cells.dropna(subset=["sae_minus_target_hidden_p_holm"])
    lower = own[(own["sae_minus_target_hidden"] < 0) & (own["sae_minus_target_hidden_p_holm"] < called)]
    add("The target's own hidden states predict its behaviour better than the source's SAE features",
        "hidden 0.77 vs SAE 0.63 (9B-IT PubMedQA, one split)",
        "; ".join(f"{r.task} {r.source}→{r.target} SAE minus target hidden "
                  f"{_span(r._asdict(), 'sae_minus_target_hidden')}, Holm p {r.sae_minus_target_hidden_p_holm:.3f}"
                  for r in own.itertuples()) or "no cell with the target's own hidden states",
        share(len(lower), len(own)))
    lingual = cross_lingual[cross_lingual["status"] == "ok"]
    zero = lingual[(lingual["train_lang"] == "en") & (lingual["test_lang"] != "en")]
    viable = zero[zero["macro_f1_low"] > CHANCE_F1]
    add(f"A probe trained on English transfers zero-shot to other languages (macro F1 above chance, {CHANCE_F1})",
        "\"English-transfer remains viable\" (toxicity, 9B and 9B-IT)",
        "; ".join(f"{r.task} {r.model} L{r.layer} en→{r.test_lang} {_span(r._asdict(), 'macro_f1')}"
                  for r in zero.itertuples()) or "no English-trained zero-shot cell ran",
        share(len(viable), len(zero)))
    if len(zero):
        key = ["task", "model", "layer", "test_lang"]
        native = lingual[lingual["train_lang"] == lingual["test_lang"]].set_index(key)
        pairs = [(r, native.loc[(r.task, r.model, r.layer, r.test_lang)]) for r in zero.itertuples()
                 if (r.task, r.model, r.layer, r.test_lang) in native.index]
        better = [r for r, n in pairs if n["macro_f1_low"] > r.macro_f1_high]
        add("Training in the test language beats English transfer", "\"native-language training generally superior\"",
            "; ".join(f"{r.model} L{r.layer} {r.test_lang}: native {_span(n, 'macro_f1')} vs from English "
                      f"{_span(r._asdict(), 'macro_f1')}" for r, n in pairs),
            share(len(better), len(pairs)) + " (intervals apart)")
    return pd.DataFrame(rows)


def cross_model_reading(frame: pd.DataFrame, called: float = 0.05) -> str:
    """One sentence a reader can act on: in how many cross-model cells (source != target) the source's SAE probe
    clears chance (CHANCE_F1) with its whole interval, and how it compares with the target's own hidden states."""
    cells = frame[(frame["status"] == "ok") & (frame["source"] != frame["target"])]
    if cells.empty:
        return "No cross-model cell ran (each skipped one says why in the table), so nothing here says whether one " \
               "model's features predict another's behaviour."
    above = int((cells["macro_f1_low"] > CHANCE_F1).sum())
    own = cells.dropna(subset=["sae_minus_target_hidden_p_holm"])
    worse = int(((own["sae_minus_target_hidden"] < 0) & (own["sae_minus_target_hidden_p_holm"] < called)).sum())
    if not above:
        advice = "do not use another model's features to predict this behaviour"
    elif own.empty or worse < len(own):
        advice = ("another model's SAE features can stand in for the target's own where their interval clears "
                  "chance, with the difference the paired tests show")
    else:
        advice = ("where the target's own activations are available, probe them instead: the other model's SAE "
                  "features predict its behaviour, but less well")
    return (f"The source's SAE probe clears chance (macro F1 {CHANCE_F1}) with its whole 95% interval in {above} of "
            f"{len(cells)} cross-model cells and is below the target's own hidden-state probe (Holm p < {called}) in "
            f"{worse} of {len(own)}; so {advice}.")


def cross_lingual_reading(frame: pd.DataFrame) -> str:
    """One sentence a reader can act on: per probe, the mean zero-shot macro F1 against the mean in-language one,
    and how many zero-shot cells clear chance (CHANCE_F1) with their whole 95% interval."""
    cells = frame[frame["status"] == "ok"]
    zero_shot, own = cells[cells["train_lang"] != cells["test_lang"]], cells[cells["train_lang"] == cells["test_lang"]]
    if zero_shot.empty or own.empty:
        return "No zero-shot cell ran, so nothing here says whether a probe carries across languages."
    parts, clear = [], {}
    for probe, column in (("SAE", "macro_f1"), ("hidden-state", "hidden_f1"), ("TF-IDF", "tfidf_f1")):
        clear[probe] = int((zero_shot[f"{column}_low"] > CHANCE_F1).sum())
        parts.append(f"{probe} {zero_shot[column].mean():.2f} against {own[column].mean():.2f} in-language "
                     f"({clear[probe]}/{len(zero_shot)} zero-shot cells above chance, {CHANCE_F1})")
    best = max(("SAE", "hidden-state"), key=lambda probe: clear[probe])
    if clear[best] == len(zero_shot):
        advice = f"a {best} probe trained on one language can screen the others, at the cost shown"
    elif clear[best]:
        advice = (f"screen another language with the {best} probe only in the cells whose interval clears chance, "
                  "and label texts of the others")
    else:
        advice = "label texts in each language: no probe here carries across languages"
    return (f"Zero-shot macro F1, mean over cells: {'; '.join(parts)}; TF-IDF shares no vocabulary across "
            f"languages, so its fall is expected, not evidence; so {advice}.")


# The paper's vision-tower probes ("Vision Tower Best" macro F1, PAPER.md §4), by the image set's source
PAPER_VISION_F1 = {"hf:nelorth/oxford-flowers": 0.98, "hf:rajistics/indian_food_images": 0.98,
                   "hf:renumics/cifar100-enriched": 0.79}


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The probe with the best validation macro F1 (ties by cell name), as the report chooses everywhere."""
    return min(rows, key=lambda row: (-(row.get("val_macro_f1") or 0.0), row["cell"]))


def cross_modal_table(cross_modal: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Per model and image set: the vision tower's probe (beside the paper's), the best residual and the best SAE
    probe (chosen on validation), and the best SAE probe minus each baseline with its Holm-adjusted p."""
    rows = []
    for model, results in sorted(cross_modal.items()):
        for name, dataset in results["datasets"].items():
            vision, residual, sae = dataset["vision"], _best(dataset["residual"]), _best(dataset["sae"])
            rows.append({"model": model, "dataset": name, "images": dataset["images"], "classes": dataset["classes"],
                         "vision tower": _span(vision, "macro_f1"),
                         "paper's vision tower": PAPER_VISION_F1.get(dataset["source"], math.nan),
                         "best residual": f"{residual['cell']} {_span(residual, 'macro_f1')}",
                         "best SAE": f"{sae['cell']} {_span(sae, 'macro_f1')}",
                         "SAE minus vision tower": _span(sae, "sae_minus_vision"),
                         "Holm p (vision)": sae["sae_minus_vision_p_holm"],
                         "SAE minus its layer's residual": _span(sae, "sae_minus_residual"),
                         "Holm p (residual)": sae["sae_minus_residual_p_holm"]})
    return pd.DataFrame(rows)


def cross_modal_cells(cross_modal: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """Every probe of every model and image set: its cell, macro F1 with interval and, for SAE probes, the paired
    differences with their Holm-adjusted p."""
    columns = ["features", "cell", "layer", "width", "pooling", "binarize", "macro_f1", "macro_f1_low",
               "macro_f1_high", "val_macro_f1", "sae_minus_vision", "sae_minus_vision_p_holm", "sae_minus_residual",
               "sae_minus_residual_p_holm"]
    rows = [{"model": model, "dataset": name, **{key: row.get(key) for key in columns}}
            for model, results in sorted(cross_modal.items()) for name, dataset in results["datasets"].items()
            for row in [dataset["vision"], *dataset["residual"], *dataset["sae"]]]
    return pd.DataFrame(rows)


def cross_modal_calls(cross_modal: Mapping[str, dict[str, Any]],
                      called: float = 0.05) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], int, int]:
    """(image set, its metrics, its best SAE probe by validation) of every model and set, and on how many the best
    SAE probe is below and above the vision tower's (paired, Holm p < `called`)."""
    best = [(name, dataset, _best(dataset["sae"])) for results in cross_modal.values()
            for name, dataset in results["datasets"].items()]
    below = sum(sae["sae_minus_vision"] < 0 and sae["sae_minus_vision_p_holm"] < called for *_, sae in best)
    above = sum(sae["sae_minus_vision"] > 0 and sae["sae_minus_vision_p_holm"] < called for *_, sae in best)
    return best, below, above


def cross_modal_reading(cross_modal: Mapping[str, dict[str, Any]], called: float = 0.05) -> str:
    """One sentence a reader can act on: on how many image sets the best SAE probe is below, above or tied with the
    vision tower's (Holm p < `called`), and this run's vision tower beside the paper's."""
    best, below, above = cross_modal_calls(cross_modal, called)
    if not best:
        return "No cross-modal run: nothing here says whether text-trained SAEs read image tokens."
    towers = "; ".join(f"{d['vision']['macro_f1']:.2f} here against the paper's {PAPER_VISION_F1[d['source']]:.2f}"
                       if d["source"] in PAPER_VISION_F1 else f"{d['vision']['macro_f1']:.2f} (not a paper set)"
                       for _, d, _ in best)
    if below == len(best):
        advice = "to classify images, probe the vision tower: the text SAEs' codes of its tokens lose what it holds"
    elif below:
        advice = "the text SAEs' codes of image tokens stand in for the vision tower on some image sets only"
    elif above == len(best):
        advice = "text-trained SAEs read a VLM's image tokens better than a probe on its vision tower does"
    else:
        advice = "text-trained SAEs read a VLM's image tokens about as well as a probe on its vision tower"
    return (f"The best SAE probe (chosen on validation) is below the vision tower's probe on {below} of "
            f"{len(best)} image sets and above it on {above} (paired, Holm p < {called}); the vision tower's macro "
            f"F1: {towers}; so {advice}.")
