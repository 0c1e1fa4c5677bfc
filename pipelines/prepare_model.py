"""Stage prepare_model: resolve one configured model into data/models/<name> (see features.sources.models)."""

from __future__ import annotations

import logging
import sys

from features.sources.models import ModelSourceError, prepare_model
from features.stores.files import atomic_path
from pipelines import paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.prepare_model")


def run(name: str) -> None:
    cfg = load_params().model(name)
    try:
        with atomic_path(paths.model_dir(name)) as tmp:
            manifest = prepare_model(cfg.source, tmp, cfg.save_dtype)
    except ModelSourceError as err:
        raise ModelSourceError(f"params.yaml models.{name}.source: {err}") from None
    log.info("%s: %s, %d layers, d_model %d -> %s", name, manifest.architecture,
             manifest.n_layers, manifest.d_model, paths.model_dir(name))


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `models` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
