"""Every Feast object of a run, from its catalog: what `feast_apply` registers (FeatureStore.apply).

Without views (an empty catalog) the repo defines only the entity.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feature_repo.entities import text
from feature_repo.services import feature_service
from feature_repo.sources import view_sources
from feature_repo.views import feature_view
from features.stores.feast.catalog import ViewSpec


def repo_objects(catalog: Sequence[ViewSpec], root: Path) -> list[Any]:
    """The entity, then each view's sources, view and service; `root`: the project root the catalog's paths start at."""
    objects: list[Any] = [text]
    for spec in catalog:
        sources = view_sources(spec, root)
        view = feature_view(spec, sources[-1])
        objects += [*sources, view, feature_service(view)]
    return objects
