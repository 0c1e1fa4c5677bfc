"""Stage train_probes: the paper's probe grid for one (model, dataset), read through Feast, tracked in MLflow.

For every SAE cell of `train_probes.design` (the grid of layer x SAE x pooling x binarization, or each axis
swept around `center`: features.core.design) and every hidden-state baseline, a logistic-regression probe
(binarizing a raw view itself where its threshold is a `q<NN>` quantile) is fitted on each of `resamples` stratified
train/test splits of the prepared texts (resample 0 is the prepared split; C is chosen by CV on
each training part alone) and scores that split's test texts. The best cell (by validation macro
F1, out of fold on the training parts) also gets a decision tree, top-k latent selection and a
training-size curve. TF-IDF (on the whole text, and on the part the LM reads) and majority
baselines run on the same splits. Every fit's per-text predictions go to one parquet
(features.core.predictions), and every metric and interval is computed from those rows. One MLflow
parent run per invocation (the predictions as its artifact), a child run per cell with its
resample-0 model (signature: the online store's columns) and the Feast feature service it reads;
metrics/train_probes/<dataset>/<model>.json summarises.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from features.core.binarize import Threshold, view_threshold
from features.core.design import Config, center_config, sweep
from features.core.metrics import training_curve_fractions
from features.core.predictions import INTERVALS, FitJob, Resample, fit_many, resamples, summarize
from features.core.probes import chosen_params, make_majority_baseline, make_probe, make_tfidf_baseline
from features.errors import SaefsError
from features.sources.fingerprint import locked_outputs
from features.stores import tracking
from features.stores.feast.columns import IDS
from features.stores.feast.names import hidden_view_name, view_name
from features.stores.feast.retrieval import historical_frame
from features.stores.files import write_csv, write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import Params, TrainProbesParams, load_params
from pipelines.stores import feature_store

log = logging.getLogger("saefs.train_probes")


@dataclass(frozen=True)
class Cell:
    """One probed feature set: a Feast feature service, what it holds, and the threshold the probe itself
    applies (a `q<NN>` quantile, fitted per probe on the raw view; numbers are binary views already)."""

    name: str
    service: str
    input: str  # "sparse" (SAE codes, raw or binarized) or "dense" (hidden states)
    params: dict[str, Any]

    @property
    def binarize(self) -> Threshold | None:
        """The threshold the probe applies itself: a quantile's (its view is raw); None where the view holds the
        codes as probed (continuous, or binarized at a number)."""
        threshold = self.params.get("binarize")
        return threshold if view_threshold(threshold) is None else None

    def record(self, model: str) -> dict[str, Any]:
        """The cell as its probes' runs record it (`tracking.cell_tag`), for whoever serves them."""
        return {"feature_service": self.service, "model": model} | self.params


def center(params: Params, model: str) -> Config | None:
    """The configuration `model`'s marginal sweeps share (None for a full grid)."""
    sae, probes = params.sae_of(model), params.train_probes
    if probes.design != "marginal" or probes.center is None:
        return None
    return center_config(sae.layers, probes.center.width, probes.center.pooling, probes.center.binarize)


def cells(params: Params, model: str) -> list[Cell]:
    sae, probes, op = params.sae_of(model), params.train_probes, params.build_features.binarize_op
    out = []
    for config in sweep(sae.layers, sae.widths, probes.poolings, probes.binarize, probes.design,
                        center(params, model)):
        out.append(Cell(view_name(model, config.layer, config.width, config.pooling, config.binarize, op),
                        view_name(model, config.layer, config.width, config.pooling,
                                  view_threshold(config.binarize), op),
                        "sparse", config.as_dict() | {"op": op}))
    out += [Cell(hidden_view_name(model, layer, pooling), hidden_view_name(model, layer, pooling), "dense",
                 {"layer": layer, "width": "hidden", "pooling": pooling, "binarize": None})
            for layer in sae.layers for pooling in probes.hidden]
    return out


class Timings(dict[str, float]):
    """Seconds per phase of the stage (retrieval, fitting, logging), for the metrics and the benchmark."""

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self[phase] = round(self.get(phase, 0.0) + time.perf_counter() - started, 2)


def empty_reason(cell: Cell, X: pd.DataFrame, train: np.ndarray) -> str | None:
    """Why a sparse cell cannot be probed: no latent active in any training text (None if it can)."""
    if cell.input != "sparse":
        return None
    active = X[IDS].map(lambda ids: ids is not None and len(ids) > 0).to_numpy()
    if active[train].any():
        return None
    return (f"no latent is active in any of its {int(train.sum())} training texts (a binarize threshold above "
            "every pooled value, or an SAE whose latents never fire on this data): a probe could only predict "
            "the majority class; lower train_probes.binarize or check the SAE (check_sae)")


@dataclass
class Fits:
    """Every fit of one stage instance on the same resamples, and the prediction rows they wrote."""

    text_ids: np.ndarray
    y: np.ndarray
    labels: list[Any]
    splits: list[Resample]
    p: TrainProbesParams
    timings: Timings
    rows: list[pd.DataFrame] = field(default_factory=list)

    def fit_all(self, jobs: Sequence[FitJob]) -> Iterator[tuple[dict[str, Any], Any]]:
        """Fit every job on every resample, in one queue of `n_jobs` workers that go on fitting while the caller
        logs: per job, in order, its summary and its resample-0 estimator (the one that is logged). The rows are
        kept."""
        done = fit_many(jobs, self.y, self.text_ids, self.splits, labels=self.labels, cv=self.p.cv_folds,
                        n_jobs=self.p.n_jobs)
        for job in jobs:
            with self.timings("fitting"):  # what the workers have not fitted yet, waited for
                rows, first = next(done)
            self.rows.append(rows)
            cost.work(fits=len(self.splits))
            with self.timings("scoring"):
                summary = summarize(rows, self.labels)[job.name]
            if summary["not_converged"]:
                log.warning("%s: %d of %d resamples did not converge", job.name, summary["not_converged"],
                            len(self.splits))
            yield summary, first

    def reuse(self, fit: str, name: str) -> dict[str, Any]:
        """Fit `fit`'s rows again under `name`, for a fit that would repeat it (the same probe, rows and resamples):
        no refit; its summary."""
        rows = next(rows for rows in self.rows if rows["fit"].iat[0] == fit)
        self.rows.append(rows.assign(fit=name))
        return summarize(self.rows[-1], self.labels)[name]

    def probe(self, cell: Cell, X: pd.DataFrame, width: int, name: str | None = None, kind: str = "logreg",
              select_k: int | None = None, subset: Callable[[Resample], np.ndarray] | None = None) -> FitJob:
        """The job fitting `cell`'s probe (the threshold it applies itself, if any, included) on every resample, under
        `name` (default the cell's), on `subset` of each training part if given."""
        p = self.p
        return FitJob(name or cell.name, lambda seed: make_probe(
            kind, width=width if cell.input == "sparse" else None, input=cell.input, select_k=select_k,
            binarize=cell.binarize, op=cell.params.get("op", ">"), C_grid=p.C_grid, cv=p.cv_folds, seed=seed),
            X, subset)


def input_example(X: pd.DataFrame) -> pd.DataFrame:
    """Three rows as plain lists: the signature then reads 64-bit ids and values, which the online
    store's 32-bit arrays widen into safely (the reverse would be refused)."""
    return pd.DataFrame({column: [np.asarray(v).tolist() for v in X[column].head(3)] for column in X.columns})


def _log_cell(name: str, cell_params: dict, summary: dict, probe: Any, X: pd.DataFrame, tags: dict) -> str:
    with tracking.child_run(name, params=cell_params, tags=tags):
        tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        return tracking.log_probe(probe, input_example(X)).model_uri


def dvc_hashes(*stages: str) -> dict[str, str]:
    """The md5 DVC recorded for the outputs of `stages` (dvc.lock), to tie a run to its data and features."""
    return {f"dvc.{path}": md5 for path, md5 in locked_outputs(paths.DVC_LOCK, list(stages), under="").items()}


def run(item: str) -> None:
    model, _, dataset = item.partition("/")
    params = load_params()
    params.dataset(dataset)
    prepared = pd.read_parquet(paths.prepared(dataset))
    entity_df = prepared[["text_id", "event_timestamp"]]
    y, train = prepared["label"].to_numpy(), (prepared["split"] == "train").to_numpy()
    classes = np.unique(y[train])
    if len(classes) < 2:
        raise SaefsError(f"{dataset}: the training split holds one class only (label {classes.tolist()}); a probe "
                         "needs two: check the dataset's labels and prepare_data's split")
    p, timings = params.train_probes, Timings()
    cost.work(texts=len(prepared))
    # The same splits for every model of this dataset (they depend on the labels, the prepared split
    # and its seed only), so fits of two models compare paired on the same texts.
    fits = Fits(prepared["text_id"].to_numpy(), y, np.unique(y).tolist(),
                resamples(y, ~train, p.resamples, params.prepare_data.seed), p, timings)
    store = feature_store(params.feast_apply)  # after the cheap checks: importing feast costs ~16 s
    tracking_uri = tracking.configure(params.promote.tracking_uri)
    tracking.experiment(f"saefs/{dataset}")
    middle = center(params, model)
    results: dict[str, Any] = {"dataset": dataset, "model": model, "resamples": p.resamples, "intervals": INTERVALS,
                               "design": {"design": p.design, "center": None if middle is None else middle.as_dict()},
                               "cells": {}, "skipped": {}, "baselines": {}}
    started = time.perf_counter()
    tags = {"dataset": dataset, "model": model, "stage": "train_probes",
            **dvc_hashes(f"prepare_data@{dataset}", f"build_features@{model}")}
    # One BLAS thread: these lbfgs problems are too small to split, and a threaded BLAS on a busy
    # machine spins (4x slower fitting, benchmarks/train_probes.py); `n_jobs` parallelises instead.
    with threadpool_limits(limits=1), tracking.start_parent(
            f"train_probes:{model}", tags=tags, params={"resamples": p.resamples, "cv_folds": p.cv_folds}):
        frames: dict[str, tuple[pd.DataFrame, int, Cell]] = {}
        views: dict[str, tuple[pd.DataFrame, int]] = {}  # a raw view serves its quantile cells too: read once
        probed: list[tuple[Cell, dict[str, str]]] = []
        for cell in cells(params, model):
            if cell.service not in views:
                with timings("retrieval"):
                    views[cell.service] = historical_frame(store, cell.service, entity_df)
            X, width = views[cell.service]
            frames[cell.name] = X, width, cell
            tags = {"feature_service": cell.service, "dataset": dataset, "model": model, "probe": "logreg",
                    **tracking.cell_tag(cell.record(model))}
            if reason := empty_reason(cell, X, train):
                _skip(item, cell, reason, tags, results)
            else:
                probed.append((cell, tags))
        jobs = [fits.probe(cell, *frames[cell.name][:2]) for cell, _ in probed]
        for (cell, tags), (summary, probe) in zip(probed, fits.fit_all(jobs), strict=True):
            summary |= {"chosen": chosen_params(probe)}
            with timings("logging"):
                uri = _log_cell(cell.name, cell.params | {"model": model, "probe": "logreg"}, summary, probe,
                                frames[cell.name][0], tags)
            results["cells"][cell.name] = cell.params | summary | {"model_uri": uri, "input": cell.input,
                                                                  "feature_service": cell.service}
            log.info("%s: %s macro F1 %.3f [%.3f, %.3f] (val %.3f)", item, cell.name, summary["macro_f1"],
                     summary.get("macro_f1_low", np.nan), summary.get("macro_f1_high", np.nan),
                     summary.get("val_macro_f1", np.nan))
        _extras_and_baselines(item, fits, results, frames, prepared,
                              read_by_model(model, prepared["text"].tolist(), params))
        with timings("logging"):
            write_parquet(paths.probe_predictions(dataset, model), pd.concat(fits.rows, ignore_index=True))
            tracking.log_artifact(paths.probe_predictions(dataset, model), "predictions")
    results["seconds"] = {"total": round(time.perf_counter() - started, 1), **timings}
    log.info("%s: %s", item, ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in results["seconds"].items()))
    write_json(paths.probe_metrics(dataset, model), results)
    write_plots(results, paths.probe_plots(dataset, model))
    # last: check_stores deletes it when the store loses these models, and DVC then reruns this stage
    write_json(paths.probes_receipt(dataset, model),
               {"tracking_store": tracking.store_address(tracking_uri),
                "models": sorted(cell["model_uri"] for cell in results["cells"].values())})


def read_by_model(model: str, texts: list[str], params: Params) -> list[str]:
    """Each text cut to what `model` reads at extract.max_tokens, for the TF-IDF baseline on the same words."""
    from features.sources.lm import prepared_tokenizer, read_texts  # transformers: only for this baseline

    return read_texts(prepared_tokenizer(paths.model_dir(model)), texts, params.extract.max_tokens)


def _skip(item: str, cell: Cell, reason: str, tags: dict, results: dict) -> None:
    """Record a cell that cannot be probed: in the metrics, the log and MLflow (where promote and a person look)."""
    log.warning("%s: %s skipped: %s", item, cell.name, reason)
    results["skipped"][cell.name] = cell.params | {"input": cell.input, "reason": reason}
    with tracking.child_run(cell.name, params=cell.params, tags=tags | {"status": "skipped", "reason": reason}):
        pass


def _extras_and_baselines(item: str, fits: Fits, results: dict, frames: dict, prepared: pd.DataFrame,
                          read: list[str]) -> None:
    """The best SAE cell's (by validation) tree, top-k selection and training-size curve, then TF-IDF on the whole
    text and on the part the LM reads (`read`) and the majority class: their fits in one queue."""
    baselines = [FitJob("tfidf", make_tfidf_baseline, prepared[["text"]]),
                 FitJob("tfidf_truncated", make_tfidf_baseline, pd.DataFrame({"text": read})),
                 FitJob("majority", lambda seed: make_majority_baseline(), prepared[["text"]])]
    sae_cells = {k: v for k, v in results["cells"].items() if v["input"] == "sparse"}
    results["best_cell"], results["training_curve"] = None, []
    if not sae_cells:
        log.warning("%s: no SAE cell could be probed (see `skipped`): no tree, selection or training curve", item)
        _record_baselines(fits, results, baselines, fits.fit_all(baselines))
        return
    best = max(sae_cells, key=lambda k: sae_cells[k].get("val_macro_f1", -1))
    X, width, cell = frames[best]
    p = fits.p
    variants = (("tree", "tree", None), ("select", "logreg", p.select_k))
    variant_jobs = [fits.probe(cell, X, width, name=f"{best}__{variant}{select_k or ''}", kind=kind,
                               select_k=select_k) for variant, kind, select_k in variants]
    # the curve: per resample, nested stratified subsets of its training part (features.core.metrics); every
    # training row is the best cell's own fit, whose rows are kept already
    curve_jobs = [fits.probe(cell, X, width, name=f"{best}__curve{fraction:g}",
                             subset=partial(curve_subset, fits, fraction))
                  for fraction in p.train_fractions if fraction != 1]
    done = fits.fit_all(variant_jobs + curve_jobs + baselines)
    tags = {"feature_service": cell.service, **tracking.cell_tag(cell.record(results["model"]))}
    shown = {k: cell.params[k] for k in ("layer", "width", "pooling", "binarize")}  # the variants' params and rows
    for (variant, kind, select_k), job in zip(variants, variant_jobs, strict=True):
        summary, probe = next(done)
        summary |= {"chosen": chosen_params(probe)}
        with fits.timings("logging"):
            uri = _log_cell(job.name, shown | {"probe": kind, "select_k": select_k}, summary, probe, X,
                            tags | {"probe": variant})
        results["cells"][job.name] = shown | summary | {"model_uri": uri, "input": "sparse", "variant": variant}
    curve = []
    for fraction in p.train_fractions:
        summary = fits.reuse(best, f"{best}__curve{fraction:g}") if fraction == 1 else next(done)[0]
        curve.append({"fraction": fraction, "train_rows": summary["n_train"], **summary})
    results["best_cell"], results["training_curve"] = best, curve
    log.info("%s: best cell by validation %s", item, best)
    _record_baselines(fits, results, baselines, done)


def _record_baselines(fits: Fits, results: dict, baselines: list[FitJob], done: Iterator[tuple[dict, Any]]) -> None:
    """The baselines' summaries, the rest of `done`, into the results and MLflow."""
    for job, (summary, _) in zip(baselines, done, strict=True):
        with fits.timings("logging"), tracking.child_run(job.name, params={"probe": job.name},
                                                          tags={"probe": job.name, "baseline": "true"}):
            tracking.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        results["baselines"][job.name] = summary


def curve_subset(fits: Fits, fraction: float, resample: Resample) -> np.ndarray:
    """The training-curve rows of `resample` at `fraction`: a stratified, nested subset of its training part."""
    rows = np.flatnonzero(resample.train)
    chosen = training_curve_fractions(fits.y[rows], [fraction], seed=resample.index,
                                      min_per_class=fits.p.cv_folds)[fraction]
    mask = np.zeros_like(resample.train)
    mask[rows[chosen]] = True
    return mask


def write_plots(results: dict, path: Path) -> None:
    """One row per cell for DVC plots (macro F1 by layer, pooling, binarization)."""
    rows = [{"cell": name, "layer": c["layer"], "width": c["width"], "pooling": c["pooling"],
             "binarize": "none" if c["binarize"] is None else str(c["binarize"]), "variant": c.get("variant", "logreg"),
             "macro_f1": c["macro_f1"], "macro_f1_low": c["macro_f1_low"], "macro_f1_high": c["macro_f1_high"]}
            for name, c in results["cells"].items()]
    write_csv(path, pd.DataFrame(rows))


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="item", help="<model>/<dataset>, keys of `sae` and `datasets`")


if __name__ == "__main__":
    sys.exit(main())
