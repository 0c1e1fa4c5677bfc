"""Stage materialize: load every online view into the SQLite online store, one view at a time.

The online store (data/feast/online_store.db) is rebuilt from the offline sources: each view's
whole history, written in batches (feature_store.yaml's `materialization.online_write_batch_size`),
without touching the registry, which stays `feast_apply`'s output.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from features.errors import SaefsError
from features.feature_store import materialize_views
from pipelines import stage_main
from pipelines.feature_params import FEATURE_REPO

log = logging.getLogger("saefs.materialize")


def run(repo: str) -> None:
    from feast import FeatureStore

    store = FeatureStore(repo_path=repo)
    registry, online = (Path(repo) / path for path in (store.config.registry.path, store.config.online_store.path))
    if not registry.is_file():
        raise SaefsError(f"{registry} not found: run `dvc repro feast_apply` first")
    online.unlink(missing_ok=True)  # a rebuild: no rows of views that are gone
    started = time.perf_counter()
    counts = materialize_views(store)
    for name, rows in counts.items():
        log.info("materialized %s: %d rows", name, rows)
    log.info("%d views, %d rows in %.1f s into %s", len(counts), sum(counts.values()), time.perf_counter() - started,
             online)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})")


if __name__ == "__main__":
    sys.exit(main())
