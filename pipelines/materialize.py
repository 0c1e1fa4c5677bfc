"""Stage materialize: load every online view into the online store, one view at a time.

The online store (data/feast/online/online_store.db; Redis in the cluster profile) gets each
view's whole history from the offline sources, written in batches (feature_store.yaml's
`materialization.online_write_batch_size`), without touching the registry, which stays
`feast_apply`'s output. A SQLite store is rebuilt from scratch; Redis keys are overwritten in
place (feast_apply has already deleted the keys of views the catalog dropped), so a served store
never goes empty. Its receipt, data/feast/online/materialized.json, lists the rows per view and
where they went.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from features.errors import SaefsError
from features.feature_store import materialize_views, store_locations
from features.io import write_json
from pipelines import paths, stage_main
from pipelines.params import load_params
from pipelines.stores import FEATURE_REPO, feature_store

log = logging.getLogger("saefs.materialize")


def run(repo: str) -> None:
    params = load_params()
    if not paths.feast_applied().is_file():
        raise SaefsError(f"{paths.feast_applied()} not found: run `dvc repro feast_apply` first")
    store = feature_store(params.feast_apply, repo)
    online = store_locations(store)["online_store"]
    if online["type"] == "sqlite":
        Path(online["address"]).unlink(missing_ok=True)  # a rebuild: no rows of views that are gone
    started = time.perf_counter()
    counts = materialize_views(store)
    for name, rows in counts.items():
        log.info("materialized %s: %d rows", name, rows)
    write_json(paths.feast_materialized(), {"project": store.project, "online_store": online, "rows": counts})
    log.info("%d views, %d rows in %.1f s into the %s online store at %s", len(counts), sum(counts.values()),
             time.perf_counter() - started, online["type"], online["address"])


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})")


if __name__ == "__main__":
    sys.exit(main())
