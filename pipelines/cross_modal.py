"""Stage cross_modal: text-trained SAEs read a vision-language model's image tokens (PAPER.md §6.3), per model.

Each image dataset of `cross_modal.datasets` is read and prepared as a text dataset is (features/core/cross_modal.py)
before the model loads, so a bad image fails first. The model (`cross_modal.models.<model>.source`) sees each
image with the paper's prompt, its image token and no text; the residual stream after each of `layers` is kept
at the image-token positions, encoded with the SAE of each width (`sae`, templated by {layer} and {width}; its
d_in checked against the language model's width) and pooled (`poolings`). Probes, each on the same
`resamples` stratified splits: the SAE codes per (layer, width, pooling, `binarize` threshold), the vision
tower's mean output, and the residual's mean over the image tokens per layer; each SAE probe minus the vision
tower and minus its layer's residual, paired, Holm over the model's comparisons.

Writes metrics/cross_modal/<model>.json, plots/cross_modal/<model>.csv, data/predictions/cross_modal/<model>.parquet
and one MLflow run in `saefs/cross_modal` with a child run per probe.
"""

from __future__ import annotations

import gc
import logging
import sys
from dataclasses import asdict
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from features.core.cross_modal import RESIDUAL, VERSUS, ProbeSettings, prepare_images, probe_dataset, with_holm
from features.core.naming import sae_name
from features.core.predictions import INTERVALS
from features.core.prepare import SplitConfig
from features.errors import SaefsError
from features.forward.vision import ImageFeatures, extract_images
from features.sources.images import load_images
from features.sources.lm import model_width, resolve_device
from features.sources.sae import load_sae
from features.sources.vlm import load_vlm
from features.stores import tracking
from features.stores.files import write_csv, write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import CrossModalParams, VlmParams, load_params

log = logging.getLogger("saefs.cross_modal")


def image_frames(xm: CrossModalParams, split: SplitConfig) -> dict[str, pd.DataFrame]:
    """Every image dataset, prepared with prepare_data's split and seed; an error names its params key."""
    frames = {}
    for name, spec in xm.datasets.items():
        try:
            raw = load_images(spec.source, split=spec.split, image_field=spec.image_field, label_field=spec.label_field)
            frames[name] = prepare_images(raw, name, split, spec.labels, spec.label_names, spec.max_rows)
        except SaefsError as err:
            raise SaefsError(f"cross_modal.datasets.{name} ({spec.source}): {err}") from None
    return frames


def featurize(model: str, vlm: VlmParams, xm: CrossModalParams, frames: dict[str, pd.DataFrame],
              paper_compat: bool) -> dict[str, ImageFeatures]:
    """Each dataset's image features from one load of the model and its SAEs, which are freed afterwards."""
    device = resolve_device(xm.device)
    vision, processor = load_vlm(vlm.source, device)
    saes = {layer: {width: load_sae(vlm.spec(layer, width), device) for width in vlm.widths} for layer in vlm.layers}
    log.info("%s: %s, language model width %d, SAEs %s", model, vlm.source, model_width(vision),
             {layer: list(named) for layer, named in saes.items()})
    features = {name: extract_images(vision, processor, frame["image"].tolist(), vlm.layers, saes, xm.poolings,
                                     batch_size=xm.batch_size, paper_compat=paper_compat, name=f"{model} {name}")
                for name, frame in frames.items()}
    for name, out in features.items():
        cost.work(images=len(frames[name]), tokens=int(out.image_tokens.sum()))
    del vision, saes
    gc.collect()
    return features


def run(model: str) -> dict[str, Any]:
    params = load_params()
    vlm, xm = params.vlm(model), params.cross_modal
    assert xm is not None  # params.vlm refuses a model without a cross_modal group
    frames = image_frames(xm, params.prepare_data)
    features = featurize(model, vlm, xm, frames, params.extract.paper_compat)
    settings = ProbeSettings(C_grid=xm.C_grid, cv_folds=xm.cv_folds, resamples=xm.resamples,
                             seed=params.prepare_data.seed, binarize_op=params.build_features.binarize_op,
                             n_jobs=xm.n_jobs)
    tracking.configure(params.promote.tracking_uri)
    tracking.experiment("saefs/cross_modal")
    rows: list[dict[str, Any]] = []
    predictions = []
    with tracking.start_parent(f"cross_modal:{model}", tags={"stage": "cross_modal", "model": model},
                               params={"source": vlm.source, "sae": vlm.sae, "resamples": xm.resamples}):
        for name, frame in frames.items():
            out = features[name]
            residual = {layer: out.hidden[layer, RESIDUAL] for layer in vlm.layers}
            with threadpool_limits(limits=1):  # small lbfgs fits: one BLAS thread each, `n_jobs` at once
                found, fits = probe_dataset(name, frame, out.codes, residual, out.vision, xm.binarize, settings)
            rows += found
            predictions.append(fits)
        rows = with_holm(rows)
        for row in rows:
            with tracking.child_run(f"{row['dataset']}:{row['cell']}", params={"features": row["features"]},
                                    tags={"stage": "cross_modal"}):
                tracking.log_metrics(tracking.row_metrics(row))
        results = metrics(model, vlm, xm, frames, features, rows)
        write_parquet(paths.cross_modal_predictions(model), pd.concat(predictions, ignore_index=True))
        write_csv(paths.cross_modal_table(model), pd.DataFrame(rows).round(4))
        write_json(paths.cross_modal_metrics(model), results)
        for path in (paths.cross_modal_metrics(model), paths.cross_modal_table(model)):
            tracking.log_artifact(path, "cross_modal")
        tracking.log_artifact(paths.cross_modal_predictions(model), "predictions")
    cost.work(fits=int(sum(frame.groupby(["fit", "resample"]).ngroups for frame in predictions)))
    return results


def metrics(model: str, vlm: VlmParams, xm: CrossModalParams, frames: dict[str, pd.DataFrame],
            features: dict[str, ImageFeatures], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics JSON: per dataset its images and classes, the SAEs' figures on its image tokens, and one entry
    per probe (`sae`: every layer x width x pooling x threshold; `vision` and `residual`: the baselines)."""
    datasets = {}
    for name, frame in frames.items():
        out = features[name]
        mine = [{key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}
                for row in rows if row["dataset"] == name]
        datasets[name] = {
            "source": xm.datasets[name].source, "images": len(frame), "classes": int(frame["label"].nunique()),
            "test_images": int((frame["split"] == "test").sum()),
            "image_tokens_per_image": sorted({int(n) for n in out.image_tokens}),
            "sae_quality": {sae_name(layer, width): {key: round(value, 4) for key, value in asdict(q).items()}
                            for (layer, width), q in out.quality.items()},
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
