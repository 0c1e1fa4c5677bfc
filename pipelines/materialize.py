"""Stage materialize: load every online view into the online store, one view at a time.

The online store (data/feast/online_store.db; Redis in the cluster profile) is rebuilt from the
offline sources: each view's whole history, written in batches (feature_store.yaml's
`materialization.online_write_batch_size`), without touching the registry, which stays `feast_apply`'s output.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from features.errors import SaefsError
from features.feature_store import materialize_views, open_store
from pipelines import stage_main
from pipelines.feature_params import FEATURE_REPO

log = logging.getLogger("saefs.materialize")


def run(repo: str) -> None:
    store = open_store(repo)
    registry, online = store.config.registry, store.config.online_store
    if getattr(registry, "registry_type", "file") == "file" and not (Path(repo) / registry.path).is_file():
        raise SaefsError(f"{Path(repo) / registry.path} not found: run `dvc repro feast_apply` first")
    if online.type == "sqlite":
        (Path(repo) / online.path).unlink(missing_ok=True)  # a rebuild: no rows of views that are gone
    started = time.perf_counter()
    counts = materialize_views(store)
    for name, rows in counts.items():
        log.info("materialized %s: %d rows", name, rows)
    log.info("%d views, %d rows in %.1f s into the %s online store", len(counts), sum(counts.values()),
             time.perf_counter() - started, online.type)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})")


if __name__ == "__main__":
    sys.exit(main())
