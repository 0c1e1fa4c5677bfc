"""Stage build_features: the Feast offline sources of one model.

`python -m pipelines.build_features <model>` writes one parquet per view (every SAE cell and
pooling of the model, continuous and binarized per `build_features.binarize`, plus the pooled
hidden states in `build_features.hidden`), over all datasets' texts, and their catalog.
"""

from __future__ import annotations

import logging
import sys

from features.stores.feast.offline import FeatureGrid, build_offline_sources
from pipelines import cost, paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.build_features")


def run(model: str) -> None:
    params = load_params()
    build = params.build_features
    prepared = {name: paths.prepared(name) for name in params.datasets}
    sae, poolings = params.sae_of(model), params.extract.poolings
    grid = FeatureGrid(sae.layers, sae.widths, poolings, build.hidden, build.binarize, build.binarize_op)
    features = {name: paths.features_dir(model, name) for name in params.datasets}
    views = build_offline_sources(model, features, prepared, grid, paths.feast_sources_dir(model))
    for view in views:
        log.info("%s: %s view %s, %d rows", model, view.kind, view.name, view.n_rows)
    cost.work(views=len(views), rows=sum(view.n_rows for view in views))


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a model (a key of `sae`)")


if __name__ == "__main__":
    sys.exit(main())
