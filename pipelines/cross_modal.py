"""Stage cross_modal: probes on a vision-language model's image features, read through Feast (PAPER.md §6.3).

The features are extract_images' views of the model, registered by feast_apply: the SAE codes per (layer, width,
pooling, `binarize` threshold), the residual's mean over the image tokens per layer and the vision tower's mean
output, each read for an image dataset's prepared rows (data/images/<model>/<dataset>.parquet) from its feature
service, as train_probes reads a text's. Probes, each on the same `resamples` stratified splits: every SAE view,
the vision tower and the residual per layer; each SAE probe minus the vision tower and minus its layer's residual,
paired, Holm over the model's comparisons.

Writes metrics/cross_modal/<model>.json, plots/cross_modal/<model>.csv, data/predictions/cross_modal/<model>.parquet
and one MLflow run in `saefs/cross_modal` with a child run per probe, tagged with its feature service.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from threadpoolctl import threadpool_limits

from features.core.binarize import BinarizeOp
from features.core.cross_modal import RESIDUAL, VERSUS, VISION, ProbeSettings, SaeCell, probe_dataset, with_holm
from features.core.predictions import INTERVALS
from features.errors import SaefsError
from features.stores import tracking
from features.stores.feast.names import dense_view_name, hidden_view_name, view_name
from features.stores.feast.retrieval import historical_frame
from features.stores.files import write_csv, write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import CrossModalParams, VlmParams, load_params
from pipelines.stores import feature_store

if TYPE_CHECKING:
    from feast import FeatureStore


@dataclass(frozen=True)
class Services:
    """The feature service of each probe of a model: every SAE cell, each layer's residual, the vision tower."""

    codes: dict[SaeCell, str]
    residual: dict[int, str]
    vision: str

    @classmethod
    def of(cls, model: str, vlm: VlmParams, xm: CrossModalParams, op: BinarizeOp) -> Services:
        return cls({(layer, width, pooling, t): view_name(model, layer, width, pooling, t, op)
                    for layer in vlm.layers for width in vlm.widths for pooling in xm.poolings for t in xm.binarize},
                   {layer: hidden_view_name(model, layer, RESIDUAL) for layer in vlm.layers},
                   dense_view_name(model, VISION))

    def of_row(self, row: dict[str, Any]) -> str:
        """The service a probe's row (probe_dataset) was fitted on."""
        if row["features"] == "sae":
            return self.codes[row["layer"], row["width"], row["pooling"], row["binarize"]]
        return self.residual[row["layer"]] if row["features"] == "residual" else self.vision

    def read(self, store: FeatureStore, rows: pd.DataFrame) -> tuple[dict[SaeCell, tuple[pd.DataFrame, int]],
                                                                      dict[int, pd.DataFrame], pd.DataFrame]:
        """Each service's features for the prepared `rows`, in their order: probe_dataset's inputs."""
        entity_df = rows[["text_id", "event_timestamp"]]
        return ({cell: historical_frame(store, service, entity_df) for cell, service in self.codes.items()},
                {layer: historical_frame(store, service, entity_df)[0] for layer, service in self.residual.items()},
                historical_frame(store, self.vision, entity_df)[0])


def run(model: str) -> dict[str, Any]:
    params = load_params()
    vlm, xm = params.vlm(model), params.cross_modal
    assert xm is not None  # params.vlm refuses a model without a cross_modal group
    extracted = paths.extract_images_metrics(model)
    if not extracted.is_file():
        raise SaefsError(f"{extracted} not found: run `dvc repro extract_images@{model}` first")
    figures = json.loads(extracted.read_text())["datasets"]
    op = params.build_features.binarize_op
    settings = ProbeSettings(C_grid=xm.C_grid, cv_folds=xm.cv_folds, resamples=xm.resamples,
                             seed=params.prepare_data.seed, binarize_op=op, n_jobs=xm.n_jobs)
    services = Services.of(model, vlm, xm, op)
    store = feature_store(params.feast_apply)
    tracking.configure(params.promote.tracking_uri)
    tracking.experiment("saefs/cross_modal")
    rows: list[dict[str, Any]] = []
    predictions = []
    with tracking.start_parent(f"cross_modal:{model}", tags={"stage": "cross_modal", "model": model},
                               params={"source": vlm.source, "sae": vlm.sae, "resamples": xm.resamples}):
        for name in xm.datasets:
            frame = pd.read_parquet(paths.image_rows(model, name))
            codes, residual, vision = services.read(store, frame)
            with threadpool_limits(limits=1):  # small lbfgs fits: one BLAS thread each, `n_jobs` at once
                found, fits = probe_dataset(name, frame, codes, residual, vision, settings)
            rows += found
            predictions.append(fits)
        rows = with_holm(rows)
        for row in rows:
            with tracking.child_run(f"{row['dataset']}:{row['cell']}", params={"features": row["features"]},
                                    tags={"stage": "cross_modal", "feature_service": services.of_row(row)}):
                tracking.log_metrics(tracking.row_metrics(row))
        results = metrics(model, vlm, figures, rows)
        write_parquet(paths.cross_modal_predictions(model), pd.concat(predictions, ignore_index=True))
        write_csv(paths.cross_modal_table(model), pd.DataFrame(rows).round(4))
        write_json(paths.cross_modal_metrics(model), results)
        for path in (paths.cross_modal_metrics(model), paths.cross_modal_table(model)):
            tracking.log_artifact(path, "cross_modal")
        tracking.log_artifact(paths.cross_modal_predictions(model), "predictions")
    cost.work(fits=int(sum(frame.groupby(["fit", "resample"]).ngroups for frame in predictions)))
    return results


def metrics(model: str, vlm: VlmParams, figures: dict[str, dict[str, Any]],
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics JSON: per dataset extract_images' figures (images, classes, the SAEs' quality on its image
    tokens) and one entry per probe (`sae`: every layer x width x pooling x threshold; `vision` and `residual`:
    the baselines)."""
    datasets = {}
    for name, figure in figures.items():
        mine = [{key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}
                for row in rows if row["dataset"] == name]
        datasets[name] = figure | {
            "vision": next(row for row in mine if row["features"] == "vision"),
            "residual": [row for row in mine if row["features"] == "residual"],
            "sae": [row for row in mine if row["features"] == "sae"]}
    return {"model": model, "source": vlm.source, "sae": vlm.sae, "layers": vlm.layers, "widths": vlm.widths,
            "prompt": "the processor's image token and no text (PAPER.md §2.2)", "intervals": INTERVALS["resamples"],
            "paired": f"each SAE probe minus {' and minus '.join(VERSUS)} (its layer's) on the same splits; "
                      "p_holm: Holm over every comparison of this model", "datasets": datasets}


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `cross_modal.models` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
