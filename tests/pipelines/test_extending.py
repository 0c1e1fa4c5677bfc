"""Extending saefs: a pooling method added in features/core/pooling.py alone flows to params, a Feast view and a
probe; and the registries are the only places that spell pooling names and source kinds."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from features.core import pooling
from features.core.naming import codes_name, hidden_name
from features.core.probes import make_probe
from features.core.sae_config import ARCHITECTURES
from features.sources.datasets import DATASET_SOURCE_KINDS
from features.sources.models import MODEL_SOURCE_KINDS
from features.sources.sae import SAE_LOADERS
from features.stores.feast.columns import to_csr
from features.stores.feast.names import hidden_view_name, view_name
from features.stores.feast.offline import FeatureGrid, build_offline_sources
from features.stores.shards import ShardWriter
from pipelines.params import ParamsError, parse_params
from tests.helpers import REPO, embedded_params

MODEL, LAYER, WIDTH, D_MODEL = "toy", 1, "16", 4


def _first(values: torch.Tensor, rows: torch.Tensor, n_texts: int) -> torch.Tensor:
    """The first counted token of each text (tokens arrive in position order)."""
    first = values.new_zeros(n_texts, values.shape[1])
    starts = torch.ones_like(rows, dtype=torch.bool)
    starts[1:] = rows[1:] != rows[:-1]
    first[rows[starts]] = values[starts]
    return first


@pytest.fixture
def with_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pooling, "POOLINGS", dict(pooling.POOLINGS))  # the registration ends with the test
    pooling.register_pooling("first", _first, hidden=True)


def _with_first_pooling() -> dict:
    raw = embedded_params()
    raw["extract"]["poolings"].append("first")
    raw["train_probes"]["poolings"].append("first")
    raw["build_features"]["hidden"].append("first")
    return raw


def test_params_accept_a_pooling_only_once_it_is_registered(with_first: None) -> None:
    params = parse_params(_with_first_pooling())
    assert "first" in params.extract.poolings and "first" in params.build_features.hidden


def test_params_name_an_unregistered_pooling() -> None:
    with pytest.raises(ParamsError, match=r"extract\.poolings\.\d+: .*unknown pooling 'first'"):
        parse_params(_with_first_pooling())


def test_a_registered_pooling_reaches_a_feast_view_and_a_probe(with_first: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_texts, width = 40, int(WIDTH)
    labels = np.arange(n_texts) % 2
    tokens = rng.integers(2, 5, size=n_texts)  # counted tokens per text
    rows = torch.from_numpy(np.repeat(np.arange(n_texts), tokens))
    codes = torch.from_numpy(rng.random((len(rows), width)).astype(np.float32))
    starts = np.concatenate([[0], np.cumsum(tokens)[:-1]])
    codes[starts, 3] = torch.from_numpy(labels * 5.0 + 1.0).float()  # the first token carries the label
    pooled = pooling.pool_codes(codes, rows, n_texts, "first")
    assert np.allclose(pooled.toarray(), codes[starts].numpy())
    hidden = pooling.pool_hidden(codes[:, :D_MODEL], rows, n_texts, "first")
    assert "first" in pooling.hidden_poolings()

    ids = [f"d-{i:03d}" for i in range(n_texts)]
    prepared = tmp_path / "prepared.parquet"
    pd.DataFrame({"text_id": ids, "label": labels,
                  "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")}).to_parquet(prepared)
    with ShardWriter(tmp_path / "features", shard_rows=16) as writer:
        writer.append(ids, sparse={codes_name(LAYER, WIDTH, "first"): pooled},
                      dense={hidden_name(LAYER, "first"): hidden})
    grid = FeatureGrid(layers=[LAYER], widths=[WIDTH], poolings=["first"], hidden_poolings=["first"])
    views = build_offline_sources(MODEL, {"d": tmp_path / "features"}, {"d": prepared}, grid,
                                                tmp_path / "views")
    by_name = {view.name: view for view in views}
    view = by_name[view_name(MODEL, LAYER, WIDTH, "first")]
    assert view.pooling == "first" and hidden_view_name(MODEL, LAYER, "first") in by_name

    table = pq.read_table(view.path).to_pandas().set_index("text_id").loc[ids]
    assert np.allclose(to_csr(table["latent_ids"], table["latent_values"], view.width).toarray(),
                       pooled.toarray())
    probe = make_probe("logreg", width=view.width, C_grid=(1.0,), cv=2).fit(table, labels)  # rows as Feast gives
    assert (probe.predict(table) == labels).all()


# --- the registries are the only places that spell these names --------------------------------

REGISTRIES = {
    "features/core/pooling.py": set(pooling.POOLINGS) | {pooling.TOP_N},
    "features/sources/sae.py": set(SAE_LOADERS),
    "features/core/sae_config.py": set(ARCHITECTURES),
    "features/sources/models.py": set(MODEL_SOURCE_KINDS),
    "features/sources/datasets.py": set(DATASET_SOURCE_KINDS),
}


def _spelled_collections(path: Path) -> list[tuple[int, set[str]]]:
    """(line, strings) of each list, tuple, set or dict-key literal in a module that holds string constants."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict) and items:
            strings = {item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)}
            if strings:
                found.append((node.lineno, strings))
    return found


@pytest.mark.parametrize("registry", sorted(REGISTRIES))
def test_only_the_registry_lists_its_names(registry: str) -> None:
    names = REGISTRIES[registry]
    spelled = [f"{path.relative_to(REPO)}:{line}: {sorted(strings & names)}"
               for folder in ("features", "pipelines") for path in sorted((REPO / folder).rglob("*.py"))
               if path.relative_to(REPO).as_posix() != registry
               for line, strings in _spelled_collections(path) if len(strings & names) >= 2]
    assert not spelled, f"these list names of {registry}'s registry; read the registry instead: {spelled}"
