"""Check that the services the configuration names answer: Feast registry and online store, MLflow, DVC remote.

    python -m pipelines.check_services feature_repo

A preflight for the cluster profile, before `dvc repro`, `dvc push` or `saefs serve`: an unreachable
service is an error naming the component and its address (exit code 2). A Feast store other than
the one the feast_apply and materialize receipts record gets a warning: DVC reruns those stages
when the profile changes, but cannot see an address that changed. Local stores (the embedded
profile's SQLite files, a local DVC remote) have nothing to reach.
"""

from __future__ import annotations

import logging
import sys

from features.stores import tracking
from features.stores.services import check_dvc_remote
from pipelines import stage_main
from pipelines.params import load_params
from pipelines.stores import FEATURE_REPO, feature_store, stale_receipts

log = logging.getLogger("saefs.check_services")


def run(repo: str) -> None:
    params = load_params()
    store = feature_store(params.feast_apply, repo)
    uri = tracking.configure(params.promote.tracking_uri)
    check_dvc_remote()
    for line in stale_receipts(store):
        log.warning("%s", line)
    log.info("Feast (%s registry, %s online store), MLflow (%s) and the DVC remote answer",
             getattr(store.config.registry, "registry_type", "file"), store.config.online_store.type,
             uri.split("://", 1)[0])


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})", cost="off")


if __name__ == "__main__":
    sys.exit(main())
