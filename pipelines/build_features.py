"""Stage build_features: the Feast offline sources of one model, or the labels of every dataset.

`python -m pipelines.build_features <model>` writes one parquet per view (every SAE cell and
pooling of the model, continuous and binarized per `build_features.binarize`, plus the pooled
hidden states in `build_features.hidden`), over all datasets' texts, and their catalog;
`python -m pipelines.build_features labels` writes the `labels` view once for every dataset.
"""

from __future__ import annotations

import logging
import sys

from features.errors import SaefsError
from features.stores.feature_store import FeatureGrid, build_labels_source, build_offline_sources
from pipelines import paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.build_features")
LABELS = "labels"


def run(target: str) -> None:
    params = load_params()
    build = params.build_features
    prepared = {name: paths.prepared(name) for name in params.datasets}
    if target == LABELS:
        if LABELS in params.sae:
            raise SaefsError(f"a model may not be called {LABELS!r}: that name builds the labels view; rename it")
        views = build_labels_source(prepared, paths.feast_labels_dir())
    else:
        sae, poolings = params.sae_of(target), params.extract.poolings
        grid = FeatureGrid(sae.layers, sae.widths, poolings, build.hidden, build.binarize, build.binarize_op)
        features = {name: paths.features_dir(target, name) for name in params.datasets}
        views = build_offline_sources(target, features, prepared, grid, paths.feast_sources_dir(target))
    for view in views:
        log.info("%s: %s view %s, %d rows", target, view.kind, view.name, view.n_rows)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="target", help=f"a model (a key of `sae`), or {LABELS!r}")


if __name__ == "__main__":
    sys.exit(main())
