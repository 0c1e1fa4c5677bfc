"""Stage preflight, second command: before DVC skips a stage whose result lives in a service, check that it is
still there.

DVC reruns a stage when one of its outputs is missing, but the results of `train_probes` (logged
probes) and `promote` (registered versions and the `champion` alias) live in the MLflow store, which
is no DVC output: a fresh clone, a deleted `mlflow.db` or `mlruns/`, or another tracking URI leaves
dvc.lock satisfied and the registry empty. So each of those stages writes a receipt under
data/tracking/ (a DVC output) saying what it left where, and this command of `preflight`, which DVC runs on
every `dvc repro` (`always_changed`) before them, deletes every receipt the store no longer honours:
DVC then reruns exactly those stages. Its own output names the store it checked. The same holds for
`materialize`, whose SQLite online store is no DVC output either (the scoring service writes into it):
its receipt goes when the store file has gone.

    python -m pipelines.check_stores
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from features.stores import tracking
from features.stores.files import write_json
from pipelines import exit_quickly, paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.check_stores")


def stale_probes(receipt: dict, store: str) -> str | None:
    """Why a train_probes receipt no longer holds in `store` (None if it does)."""
    missing = tracking.missing_models(receipt["models"])
    return f"{len(missing)} of its {len(receipt['models'])} logged probes are gone from {store}" if missing else None


def stale_promotion(receipt: dict, store: str) -> str | None:
    """Why a promote receipt no longer holds in `store` (None if it does)."""
    why = tracking.missing_registration(receipt["registered_model"], receipt["version"], receipt["champion"])
    return f"{why} in {store}" if why else None


def stale(receipt: dict, store: str, check: Callable[[dict, str], str | None]) -> str | None:
    """Why a receipt no longer holds: written to another tracking store, or `check` finds its results gone."""
    if receipt.get("tracking_store") != store:
        return f"it was written to {receipt.get('tracking_store')}, the tracking store is now {store}"
    return check(receipt, store)


def stale_online_store(receipt: dict) -> str | None:
    """Why a materialize receipt no longer holds: its SQLite online store has gone (a Redis store is not
    checked here)."""
    online = receipt.get("online_store", {})
    if online.get("type") == "sqlite" and not Path(online["address"]).is_file():
        return f"its online store {online['address']} is gone"
    return None


def run() -> list[Path]:
    """Delete the receipts the tracking store or the online store no longer honours; return them."""
    params = load_params()
    store = tracking.store_address(tracking.configure(params.promote.tracking_uri))
    dropped = []
    for dataset in params.datasets:
        checks = [(paths.probes_receipt(dataset, model), stale_probes, f"train_probes@{model}-{dataset}")
                  for model in params.sae]
        checks.append((paths.promotion_receipt(dataset), stale_promotion, f"promote@{dataset}"))
        for receipt, check, stage in checks:
            if receipt.is_file() and (why := stale(json.loads(receipt.read_text()), store, check)):
                receipt.unlink()
                dropped.append(receipt)
                log.warning("%s will rerun: %s", stage, why)
    materialized = paths.feast_materialized()
    if materialized.is_file() and (why := stale_online_store(json.loads(materialized.read_text()))):
        materialized.unlink()
        dropped.append(materialized)
        log.warning("materialize will rerun: %s", why)
    write_json(paths.stores_checked(), {"tracking_store": store})
    log.info("tracking store %s: %s", store,
             f"{len(dropped)} receipts dropped" if dropped else "holds every recorded probe and promotion")
    return dropped


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, cost="off")


if __name__ == "__main__":
    exit_quickly(main())
