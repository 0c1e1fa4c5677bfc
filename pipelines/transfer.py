"""Stage transfer: source models' SAE features predict target models' correctness, and across languages.

Cross-model: for every source model (its `transfer.sources` SAE cell), the item prompts of every
behaviour task are featurized with the same `extract()` as the extract stage (a judgement task's texts are
datasets' prepared texts, which extract has featurized already: their codes and hidden states are read from
the feature store, so no text runs twice through a model), and per target a
probe on the (binarized, pooled) codes predicts whether the target answered right, on
`transfer.resamples` stratified splits of the target's items (the first is the target's own
train/test split): a source x target matrix of macro F1 (mean over resamples, corrected resampled-t
95% interval), AUROC and recall at 1%/5% FPR, beside the hidden-state, TF-IDF and majority
baselines. A target with one class (always right or always wrong), or a class too rare for a
resample, is reported as skipped, never trained on.

Cross-lingual: every `transfer.cross_lingual` task in its languages (embedded: offensive tweets in
English, Debian's offensive and other fortunes in Spanish and Italian), same features, trained on one
language and tested on each (zero-shot off the diagonal), on `transfer.resamples` splits of every
language: SAE, hidden-state, TF-IDF and majority probes on every cell, each with the same corrected
resampled-t interval (features.core.transfer); one matrix per layer of `cross_lingual_layers` (the paper drew
its heatmaps per layer), every layer from one forward.

Why not the extract/build_features grid for item prompts and the cross-lingual sets: they are not
`datasets` (they would enter every train_probes and promote cell); this stage calls the same
extraction code directly on them, with `transfer.max_tokens` (item prompts outgrow extract's), and
records each source's forward rate in metrics/cost/transfer.json.

Writes plots/transfer/{cross_model,cross_lingual}.csv (+ PNG heatmaps), metrics/transfer/*.json
(task -> source/model -> target/test language, for the rows trained on the first language), every
fit's per-text predictions (data/predictions/transfer.parquet, fits named
`{task}:{source}->{target}:{probe}` and `{task}:{model}:L{layer}:{train}->{test}:{probe}`), and one MLflow run in
`saefs/transfer` with a child run per cell, the heatmaps and the predictions as artifacts.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from features.core.evidence import with_holm_fields
from features.core.naming import sae_name
from features.core.predictions import (
    KEYS,
    VAL,
    Resample,
    fit_resamples,
    paired_fields,
    resample_metrics,
    resamples,
    summarize,
)
from features.core.prepare import PrepareConfig, prepare
from features.core.probes import make_majority_baseline, make_probe, make_tfidf_baseline
from features.core.transfer import (
    CROSS_LINGUAL_COLUMNS,
    CROSS_MODEL_COLUMNS,
    SCORES,
    VERSUS,
    by_probe,
    codes_frame,
    cross_lingual_resamples,
    heatmap,
    hidden_frame,
    skip_reason,
    train_language_rows,
)
from features.errors import SaefsError
from features.forward.extract import extract
from features.forward.throughput import throughput, truncated_forward_flops
from features.sources.datasets import load_source
from features.sources.lm import load_prepared, resolve_device
from features.sources.sae import SAE_INDEX, load_sae
from features.stores import tracking
from features.stores.feast.names import hidden_view_name, view_name
from features.stores.feast.retrieval import historical_frame
from features.stores.files import write_csv, write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import CrossLingualTask, JudgementTask, Params, load_params
from pipelines.stores import feature_store

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("saefs.transfer")



def language_frames(task: str, spec: CrossLingualTask, params: Params) -> pd.DataFrame:
    """Every language of a cross-lingual task, each prepared as prepare_data does (deduplicated, sampled to
    `max_rows`, balanced if asked, its own stratified train/test split); a language with one class is refused
    with its counts."""
    prep, frames = params.prepare_data, []
    for lang, source in spec.languages.items():
        raw = load_source(source.source, split=source.split, text_field=source.text_field,
                          label_field=source.label_field)
        cfg = PrepareConfig(name=f"{task}_{lang}", labels=tuple(spec.labels), label_names=spec.label_names, lang=lang,
                            max_rows=spec.max_rows, balance=spec.balance, test_size=prep.test_size, seed=prep.seed,
                            event_timestamp=prep.event_timestamp)
        try:
            frames.append(prepare(raw.drop(columns="lang", errors="ignore"), cfg)[0])
        except SaefsError as err:
            raise SaefsError(f"transfer.cross_lingual.{task}.languages.{lang} ({source.source}): {err}") from None
    return pd.concat(frames, ignore_index=True)


class Featurizer:
    """One source model and its transfer SAE cells (`layer`, and each cross-lingual layer, at `width`): texts ->
    per layer (codes frame, hidden frame), and the SAE width; one forward for every layer asked. `record()` writes
    the forward's rate over every call to the stage's cost record."""

    def __init__(self, source: str, params: Params) -> None:
        self.source, self.cell, self.params = source, params.transfer.sources[source], params
        device = resolve_device(params.extract.device)
        self.model, self.tokenizer = load_prepared(paths.model_dir(source), device)
        specs = json.loads((paths.sae_dir(source) / SAE_INDEX).read_text())
        self.saes = {layer: load_sae(specs[sae_name(layer, self.cell.width)], device)
                     for layer in self.cell.layers}
        self.width = int(self.saes[self.cell.layer].cfg.d_sae)
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0

    def __call__(self, texts: list[str], layers: list[int]) -> dict[int, tuple[pd.DataFrame, pd.DataFrame]]:
        t, ex, width = self.params.transfer, self.params.extract, self.cell.width
        started = time.perf_counter()
        out = extract(self.model, self.tokenizer, texts, layers, {layer: {width: self.saes[layer]} for layer in layers},
                      [t.pooling], max_tokens=t.max_tokens, batch_size=ex.batch_size, include_bos=ex.pools_bos,
                      paper_compat=ex.paper_compat)
        self.seconds += time.perf_counter() - started
        pooled = int(out.n_tokens.sum())
        encoders = sum(self.saes[layer].cfg.d_in * self.saes[layer].cfg.d_sae for layer in layers)
        self.tokens += pooled + len(texts)  # every text runs its BOS through the model too
        self.flops += (pooled + len(texts)) * truncated_forward_flops(self.model, layers, encoders)
        cost.work(texts=len(texts), tokens=pooled)
        if out.n_truncated:
            log.warning("%d of %d texts cut at transfer.max_tokens=%d", out.n_truncated, len(texts), t.max_tokens)
        return {layer: (codes_frame(out.codes[layer, width, t.pooling]), hidden_frame(out.hidden[layer, t.hidden]))
                for layer in layers}

    def record(self) -> None:
        if self.tokens:
            cost.forward(self.source, throughput(self.tokens, self.seconds, round(self.flops / self.tokens),
                                                 self.model.device))


def stored_features(store: FeatureStore, source: str, texts: pd.DataFrame,
                    params: Params) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """A judgement task's texts (`source_text_id`, `event_timestamp`) are prepared texts of the profile's datasets,
    which extract featurized already: the source's transfer cell (continuous codes, binarized by the probe as a
    forward's) and hidden state, read from its Feast views. The codes, the hidden states and the SAE width."""
    t, cell = params.transfer, params.transfer.sources[source]
    entity_df = texts[["source_text_id", "event_timestamp"]].rename(columns={"source_text_id": "text_id"})
    views = (view_name(source, cell.layer, cell.width, t.pooling, None, params.build_features.binarize_op),
             hidden_view_name(source, cell.layer, t.hidden))
    read = [historical_frame(store, view, entity_df) for view in views]
    for view, (frame, _) in zip(views, read, strict=True):
        missing = frame.iloc[:, 0].isna().to_numpy()
        if missing.any():
            raise SaefsError(f"{int(missing.sum())} judged texts have no row in the feature view {view} (e.g. "
                             f"{entity_df['text_id'].iloc[int(np.argmax(missing))]}): rerun `dvc repro "
                             f"build_features@{source}` so that its views hold every prepared dataset")
    (codes, width), (hidden, _) = read
    return codes, hidden, width


def _sae_probe(params: Params, width: int, seed: int, op: str | None = None) -> Any:
    """The SAE probe of a cell, binarizing with `op` (a cross-lingual task's), else build_features' operator."""
    t = params.transfer
    return make_probe("logreg", width=width, binarize=t.binarize, op=op or params.build_features.binarize_op,
                      C_grid=t.C_grid, cv=t.cv_folds, seed=seed)


def _dense_probe(params: Params, seed: int) -> Any:
    t = params.transfer
    return make_probe("logreg", input="dense", C_grid=t.C_grid, cv=t.cv_folds, seed=seed)


class Cell:
    """The fits of one transfer cell on the same resamples: each fit's summary, and every prediction row."""

    def __init__(self, name: str, frame: pd.DataFrame, splits: list[Resample], cv: int, n_jobs: int = 1) -> None:
        self.name, self.splits, self.cv, self.n_jobs = name, splits, cv, n_jobs
        self.y, self.text_ids = frame["label"].to_numpy(), frame["text_id"].to_numpy()
        self.labels = np.unique(self.y).tolist()
        self.rows: list[pd.DataFrame] = []

    def fit(self, probe: str, make: Any, X: Any, shared: dict[Any, pd.DataFrame] | None = None,
            key: Any = None) -> dict[str, Any]:
        """Fit `probe` on the cell's splits, or, when `shared` holds `key` (a fit of the same probe on the same
        texts, labels and splits in another cell), keep that fit's rows; a new fit is stored there under `key`."""
        if shared is None or key is None:
            return self.add(probe, fitted(make, X, self, probe))
        if key not in shared:
            shared[key] = fitted(make, X, self, probe)
        return self.add(probe, shared[key])

    def add(self, probe: str, rows: pd.DataFrame) -> dict[str, Any]:
        """Keep a fit's prediction rows on this cell's splits (named `<cell>:<probe>`); its summary."""
        fit = f"{self.name}:{probe}"
        self.rows.append(rows.assign(fit=fit))
        return summarize(self.rows[-1], self.labels)[fit]

    def versus(self, a: str, *others: str) -> dict[str, float]:
        """Probe `a` minus each of `others` in macro F1 on the same splits: `<a>_minus_<other>`, its interval and
        p-value (the per-resample scores computed once for all)."""
        table = resample_metrics(pd.concat(self.rows, ignore_index=True), self.labels)
        out = {}
        for b in others:
            out |= paired_fields(table, f"{self.name}:{a}", f"{self.name}:{b}", f"{a}_minus_{b}")
        return out


def fitted(make: Any, X: Any, cell: Cell, probe: str) -> pd.DataFrame:
    """A probe fitted on each of `cell`'s splits with its labels, folds and jobs (counted in the cost record): its
    prediction rows, named `<cell>:<probe>`."""
    rows, _ = fit_resamples(make, X, cell.y, cell.text_ids, cell.splits, fit=f"{cell.name}:{probe}",
                            labels=cell.labels, cv=cell.cv, n_jobs=cell.n_jobs)
    cost.work(fits=len(cell.splits))
    return rows


def _scores(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary.get(key) for key in SCORES} | {"resamples": summary["resamples"],
                                                         "not_converged": summary["not_converged"]}


def cross_model_cell(task: str, source: str, target: str, labels: pd.DataFrame, codes: pd.DataFrame,
                     hidden: pd.DataFrame, width: int, params: Params, target_hidden: pd.DataFrame | None = None,
                     shared: dict[Any, pd.DataFrame] | None = None) -> tuple[dict[str, Any], list[pd.DataFrame]]:
    """One source -> target cell on `transfer.resamples` stratified splits of the target's items (resample 0
    is its train/test split); `codes`/`hidden` (the source's) and `target_hidden` (the target's own hidden
    states, when the target is a transfer source too) rows are aligned with `labels` rows. The row, with the
    SAE probe's paired differences against TF-IDF and the target's own hidden-state probe (corrected
    resampled t over the shared splits; Holm is applied over the whole matrix), and the prediction rows of
    its SAE, hidden-state, TF-IDF, target hidden-state and majority fits. The fits that do not depend on the
    source (TF-IDF, majority, the target's hidden states, which are also the source's own when source is target)
    are made once per (task, target) when the cells share `shared`."""
    t = params.transfer
    y, train = labels["label"].to_numpy(), (labels["split"] == "train").to_numpy()
    row: dict[str, Any] = {"task": task, "source": source, "target": target,
                           "n_train": int(train.sum()), "n_test": int((~train).sum()),
                           "minority_share": round(float(min(np.mean(y == 1), np.mean(y != 1))), 4)}
    reason = skip_reason(y, train, ~train, t.cv_folds)
    if reason:
        return row | {"status": reason}, []
    try:
        cell = Cell(f"{task}:{source}->{target}", labels, resamples(y, ~train, t.resamples, params.prepare_data.seed),
                    t.cv_folds, t.n_jobs)
        sae = cell.fit("sae", lambda seed: _sae_probe(params, width, seed), codes)
        dense = cell.fit("hidden", lambda seed: _dense_probe(params, seed), hidden, shared,
                         ("hidden", task, target, source))
        tfidf = cell.fit("tfidf", make_tfidf_baseline, labels[["text"]], shared, ("tfidf", task, target))
        own = (cell.fit("target_hidden", lambda seed: _dense_probe(params, seed), target_hidden, shared,
                        ("hidden", task, target, target)) if target_hidden is not None else {})
        majority = cell.fit("majority", lambda seed: make_majority_baseline(), codes, shared,
                            ("majority", task, target))
    except SaefsError as err:  # a class too rare for some resample: reported and counted, never a number
        return row | {"status": f"skipped: {err}"}, []
    row |= _scores(sae) | _f1("hidden_f1", dense) | _f1("tfidf_f1", tfidf) | _f1("target_hidden_f1", own)
    row |= cell.versus("sae", "tfidf", *(["target_hidden"] if own else []))
    return row | {"majority_f1": majority["macro_f1"], "status": "ok"}, cell.rows


def cross_lingual_cells(task: str, model: str, layer: int, frame: pd.DataFrame, codes: pd.DataFrame,
                        hidden: pd.DataFrame, width: int,
                        params: Params) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """Every (train language, test language) cell on `transfer.resamples` splits of each language (split r
    trains on the train language's training part, tests on the test language's test part; see
    features.core.transfer): the SAE, hidden-state, TF-IDF and majority fits, each with the corrected
    resampled-t interval. `codes`/`hidden` rows are aligned with `frame` (prepared rows of every language).
    The cells of a train language train on the same texts in each split, so each probe is fitted once per split
    for the whole row and tested on every language's test part. The rows, and the prediction rows of their fits."""
    t, y = params.transfer, frame["label"].to_numpy()
    op = t.cross_lingual[task].binarize_op
    probes = {"sae": (lambda seed: _sae_probe(params, width, seed, op), codes),
              "hidden": (lambda seed: _dense_probe(params, seed), hidden),
              "tfidf": (make_tfidf_baseline, frame[["text"]]),  # no shared vocabulary across languages
              "majority": (lambda seed: make_majority_baseline(), codes)}
    is_test, lang = frame["split"] == "test", pd.Series(frame["lang"].to_numpy(), index=frame["text_id"])
    rows, predictions = [], []
    matrix = cross_lingual_resamples(frame["lang"], y, is_test, t.resamples, params.prepare_data.seed)
    for train_lang, row_splits, cells in train_language_rows(matrix):
        reasons = {test_lang: skip_reason(y, splits[0].train, splits[0].test, t.cv_folds)
                   for test_lang, splits in cells.items()}
        row_fits: dict[str, pd.DataFrame] = {}
        failed = None
        if any(reason is None for reason in reasons.values()):
            whole_row = Cell(f"{task}:{model}:L{layer}:{train_lang}->*", frame, row_splits, t.cv_folds, t.n_jobs)
            try:
                row_fits = {probe: fitted(make, X, whole_row, probe) for probe, (make, X) in probes.items()}
            except SaefsError as err:
                failed = f"skipped: {err}"
        for test_lang, splits in cells.items():
            train, test = splits[0].train, splits[0].test
            row = {"task": task, "model": model, "layer": layer, "train_lang": train_lang, "test_lang": test_lang,
                   "n_train": int(train.sum()), "n_test": int(test.sum())}
            if reasons[test_lang] or failed:
                rows.append(row | {"status": reasons[test_lang] or failed})
                continue
            cell = Cell(f"{task}:{model}:L{layer}:{train_lang}->{test_lang}", frame, splits, t.cv_folds, t.n_jobs)
            summary = {}
            for probe, fits in row_fits.items():  # this cell's test rows, and the fit's validation rows
                keep = (fits["split"] == VAL) | (fits["text_id"].map(lang) == test_lang)
                summary[probe] = cell.add(probe, fits[keep].reset_index(drop=True))
            rows.append(row | _scores(summary["sae"]) | _f1("hidden_f1", summary["hidden"])
                        | _f1("tfidf_f1", summary["tfidf"]) | {"majority_f1": summary["majority"]["macro_f1"],
                                                              "status": "ok"})
            predictions += cell.rows
    return rows, predictions


def _f1(column: str, summary: dict[str, Any]) -> dict[str, Any]:
    """A baseline's macro F1 and its interval under `column`, `<column>_low`, `<column>_high`."""
    return {f"{column}{end}": summary.get(f"macro_f1{end}") for end in ("", "_low", "_high")}


def nested_metrics(table: pd.DataFrame, levels: list[str]) -> dict[str, Any]:
    """{level0: {level1: {level2: {macro_f1, its interval, AUROC, recall@FPR}}}} of the cells that ran."""
    out: dict[str, Any] = {}
    for row in table[table["status"] == "ok"].to_dict("records"):
        leaf = out
        for level in levels:
            leaf = leaf.setdefault(str(row[level]), {})
        leaf.update({key: round(float(row[key]), 4) for key in SCORES if pd.notna(row.get(key))})
    return out


def run() -> dict[str, pd.DataFrame]:
    params = load_params()
    b, t = params.behaviour_labels, params.transfer
    labels = {(task, target): pd.read_parquet(paths.behaviour_labels(target, task))
              for task in b.tasks for target in b.targets}
    judged = {task for task, spec in b.tasks.items() if isinstance(spec, JudgementTask)}
    # each task's texts once (every target labels the same texts; a target may have skipped some)
    texts = {task: pd.concat([labels[task, target][_text_columns(task in judged)] for target in b.targets])
             .drop_duplicates("text_id").reset_index(drop=True) for task in b.tasks}
    languages = {task: language_frames(task, spec, params) for task, spec in t.cross_lingual.items()}
    tracking.configure(params.promote.tracking_uri)
    tracking.experiment("saefs/transfer")
    model_rows: list[dict[str, Any]] = []
    lingual_rows: list[dict[str, Any]] = []
    predictions: list[pd.DataFrame] = []
    started = time.perf_counter()
    with tracking.start_parent("transfer", tags={"stage": "transfer", "pair": "->".join(t.pair)},
                               params={"pooling": t.pooling, "binarize": t.binarize, "resamples": t.resamples}):
        # every source's features of every task's texts first: a cell also reads its target's own hidden states
        features: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame, int]] = {}
        store = feature_store(params.feast_apply) if judged else None
        for source, cell in t.sources.items():
            featurize = Featurizer(source, params) if set(b.tasks) - judged or languages else None
            for task in b.tasks:
                if task in judged:
                    features[source, task] = stored_features(store, source, texts[task], params)
                else:
                    codes, hidden = featurize(texts[task]["text"].tolist(), [cell.layer])[cell.layer]
                    features[source, task] = codes, hidden, featurize.width
            for task, frame in languages.items():
                for layer, (codes, hidden) in featurize(frame["text"].tolist(), cell.lingual_layers).items():
                    with threadpool_limits(limits=1):  # small lbfgs fits: one BLAS thread each, `n_jobs` at once
                        rows, fits = cross_lingual_cells(task, source, layer, frame, codes, hidden, featurize.width,
                                                         params)
                    predictions += fits
                    for row in rows:
                        lingual_rows.append(row)
                        _log_cell(f"{task}:{source}:L{layer}:{row['train_lang']}->{row['test_lang']}", row,
                                  {"layer": layer, "width": cell.width})
            if featurize is not None:
                featurize.record()
            del featurize
            gc.collect()  # one model in memory at a time
        shared: dict[Any, pd.DataFrame] = {}  # the fits cells of one (task, target) share
        for (source, task), (codes, hidden, width) in features.items():
            position = pd.Series(texts[task].index, index=texts[task]["text_id"])
            for target in b.targets:
                frame = labels[task, target]
                at = position[frame["text_id"]].to_numpy()
                own = features.get((target, task))
                with threadpool_limits(limits=1):
                    row, rows = cross_model_cell(task, source, target, frame, codes.iloc[at].reset_index(drop=True),
                                                 hidden.iloc[at].reset_index(drop=True), width, params,
                                                 None if own is None else own[1].iloc[at].reset_index(drop=True),
                                                 shared)
                model_rows.append(row)
                predictions += rows
                cell = t.sources[source]
                _log_cell(f"{task}:{source}->{target}", row, {"layer": cell.layer, "width": cell.width})
                log.info("%s: %s -> %s: %s macro F1 %s", task, source, target, row["status"], row.get("macro_f1"))
        cost.work(cells=len(model_rows) + len(lingual_rows))
        tables = {"cross_model": with_holm(pd.DataFrame(model_rows)).reindex(columns=CROSS_MODEL_COLUMNS),
                  "cross_lingual": pd.DataFrame(lingual_rows).reindex(columns=CROSS_LINGUAL_COLUMNS)}
        write_outputs(tables, predictions)
        _log_artifacts()
    log.info("transfer: %d cross-model and %d cross-lingual cells in %.0f s", len(model_rows), len(lingual_rows),
             time.perf_counter() - started)
    return tables


def _text_columns(judgement: bool) -> list[str]:
    """A task's columns the stage reads: a judged text also names its prepared row (where its features are)."""
    return ["text_id", "text", *(["source_text_id", "event_timestamp"] if judgement else [])]


def with_holm(table: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted p-values (`<comparison>_p_holm`) over every paired comparison the matrix reports."""
    return pd.DataFrame(with_holm_fields(table.to_dict("records"), VERSUS), index=table.index)


def write_outputs(tables: dict[str, pd.DataFrame], predictions: list[pd.DataFrame]) -> None:
    write_parquet(paths.transfer_predictions(),
                  pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame(columns=KEYS))
    levels = {"cross_model": ["task", "source", "target"], "cross_lingual": ["task", "model", "layer", "test_lang"]}
    for matrix, table in tables.items():
        write_csv(paths.transfer_table(matrix), table)
        ran = table
        if matrix == "cross_lingual":  # the JSON holds the zero-shot row of each task's first language
            first = table.groupby(["task", "model", "layer"])["train_lang"].transform("first")
            ran = table[table["train_lang"] == first]
        write_json(paths.transfer_metrics(matrix), nested_metrics(ran, levels[matrix]))
    heatmap(tables["cross_model"], ["task", "source"], "target", "SAE probe: source features -> target correctness",
            paths.transfer_table("cross_model").with_suffix(".png"))
    heatmap(by_probe(tables["cross_lingual"]), ["task", "model", "layer", "probe", "train_lang"], "test_lang",
            "SAE, hidden-state and TF-IDF probes: train language -> test language",
            paths.transfer_table("cross_lingual").with_suffix(".png"))


def _log_cell(name: str, row: dict[str, Any], cell: dict[str, Any]) -> None:
    params = {k: v for k, v in row.items() if isinstance(v, str)} | cell
    with tracking.child_run(name, params=params, tags={"stage": "transfer", "status": row["status"]}):
        tracking.log_metrics(tracking.row_metrics(row))


def _log_artifacts() -> None:
    for matrix in ("cross_model", "cross_lingual"):
        for path in (paths.transfer_table(matrix), paths.transfer_table(matrix).with_suffix(".png")):
            tracking.log_artifact(path, "transfer")
    tracking.log_artifact(paths.transfer_predictions(), "predictions")


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
