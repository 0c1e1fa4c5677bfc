"""Stage feast_apply: register every view of the run in the Feast registry (data/feast/registry.db, or SQL).

Merges the catalogs of `build_labels` and of each model's `build_features` into
data/feast/catalog.json, which feature_repo/ turns into Feast objects, then applies the repo in
this process (as `feast apply` would, deleting views the catalog no longer lists).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from features.errors import SaefsError
from features.feature_store import CATALOG_FILE, apply_repo, open_store, read_catalog, write_catalog
from pipelines import paths, stage_main
from pipelines.feature_params import FEATURE_REPO
from pipelines.params import load_params

log = logging.getLogger("saefs.feast_apply")


def run(repo: str) -> None:
    params = load_params()
    parts = [paths.feast_labels_dir() / CATALOG_FILE,
             *(paths.feast_sources_dir(model) / CATALOG_FILE for model in params.sae)]
    views = [view for part in parts for view in read_catalog(part)]
    absent = [view.path for view in views if not Path(view.path).is_file()]
    if absent:
        raise SaefsError(f"catalogued sources {absent[:3]} are missing: run `dvc repro build_features` again")
    open_store(repo)  # a registry or online store that does not answer fails here, before the catalog is written
    write_catalog(paths.feast_catalog(), views)
    store = apply_repo(repo)
    log.info("registered %d feature views, %d on-demand views and %d feature services in project %s",
             len(store.list_feature_views()), len(store.list_on_demand_feature_views()),
             len(store.list_feature_services()), store.project)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})")


if __name__ == "__main__":
    sys.exit(main())
