"""The catalog: the views a `build_features` run wrote (ViewSpec: what each holds, where its parquet lies), as JSON.

`feast_apply` merges the catalogs of every model into one, which feature_repo/ turns into Feast objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from features.core.binarize import BinarizeOp
from features.errors import SaefsError
from features.stores.feast.columns import FEATURE_COLUMNS, ViewKind
from features.stores.files import write_json

CATALOG_FILE = "catalog.json"
CATALOG_FORMAT = "saefs-feast-catalog/1"


@dataclass(frozen=True)
class ViewSpec:
    """One Feast view: what it holds and where its offline parquet lies (relative to the project root)."""

    name: str
    kind: ViewKind
    path: str
    width: int  # SAE latents (sparse, binary), d_model (dense)
    n_rows: int
    model: str | None = None
    layer: int | None = None
    sae: str | None = None  # SAE width as named in params ("4k")
    pooling: str | None = None
    threshold: float | None = None  # binary views
    op: BinarizeOp | None = None  # binary and raw sparse views: the grid's binarize op

    @property
    def features(self) -> tuple[str, ...]:
        return FEATURE_COLUMNS[self.kind]

    def tags(self) -> dict[str, str]:
        """Feast tags (strings) that let a reader of the registry rebuild matrices (kind, width) and find the cell."""
        return {key: str(value) for key, value in asdict(self).items()
                if value is not None and key not in ("name", "path", "n_rows")}


def write_catalog(path: str | os.PathLike[str], views: Sequence[ViewSpec]) -> None:
    names = [view.name for view in views]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SaefsError(f"views {repeated} appear twice in the catalog for {path}: each name must be unique")
    write_json(path, {"format": CATALOG_FORMAT, "views": [asdict(view) for view in views]})


def read_catalog(path: str | os.PathLike[str]) -> list[ViewSpec]:
    path = Path(path)
    if not path.is_file():
        raise SaefsError(f"{path} not found: run `dvc repro build_features` first (it writes the Feast "
                         "sources and their catalogs; `extract_images` for a cross-modal model)")
    raw = json.loads(path.read_text())
    if raw.get("format") != CATALOG_FORMAT:
        raise SaefsError(f"{path} has format {raw.get('format')!r}; this code reads {CATALOG_FORMAT!r}: rebuild it")
    known = {f.name for f in fields(ViewSpec)}
    return [ViewSpec(**{key: value for key, value in view.items() if key in known}) for view in raw["views"]]

