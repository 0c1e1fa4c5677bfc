"""Stage feast_apply: register every view of the run in the Feast registry (a file, or PostgreSQL).

Merges the catalogs of each model's `build_features` (and each cross-modal model's `extract_images`) into
data/feast/catalog.json, turns it into Feast objects (feature_repo/) and applies them in this process (as
`feast apply` would, deleting views the catalog no longer lists), in the store that
`feast_apply.feature_store_yaml` configures.
Its receipt, data/feast/registry/applied.json, says what was registered and where: DVC's output
whether the registry is a file beside it or a PostgreSQL database.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from features.errors import SaefsError
from features.stores.feast.catalog import CATALOG_FILE, read_catalog, write_catalog
from features.stores.feast.store import apply_objects, store_locations
from features.stores.files import write_json
from pipelines import paths, stage_main
from pipelines.params import load_params
from pipelines.stores import FEATURE_REPO, feature_store

log = logging.getLogger("saefs.feast_apply")


def run(repo: str) -> None:
    params = load_params()
    views = [view for model in params.feature_models
             for view in read_catalog(paths.feast_sources_dir(model) / CATALOG_FILE)]
    absent = [view.path for view in views if not Path(view.path).is_file()]
    if absent:
        raise SaefsError(f"catalogued sources {absent[:3]} are missing: run `dvc repro build_features` again")
    store = feature_store(params.feast_apply, repo)  # a registry or online store that does not answer fails here,
    write_catalog(paths.feast_catalog(), views)      # before the catalog is written
    from feature_repo.objects import repo_objects  # imports feast, as the store above did

    apply_objects(store, repo_objects(views, Path(store.repo_path).parent))
    applied = {"project": store.project, "registry": store_locations(store)["registry"],
               "feature_views": sorted(view.name for view in store.list_feature_views()),
               "feature_services": sorted(service.name for service in store.list_feature_services())}
    write_json(paths.feast_applied(), applied)
    log.info("registered %d feature views and %d feature services in project %s (%s registry at %s)",
             len(applied["feature_views"]), len(applied["feature_services"]), store.project,
             applied["registry"]["type"], applied["registry"]["address"])


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="repo", help=f"the Feast repository ({FEATURE_REPO})",
                      cost="per_stage")


if __name__ == "__main__":
    sys.exit(main())
