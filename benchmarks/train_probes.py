"""Benchmark `train_probes`: where the grid's time goes (retrieval, fitting, logging), in one run.

    python benchmarks/train_probes.py --item smollm2_135m_it/spam [--resamples 2]

Needs `dvc repro materialize` (the Feast store with the cell's views). For the (dataset, model)
given, it times, with the stage's own code and params:

  retrieval  every feature service of the cell read through Feast (`historical_frame`)
  fitting    each cell's probe on `--resamples` resamples, with its out-of-fold validation
             predictions (`fit_resamples`): one resample at a time with BLAS on all cores
             (baseline) and with one BLAS thread, two resamples at once in worker processes of one
             thread (the stage's `n_jobs: 2`); ratios, and a check that the predictions are equal
  search     the stage's search (FoldSearchCV: each fold's selection and scaling fit once, the chosen
             candidate's out-of-fold predictions kept) against scikit-learn's GridSearchCV followed by
             cross_val_predict refitting the chosen candidate (what the stage did before), one BLAS
             thread, one resample at a time; ratio, and a check that the predictions are equal
  queue      every cell's resamples in one queue of two workers (`fit_many`, as the stage) against one
             `fit_resamples` per cell (the stage before); ratio, and a check that the predictions are equal
  logging    `log_model` of one probe with explicit requirements (what the stage does) against
             MLflow inferring them (its default: it imports the model in a subprocess), ratio

then projects the stage's time for the full cell (all resamples) from these, and prints the phase
split that the last `dvc repro` recorded in metrics/train_probes/*/*.json for the whole grid.
MLflow writes go to a scratch store; the project's mlflow.db is not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_predict
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

import pipelines  # noqa: F401  (offline environment)
from features.core.predictions import FitJob, Resample, fit_many, fit_resamples, resamples
from features.core.probes import SEARCH_STEP, make_probe
from features.stores import tracking
from features.stores.feast.retrieval import historical_frame
from pipelines import paths
from pipelines.params import TrainProbesParams, load_params
from pipelines.stores import FEATURE_REPO
from pipelines.train_probes import Cell, cells, input_example


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


def recorded_grid() -> None:
    """The phase split of the last full run, summed over every (dataset, model)."""
    totals: dict[str, float] = {}
    for path in sorted(Path("metrics/train_probes").glob("*/*.json")):
        seconds = json.loads(path.read_text()).get("seconds")
        if isinstance(seconds, dict):
            for phase, value in seconds.items():
                totals[phase] = totals.get(phase, 0.0) + value
    if not totals:
        print("no phase timings in metrics/train_probes yet (run `dvc repro train_probes`)")
        return
    total = totals.pop("total")
    print(f"last full grid (metrics/train_probes): {total / 60:.1f} min in the stages; " + ", ".join(
        f"{phase} {value / total:.0%}" for phase, value in totals.items())
          + f", start-up and the rest {1 - sum(totals.values()) / total:.0%}")


def probe_of(p: TrainProbesParams, cell: Cell, width: int, seed: int) -> Pipeline:
    """The stage's logistic-regression probe of `cell` for a resample's seed."""
    return make_probe("logreg", width=width if cell.input == "sparse" else None, input=cell.input, C_grid=p.C_grid,
                      cv=p.cv_folds, seed=seed)


def grid_search_probas(probe: Pipeline, X: pd.DataFrame, y: np.ndarray, resample: Resample) -> np.ndarray:
    """The probe fit with GridSearchCV in place of its search, then its validation probabilities refit by
    cross_val_predict at the chosen candidate: [test rows; train rows], as the stage's prediction rows."""
    search = probe.named_steps[SEARCH_STEP]
    probe.steps[-1] = (SEARCH_STEP, GridSearchCV(search.estimator, search.param_grid, scoring=search.scoring,
                                                 cv=search.cv, error_score="raise"))
    train, test = X[resample.train].reset_index(drop=True), X[resample.test].reset_index(drop=True)
    probe.fit(train, y[resample.train])
    chosen = Pipeline([*clone(probe[:-1]).steps, ("chosen", clone(probe.named_steps[SEARCH_STEP].best_estimator_))])
    val = cross_val_predict(chosen, train, y[resample.train], cv=search.cv, method="predict_proba")
    return np.vstack([probe.predict_proba(test), val])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--item", default="smollm2_135m_it/spam", help="<model>/<dataset>, as the stage takes it")
    parser.add_argument("--resamples", type=int, default=2,
                        help="resamples per cell here (the stage: train_probes.resamples)")
    args = parser.parse_args()
    model, _, dataset = args.item.partition("/")
    params = load_params()
    p = params.train_probes
    prepared = pd.read_parquet(paths.prepared(dataset))
    y, ids = prepared["label"].to_numpy(), prepared["text_id"].to_numpy()
    splits = resamples(y, (prepared["split"] == "test").to_numpy(), args.resamples, params.prepare_data.seed)
    labels = sorted(set(y.tolist()))
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(FEATURE_REPO))
    grid = cells(params, model)
    retrieval, frames = 0.0, {}
    for cell in grid:
        seconds, frames[cell.service] = timed(historical_frame, store, cell.service,
                                              prepared[["text_id", "event_timestamp"]])
        retrieval += seconds
    print(f"{args.item}: {len(grid)} cells, {len(prepared)} texts, {p.resamples} resamples in params")
    print(f"retrieval: {retrieval:.1f} s for {len(grid)} services ({retrieval / len(grid):.2f} s each)")

    # (resamples fitted at once, BLAS threads in this process): the stage's setting is (n_jobs, 1); the
    # baselines are one resample at a time, with the BLAS default (all cores, which small lbfgs problems
    # oversubscribe) and with one thread
    configs = {(1, None): 0.0, (1, 1): 0.0, (2, 1): 0.0}
    grid_search = 0.0
    fitted, stage_rows = None, {}
    with threadpool_limits(limits=1):  # starts the loky workers, so their one-time start-up is not timed
        fit_resamples(lambda seed: make_probe("logreg", input="dense", C_grid=[1.0], cv=2), frames[grid[-1].service][0],
                      y, ids, splits[:2], fit="warm-up", labels=labels, cv=2, n_jobs=2)
    for cell in grid:
        X, width = frames[cell.service]
        make = partial(probe_of, p, cell, width)
        rows = {}
        for (n_jobs, threads) in configs:
            with threadpool_limits(limits=threads):
                seconds, (rows[n_jobs, threads], fitted) = timed(
                    fit_resamples, make, X, y, ids, splits, fit=cell.service,
                    labels=labels, cv=p.cv_folds, n_jobs=n_jobs)
            configs[n_jobs, threads] += seconds
            print(f"  fit {cell.service} resamples at once={n_jobs} BLAS threads={threads or 'default'}: "
                  f"{seconds / args.resamples:.2f} s per resample")
        pd.testing.assert_frame_equal(rows[2, 1], rows[1, 1])  # parallel resamples: the very same predictions
        stage_rows[cell.service] = rows[2, 1]
        with threadpool_limits(limits=1):
            seconds, probas = timed(lambda make=make, X=X: [grid_search_probas(make(r.index), X, y, r)
                                                            for r in splits])
        grid_search += seconds
        ours = rows[1, 1][[c for c in rows[1, 1].columns if c.startswith("proba_")]].to_numpy()
        np.testing.assert_allclose(ours, np.vstack(probas), rtol=0, atol=1e-9)
        print(f"  fit {cell.service} with GridSearchCV + cross_val_predict: {seconds / args.resamples:.2f} s "
              "per resample")
    per_fit = {config: total / (len(grid) * args.resamples) for config, total in configs.items()}
    baseline = per_fit[1, None]
    print("fitting, per cell and resample: " + ", ".join(
        f"resamples at once={n} BLAS threads={t or 'default'} {s:.2f} s ({baseline / s:.2f}x)"
        for (n, t), s in per_fit.items()) + f"; load average {os.getloadavg()[0]:.1f}")
    print("prediction rows of parallel and sequential resamples are equal")
    searched = grid_search / (len(grid) * args.resamples)
    print(f"search, per cell and resample, one BLAS thread: GridSearchCV + cross_val_predict {searched:.2f} s, "
          f"FoldSearchCV {per_fit[1, 1]:.2f} s ({searched / per_fit[1, 1]:.2f}x), equal predictions; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"the stage's fitting (FoldSearchCV, {p.n_jobs} resamples at once) against GridSearchCV one resample at a "
          f"time: {searched / per_fit.get((p.n_jobs, 1), per_fit[1, 1]):.2f}x")

    # The stage queues every cell's resamples for its workers at once (fit_many): against one fit_resamples per
    # cell (the stage before, timed above as "resamples at once=2"), where a worker idles at each cell's last
    # resample when the resamples do not divide among the workers
    jobs = [FitJob(cell.service, partial(probe_of, p, cell, frames[cell.service][1]), frames[cell.service][0])
            for cell in grid]
    with threadpool_limits(limits=1):
        queued_seconds, queued = timed(lambda: list(fit_many(jobs, y, ids, splits, labels=labels, cv=p.cv_folds,
                                                             n_jobs=2)))
    for job, (rows, _) in zip(jobs, queued, strict=True):
        pd.testing.assert_frame_equal(rows, stage_rows[job.name])
    print(f"every cell's fits in one queue of 2 workers: {queued_seconds:.1f} s, one cell at a time "
          f"{configs[2, 1]:.1f} s ({configs[2, 1] / queued_seconds:.2f}x), equal predictions, {args.resamples} "
          f"resamples a cell; load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as scratch:
        tracking.configure(f"sqlite:///{scratch}/mlflow.db")
        tracking.experiment("bench", artifact_location=f"{scratch}/artifacts")
        example = input_example(X)
        import mlflow

        with tracking.start_parent("bench"):
            tracking.log_probe(fitted, example, name="warm-up")  # the first log_model pays one-time imports
            explicit, _ = timed(tracking.log_probe, fitted, example)
            inferred, _ = timed(mlflow.sklearn.log_model, fitted, name="inferred", input_example=example,
                                skops_trusted_types=tracking.trusted_types(fitted))
        mlflow.set_tracking_uri(None)
    print(f"logging: {explicit:.2f} s per probe with explicit requirements, {inferred:.2f} s when MLflow infers "
          f"them ({inferred / explicit:.1f}x slower)")
    fit_stage = per_fit.get((p.n_jobs, 1), per_fit[1, 1]) * len(grid) * p.resamples
    projected = retrieval + fit_stage + explicit * len(grid)
    print(f"projected for this (dataset, model) at params' resamples={p.resamples}, n_jobs={p.n_jobs} (grid cells "
          "only): "
          f"{projected:.0f} s = retrieval {retrieval / projected:.0%}, fitting {fit_stage / projected:.0%}, "
          f"logging {explicit * len(grid) / projected:.0%}")
    recorded_grid()


if __name__ == "__main__":
    main()
