"""Stage materialize: load every online view into the online store, one view at a time.

The online store (data/feast/online/online_store.db; Redis in the cluster profile) gets each
view's whole history from the offline sources, written in batches (feature_store.yaml's
`materialization.online_write_batch_size`), without touching the registry, which stays
`feast_apply`'s output. A SQLite store is rebuilt in a temporary file beside the live one, which
it then replaces in one rename, so a running scoring service always reads a whole store; rows the
service pushed for texts the offline sources lack are carried over (a user scored them; they are
not dropped by a rebuild), unless the view's offline rows changed (then they would be stale).
Redis keys are overwritten in place (feast_apply has already deleted the keys of views the
catalog dropped), so a served store never goes empty. Its receipt,
data/feast/online/materialized.json, lists the rows per view, the pushed texts carried over per
online table, and where they went.
"""

from __future__ import annotations

import logging
import sys
import time

from features.errors import SaefsError
from features.stores.feast.store import rebuild_online_store, store_locations
from features.stores.files import remove_temporaries, write_json
from pipelines import cost, paths, stage_main
from pipelines.params import load_params
from pipelines.stores import FEATURE_REPO, feature_store

log = logging.getLogger("saefs.materialize")


def run(repo: str) -> None:
    params = load_params()
    if not paths.feast_applied().is_file():
        raise SaefsError(f"{paths.feast_applied()} not found: run `dvc repro feast_apply` first")
    store = feature_store(params.feast_apply, repo)
    online = store_locations(store)["online_store"]
    remove_temporaries(paths.feast_materialized())  # DVC keeps this folder (persist): a killed run's leftovers
    if online["type"] != "sqlite":
        paths.feast_online_store().unlink(missing_ok=True)  # a SQLite store of an earlier configuration
    started = time.perf_counter()
    counts, carried = rebuild_online_store(store)
    for name, rows in counts.items():
        log.info("materialized %s: %d rows", name, rows)
    cost.work(views=len(counts), rows=sum(counts.values()))
    for table, texts in carried.items():
        log.info("carried over %s: %d pushed texts", table, texts)
    write_json(paths.feast_materialized(), {"project": store.project, "online_store": online, "rows": counts,
                                            "carried_pushed_texts": carried})
    log.info("%d views, %d rows in %.1f s into the %s online store at %s", len(counts), sum(counts.values()),
             time.perf_counter() - started, online["type"], online["address"])


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})",
                      cost="per_stage")


if __name__ == "__main__":
    sys.exit(main())
