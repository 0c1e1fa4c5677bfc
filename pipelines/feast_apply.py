"""Stage feast_apply: register every view of the run in the Feast registry (a file, or PostgreSQL).

Merges the catalogs of `build_labels` and of each model's `build_features` into
data/feast/catalog.json, which feature_repo/ turns into Feast objects, then applies the repo in
this process (as `feast apply` would, deleting views the catalog no longer lists), in the store
that `feast_apply.feature_store_yaml` configures. Its receipt, data/feast/registry/applied.json,
says what was registered and where: DVC's output whether the registry is a file beside it or a
PostgreSQL database.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from features.errors import SaefsError
from features.stores.feature_store import CATALOG_FILE, apply_repo, read_catalog, store_locations, write_catalog
from features.stores.files import write_json
from pipelines import paths, stage_main
from pipelines.params import load_params
from pipelines.stores import FEATURE_REPO, feature_store

log = logging.getLogger("saefs.feast_apply")


def run(repo: str) -> None:
    params = load_params()
    parts = [paths.feast_labels_dir() / CATALOG_FILE,
             *(paths.feast_sources_dir(model) / CATALOG_FILE for model in params.sae)]
    views = [view for part in parts for view in read_catalog(part)]
    absent = [view.path for view in views if not Path(view.path).is_file()]
    if absent:
        raise SaefsError(f"catalogued sources {absent[:3]} are missing: run `dvc repro build_features` again")
    store = feature_store(params.feast_apply, repo)  # a registry or online store that does not answer fails here,
    write_catalog(paths.feast_catalog(), views)      # before the catalog is written
    apply_repo(store)
    applied = {"project": store.project, "registry": store_locations(store)["registry"],
               "feature_views": sorted(view.name for view in store.list_feature_views()),
               "on_demand_feature_views": sorted(view.name for view in store.list_on_demand_feature_views()),
               "feature_services": sorted(service.name for service in store.list_feature_services())}
    write_json(paths.feast_applied(), applied)
    log.info("registered %d feature views, %d on-demand views and %d feature services in project %s (%s registry "
             "at %s)", len(applied["feature_views"]), len(applied["on_demand_feature_views"]),
             len(applied["feature_services"]), store.project, applied["registry"]["type"],
             applied["registry"]["address"])


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})")


if __name__ == "__main__":
    sys.exit(main())
