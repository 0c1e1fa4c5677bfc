"""The Feast store: open it, register a run's objects, load the online store (a SQLite one rebuilt beside the live
file and swapped in whole, keeping what the scoring service pushed). Feast is imported inside the functions."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.errors import SaefsError
from features.stores.feast.columns import EVENT_TIME
from features.stores.files import atomic_path, remove_temporaries
from features.stores.services import check_feast, display_address

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


def open_store(repo_dir: str | os.PathLike[str], yaml_file: str | os.PathLike[str] | None = None) -> FeatureStore:
    """The repo's store, configured by `yaml_file` (default: the repo's feature_store.yaml); its registry and
    online store must answer (a remote one is checked first)."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    repo_dir = Path(repo_dir).resolve()
    yaml_file = Path(yaml_file or repo_dir / "feature_store.yaml").resolve()
    if not yaml_file.is_file():
        raise SaefsError(f"Feast configuration {yaml_file} not found: run stages from the project root")
    config = load_repo_config(repo_dir, yaml_file)
    check_feast(config)  # before FeatureStore, which connects to a SQL registry at once
    return FeatureStore(repo_path=str(repo_dir), config=config)


def store_locations(store: FeatureStore) -> dict[str, dict[str, str | None]]:
    """Where the registry and the online store live: type, and a file (relative to the working directory) or
    `host:port[/database]`; never a credential. What the feast_apply and materialize receipts record."""
    registry, online = store.config.registry, store.config.online_store
    registry_type = getattr(registry, "registry_type", "file")

    def local(path: str) -> str:
        return os.path.relpath(Path(store.repo_path) / path)

    remote = getattr(online, "connection_string", None)  # Redis; other stores are recorded by type only
    registry_address = local(registry.path) if registry_type == "file" else display_address(registry.path)
    online_address = local(online.path) if online.type == "sqlite" else display_address(remote) if remote else None
    return {"registry": {"type": registry_type, "address": registry_address},
            "online_store": {"type": online.type, "address": online_address}}



def apply_objects(store: FeatureStore, objects: Sequence[Any]) -> None:
    """Register `objects` (feature_repo's, for a catalog) and delete the ones the registry holds beyond them, as
    `feast apply` does for a repo: a view the catalog drops leaves the registry and the online store."""
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource

    _make_local_dirs(store)
    # on-demand views: a registry of an earlier saefs (request-time binarization) may still hold some
    registered = {Entity: store.list_entities(), DataSource: store.list_data_sources(),
                  FeatureView: store.list_feature_views(), OnDemandFeatureView: store.list_on_demand_feature_views(),
                  FeatureService: store.list_feature_services()}
    stale = [old for kind, listed in registered.items() for old in listed
             if old.name not in {new.name for new in objects if isinstance(new, kind)}]
    store.apply(list(objects), objects_to_delete=stale, partial=False)


def _make_local_dirs(store: FeatureStore) -> None:
    """The folders of a file registry and a SQLite online store, which Feast does not create."""
    registry, online = store.config.registry, store.config.online_store
    files = [registry.path] if getattr(registry, "registry_type", "file") == "file" else []
    files += [online.path] if online.type == "sqlite" else []
    for path in files:
        (Path(store.repo_path) / path).parent.mkdir(parents=True, exist_ok=True)


def materialize_views(store: FeatureStore, names: Sequence[str] | None = None) -> dict[str, int]:
    """Load every online view's full offline history into the online store, one view at a time.

    Goes through the provider rather than `store.materialize`, which also records the interval (and
    each view's state) in the registry: the registry is `feast_apply`'s DVC output and must not change.
    Rows are written in batches of `materialization.online_write_batch_size` (feature_store.yaml).
    Returns the rows per view.
    """
    from feast import FileSource
    from tqdm.auto import tqdm

    views = [view for view in store.list_feature_views() if view.online and (names is None or view.name in names)]
    unknown = sorted(set(names or []) - {view.name for view in views})
    if unknown:
        raise SaefsError(f"no online feature views {unknown} in the registry: run `dvc repro feast_apply` first")
    _make_local_dirs(store)
    # the online tables of a fresh store file: `store.apply` would create them too, but rewrites the registry
    store.provider.update_infra(store.project, tables_to_delete=[], tables_to_keep=views, entities_to_delete=[],
                                entities_to_keep=store.list_entities(), partial=True)
    counts = {}
    for view in views:
        if not isinstance(view.batch_source, FileSource):
            raise SaefsError(f"view {view.name} reads {type(view.batch_source).__name__}; saefs writes parquet files")
        stamps = pq.read_table(view.batch_source.path, columns=[EVENT_TIME])[EVENT_TIME]
        counts[view.name] = len(stamps)
        if not len(stamps):
            continue
        span = pc.min_max(stamps)  # the whole history, with a second of margin on both ends
        start, end = span["min"].as_py() - timedelta(seconds=1), span["max"].as_py() + timedelta(seconds=1)
        store.provider.materialize_single_feature_view(
            config=store.config, feature_view=view, start_date=start, end_date=end,
            registry=store.registry, project=store.project, tqdm_builder=lambda n: tqdm(total=n, disable=True))
    return counts


def rebuild_online_store(store: FeatureStore) -> tuple[dict[str, int], dict[str, int]]:
    """Reload every online view; returns the rows per view and the pushed texts carried over per view.

    A SQLite store is built afresh in a temporary sibling file, gets the rows the scoring service
    pushed for texts the offline sources lack (`carry_pushed`), and replaces the live file in one
    rename: readers see the old store or the new one, never none or half of one, and a failure
    leaves the old one. Other stores (Redis) are overwritten in place, key by key, and carry nothing.
    """
    online = store.config.online_store
    if online.type != "sqlite":
        return materialize_views(store), {}
    live = Path(store.repo_path) / online.path  # as Feast resolves it (an absolute path stays itself)
    remove_temporaries(live)  # of a killed rebuild
    with atomic_path(live) as fresh:
        counts = materialize_views(_with_sqlite_path(store, fresh))
        return counts, carry_pushed(live, fresh)


def _with_sqlite_path(store: FeatureStore, path: Path) -> FeatureStore:
    """The same store with its SQLite online store at `path`."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    config = store.config.model_dump(by_alias=True, exclude_unset=True)
    config["online_store"] = store.config.online_store.model_dump() | {"path": str(path)}
    return FeatureStore(repo_path=str(store.repo_path), config=RepoConfig(**config))


def carry_pushed(live: Path, fresh: Path) -> dict[str, int]:
    """Copy into `fresh` the rows of `live` whose texts it lacks (pushed by the scoring service), view by view.

    A view whose materialized rows (same text, same event time) differ between the stores was
    computed another way (another SAE or extraction setting under the same name): its pushed rows
    would be stale, so they are dropped, with a warning. Returns the texts carried per view table.
    """
    if not live.is_file():
        return {}
    carried = {}
    with contextlib.closing(sqlite3.connect(fresh.resolve().as_uri(), uri=True)) as conn, conn:
        conn.execute("ATTACH DATABASE ? AS live", (f"{live.resolve().as_uri()}?mode=ro",))
        tables = "SELECT name FROM {}.sqlite_master WHERE type = 'table'"
        common = sorted({r[0] for r in conn.execute(tables.format("main"))}
                        & {r[0] for r in conn.execute(tables.format("live"))})
        for table in common:
            new, old = f'main."{table}"', f'live."{table}"'
            changed = conn.execute(f"SELECT 1 FROM {new} n JOIN {old} o USING (entity_key, feature_name, event_ts) "
                                   "WHERE n.value IS NOT o.value LIMIT 1").fetchone()
            absent = f"FROM {old} WHERE entity_key NOT IN (SELECT entity_key FROM {new})"
            texts = conn.execute(f"SELECT COUNT(DISTINCT entity_key) {absent}").fetchone()[0]
            if changed and texts:
                log.warning("online table %s: its offline rows changed, so %d pushed texts, computed the old way, "
                            "are dropped; score them again to add them", table, texts)
            if changed or not texts:
                continue
            columns = ", ".join(f'"{r[1]}"' for r in conn.execute(f'PRAGMA main.table_info("{table}")'))
            conn.execute(f"INSERT INTO {new} ({columns}) SELECT {columns} {absent}")
            carried[table] = texts
    return carried
