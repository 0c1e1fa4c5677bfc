"""Stage extract_images: a vision-language model's image features, as Feast views (PAPER.md §6.3), per model.

Each image dataset of `cross_modal.datasets` is read and prepared as a text dataset is (features/core/cross_modal.py)
before the model loads, so a bad image fails first. The model (`cross_modal.models.<model>.source`) sees each
image with the paper's prompt, its image token and no text; the residual stream after each of `layers` is kept
at the image-token positions, encoded with the SAE of each width (`sae`, templated by {layer} and {width}; its
d_in checked against the language model's width) and pooled (`poolings`). The same forward gives the two dense
baselines: the residual's mean over the image tokens per layer, and the vision tower's mean output.

Writes what extract and build_features write for a text model, so the features take the text path from here on
(feast_apply registers them, materialize serves them, the cross_modal stage probes them through Feast):
data/images/<model>/<dataset>.parquet (the prepared rows, without the images), data/features/<model>/<dataset>
(shards), data/feast/sources/<model> (one view per SAE cell and `cross_modal.binarize` threshold, per residual
layer and the vision tower, with their catalog) and metrics/extract_images/<model>.json (per dataset: images,
classes, image tokens, each SAE's quality on them).
"""

from __future__ import annotations

import gc
import logging
import shutil
import sys
from dataclasses import asdict
from typing import Any

import pandas as pd

from features.core.cross_modal import RESIDUAL, VISION, prepare_images
from features.core.naming import codes_name, hidden_name, sae_name
from features.core.prepare import SplitConfig
from features.errors import SaefsError
from features.forward.vision import ImageFeatures, extract_images
from features.sources.images import load_images
from features.sources.lm import model_width, resolve_device
from features.sources.sae import load_sae
from features.sources.vlm import load_vlm
from features.stores.feast.offline import FeatureGrid, build_offline_sources
from features.stores.files import write_json, write_parquet
from features.stores.shards import ShardWriter
from pipelines import cost, paths, stage_main
from pipelines.params import CrossModalParams, VlmParams, load_params

log = logging.getLogger("saefs.extract_images")


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


def write_shards(model: str, dataset: str, frame: pd.DataFrame, out: ImageFeatures) -> None:
    """One dataset's features in extract's shard format (codes, residuals, the vision tower), one shard."""
    folder = paths.features_dir(model, dataset)
    shutil.rmtree(folder, ignore_errors=True)  # written whole each run: never resumed from another run's shards
    with ShardWriter(folder, shard_rows=max(len(frame), 1)) as writer:
        writer.append(frame["text_id"].tolist(),
                      sparse={codes_name(layer, width, pooling): codes for (layer, width, pooling), codes
                              in out.codes.items()},
                      dense={**{hidden_name(layer, pooling): values for (layer, pooling), values in out.hidden.items()},
                             VISION: out.vision})


def run(model: str) -> dict[str, Any]:
    params = load_params()
    vlm, xm = params.vlm(model), params.cross_modal
    assert xm is not None  # params.vlm refuses a model without a cross_modal group
    frames = image_frames(xm, params.prepare_data)
    features = featurize(model, vlm, xm, frames, params.extract.paper_compat)
    for name, frame in frames.items():
        write_parquet(paths.image_rows(model, name), frame.drop(columns="image"))
        write_shards(model, name, frame, features[name])
    grid = FeatureGrid(vlm.layers, vlm.widths, xm.poolings, [RESIDUAL], xm.binarize, params.build_features.binarize_op,
                       dense=[VISION])
    views = build_offline_sources(model, {name: paths.features_dir(model, name) for name in frames},
                                  {name: paths.image_rows(model, name) for name in frames}, grid,
                                  paths.feast_sources_dir(model))
    log.info("%s: %d views of %d image sets", model, len(views), len(frames))
    cost.work(views=len(views))
    results = {"model": model, "source": vlm.source, "sae": vlm.sae, "layers": vlm.layers, "widths": vlm.widths,
               "prompt": "the processor's image token and no text (PAPER.md §2.2)",
               "datasets": {name: dataset_figures(xm, name, frame, features[name]) for name, frame in frames.items()}}
    write_json(paths.extract_images_metrics(model), results)
    return results


def dataset_figures(xm: CrossModalParams, name: str, frame: pd.DataFrame, out: ImageFeatures) -> dict[str, Any]:
    return {"source": xm.datasets[name].source, "images": len(frame), "classes": int(frame["label"].nunique()),
            "test_images": int((frame["split"] == "test").sum()),
            "image_tokens_per_image": sorted({int(n) for n in out.image_tokens}),
            "sae_quality": {sae_name(layer, width): {key: round(value, 4) for key, value in asdict(q).items()}
                            for (layer, width), q in out.quality.items()}}


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `cross_modal.models` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
