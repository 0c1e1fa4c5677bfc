"""Stage lodo: leave one dataset out (features/core/lodo.py), per model.

Each dataset of `lodo.datasets` is held out in turn. Three probes (the model's SAE cell `lodo.sources`,
a hidden-state probe at that layer, TF-IDF) are trained twice, on the other datasets' training texts and on
the held-out dataset's own, and scored on its test texts: in-split and held-out macro F1 with bootstrap
intervals, their paired gap, Holm-corrected over the model's folds and probes. The SAE probes' most
weighted latents are compared across folds (Jaccard). Writes metrics/lodo/<model>.json,
plots/lodo/<model>.csv and data/predictions/lodo/<model>.parquet.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from features.core.evidence import holm
from features.core.lodo import check_disjoint, folds, gap, latent_overlap
from features.core.probes import influential_latents, make_probe, make_tfidf_baseline
from features.stores.feast.names import hidden_view_name, view_name
from features.stores.feast.retrieval import historical_frame
from features.stores.files import write_csv, write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import load_params
from pipelines.stores import feature_store

log = logging.getLogger("saefs.lodo")


def run(model: str) -> dict[str, Any]:
    params = load_params()
    p, seed = params.lodo, params.prepare_data.seed
    cell = p.sources[model]
    frame = pd.concat([pd.read_parquet(paths.prepared(d)).assign(dataset=d) for d in p.datasets], ignore_index=True)
    splits = folds(frame)
    for fold in splits:
        check_disjoint(frame, fold)
    store = feature_store(params.feast_apply)
    entity_df = frame[["text_id", "event_timestamp"]]
    sae_service = view_name(model, cell.layer, cell.width, p.pooling, p.binarize, params.build_features.binarize_op)
    codes, width = historical_frame(store, sae_service, entity_df)
    hidden, _ = historical_frame(store, hidden_view_name(model, cell.layer, p.hidden), entity_df)
    probes: dict[str, tuple[Callable[[], Any], pd.DataFrame]] = {
        "sae": (lambda: make_probe("logreg", width=width, C_grid=p.C_grid, cv=p.cv_folds, seed=seed), codes),
        "hidden": (lambda: make_probe("logreg", input="dense", C_grid=p.C_grid, cv=p.cv_folds, seed=seed), hidden),
        "tfidf": (lambda: make_tfidf_baseline(seed), frame[["text"]]),
    }
    y, labels = frame["label"].to_numpy(), sorted(frame["label"].unique().tolist())
    rows, predictions, tops = [], [], {}
    with threadpool_limits(limits=1):
        for fold in tqdm(splits, desc=f"lodo {model}", unit="fold"):
            for probe, (make, X) in probes.items():
                predicted = {}
                for trained_on, rows_ in (("own", fold.own), ("others", fold.others)):
                    fitted = make().fit(X.iloc[rows_], y[rows_])
                    predicted[trained_on] = fitted.predict(X.iloc[fold.test])
                    predictions.append(pd.DataFrame({
                        "held_out": fold.held_out, "fit": f"{probe}:{trained_on}", "text_id": frame["text_id"].iloc[
                            fold.test].to_numpy(), "y_true": y[fold.test], "y_pred": predicted[trained_on]}))
                    if probe == "sae":
                        tops[f"{fold.held_out}:{trained_on}"] = [latent for latent, _ in
                                                                 influential_latents(fitted, p.top_latents)]
                rows.append({"model": model, "held_out": fold.held_out, "probe": probe,
                             "n_train_others": len(fold.others), "n_train_own": len(fold.own),
                             "dropped_shared_texts": fold.dropped,
                             **gap(y[fold.test], predicted["own"], predicted["others"], labels, p.bootstrap, seed)})
                log.info("%s, %s held out, %s: in-split %.3f, held-out %.3f, gap %+.3f [%+.3f, %+.3f]", model,
                         fold.held_out, probe, rows[-1]["in_split_f1"], rows[-1]["held_out_f1"], rows[-1]["gap"],
                         rows[-1]["gap_low"], rows[-1]["gap_high"])
    table = pd.DataFrame(rows)
    table["gap_p_holm"] = holm(table["gap_p"].tolist())
    overlap = latent_overlap({name: top for name, top in tops.items() if name.endswith(":others")})
    own_vs_others = {held: latent_overlap({"own": tops[f"{held}:own"], "others": tops[f"{held}:others"]})[
        "jaccard"].iloc[0] for held in p.datasets}
    results = {"model": model, "sae_cell": sae_service, "intervals": "percentile bootstrap over the held-out test "
               "texts; gap: paired bootstrap, Holm over this model's folds and probes",
               "cells": table.round(4).to_dict("records"),
               "top_latent_overlap": {"across_folds_mean_jaccard": round(float(overlap["jaccard"].mean()), 4),
                                      "pairs": overlap.round(4).to_dict("records"),
                                      "own_vs_others_jaccard": {k: round(float(v), 4) for k, v in
                                                                own_vs_others.items()}}}
    write_parquet(paths.lodo_predictions(model), pd.concat(predictions, ignore_index=True))
    write_csv(paths.lodo_table(model), table.round(4))
    write_json(paths.lodo_metrics(model), results)
    cost.work(texts=len(frame), fits=2 * len(probes) * len(splits))
    return results


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `lodo.sources` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
