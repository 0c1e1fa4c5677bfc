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

Asking MLflow costs seconds (its import and its store), most of a repro with nothing to do. Where the store is
a local SQLite file with local artifacts, a full check leaves a stamp (data/tracking/, no DVC output): the
databases' size, time and inode, the receipts, every probe's MLmodel file. While all of those are as stamped,
nothing the receipts name can have gone, and the check does not ask MLflow.

    python -m pipelines.check_stores
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from features.stores import tracking
from features.stores.files import write_json
from pipelines import exit_quickly, paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.check_stores")


def stale_probes(receipt: dict, store: str, model_files: list[str]) -> str | None:
    """Why a train_probes receipt no longer holds in `store` (None if it does); when it holds, its probes'
    MLmodel files join `model_files`."""
    files = tracking.logged_model_files(receipt["models"])
    missing = [uri for uri, file in files.items() if file is None]
    if missing:
        return f"{len(missing)} of its {len(receipt['models'])} logged probes are gone from {store}"
    model_files.extend(file for file in files.values() if file is not None)
    return None


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


def stamp(uris: tuple[str, str], receipts: dict[Path, dict], model_files: list[str]) -> dict[str, Any] | None:
    """What a full check of `receipts` read, as file metadata: equal to a later stamp only while the store's
    databases, the receipts and the probes' MLmodel files are unchanged. None for any store but local SQLite
    files with local artifacts (those are always checked in full)."""
    databases = [tracking.sqlite_file(uri) for uri in uris]
    if None in databases or any("://" in file for file in model_files):
        return None
    files = {str(path) for db in databases if db for path in (db, db.with_name(f"{db.name}-wal"),
                                                                 db.with_name(f"{db.name}-journal"))}
    return json.loads(json.dumps({
        "uris": list(uris), "databases": {file: _stat(Path(file)) for file in sorted(files)},
        "receipts": {str(path): receipt for path, receipt in sorted(receipts.items())},
        "model_files": {file: Path(file).is_file() for file in sorted(model_files)}}))


def _stat(path: Path) -> list[int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return [found.st_ino, found.st_size, found.st_mtime_ns]


def run() -> list[Path]:
    """Delete the receipts the tracking store or the online store no longer honours; return them."""
    params = load_params()
    uris = tracking.store_uris(params.promote.tracking_uri)
    store = tracking.store_address(uris[0])
    model_files: list[str] = []
    checks = [(paths.probes_receipt(dataset, model), partial(stale_probes, model_files=model_files),
               f"train_probes@{model}-{dataset}") for dataset in params.datasets for model in params.sae]
    checks += [(paths.promotion_receipt(dataset), stale_promotion, f"promote@{dataset}") for dataset in params.datasets]
    held = {receipt: json.loads(receipt.read_text()) for receipt, _, _ in checks if receipt.is_file()}
    stamped = paths.stores_stamp()
    previous = json.loads(stamped.read_text()) if stamped.is_file() else {}
    dropped = []
    if previous and previous == stamp(uris, held, list(previous.get("model_files", {}))):
        log.info("tracking store %s: unchanged since its last check, which every receipt passed", store)
    else:
        tracking.configure(params.promote.tracking_uri)
        for receipt, check, stage in checks:
            if receipt in held and (why := stale(held[receipt], store, check)):
                receipt.unlink()
                dropped.append(receipt)
                log.warning("%s will rerun: %s", stage, why)
        kept = stamp(uris, {receipt: held[receipt] for receipt in held if receipt not in dropped}, model_files)
        if kept is None:
            stamped.unlink(missing_ok=True)
        else:
            write_json(stamped, kept)
        log.info("tracking store %s: %s", store,
                 f"{len(dropped)} receipts dropped" if dropped else "holds every recorded probe and promotion")
    materialized = paths.feast_materialized()
    if materialized.is_file() and (why := stale_online_store(json.loads(materialized.read_text()))):
        materialized.unlink()
        dropped.append(materialized)
        log.warning("materialize will rerun: %s", why)
    write_json(paths.stores_checked(), {"tracking_store": store})
    return dropped


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, cost="off")


if __name__ == "__main__":
    exit_quickly(main())
