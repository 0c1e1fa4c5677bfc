"""The Feast store that `feast_apply.feature_store_yaml` configures, as every stage and the scoring service open it,
and the check of the feast_apply/materialize receipts against it.

Apart from pipelines/feature_params.py (the params), which every stage imports: only the stages that open the
store pay for importing features.stores.feast.store (pyarrow) and depend on it in dvc.yaml.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from features.errors import SaefsError
from features.stores.feast.store import open_store, store_locations
from pipelines import paths
from pipelines.feature_params import FeastApplyParams

if TYPE_CHECKING:
    from feast import FeatureStore

FEATURE_REPO = Path("feature_repo")
FEAST_YAML_ENV = "FEAST_FS_YAML_FILE_PATH"  # feast.constants.FEAST_FS_YAML_FILE_PATH_ENV_NAME, read by the feast CLI


def feature_store(params: FeastApplyParams, repo: str | os.PathLike[str] = FEATURE_REPO) -> FeatureStore:
    """The store of `repo` under `feast_apply.feature_store_yaml`; its registry and online store must answer.

    An exported FEAST_FS_YAML_FILE_PATH (how the feast CLI is pointed at a variant) must name the same
    file: DVC sees the param, not the variable, so a disagreement would write one store and record another.
    """
    yaml_file = Path(params.feature_store_yaml)
    exported = os.environ.get(FEAST_YAML_ENV)
    if exported and Path(exported).resolve() != yaml_file.resolve():
        raise SaefsError(f"{FEAST_YAML_ENV}={exported} but params.yaml feast_apply.feature_store_yaml is {yaml_file}: "
                         f"the stages use the param (DVC tracks it); unset {FEAST_YAML_ENV} or export the same file")
    if not yaml_file.is_file():
        raise SaefsError(f"params.yaml feast_apply.feature_store_yaml: {yaml_file} not found (a path relative to the "
                         "project root, e.g. feature_repo/feature_store.yaml)")
    return open_store(repo, yaml_file)


def stale_receipts(store: FeatureStore) -> list[str]:
    """Where the feast_apply and materialize receipts disagree with the store configured now (another database,
    Redis or file: DVC sees neither the addresses nor the variables that give them), one line each, with the fix."""
    now = store_locations(store)
    lines = []
    for receipt, part in ((paths.feast_applied(), "registry"), (paths.feast_materialized(), "online_store")):
        if receipt.is_file():
            recorded = json.loads(receipt.read_text())[part]
            if recorded != now[part]:
                lines.append(f"{receipt} records the {part.replace('_', ' ')} at {recorded['type']} "
                             f"{recorded['address']}, but the configuration names {now[part]['type']} "
                             f"{now[part]['address']}: `dvc repro` fills it when feast_apply.feature_store_yaml "
                             "changed; when only an address did, `dvc repro -f feast_apply materialize`")
    return lines
