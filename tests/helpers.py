"""Builders for tests: small valid configurations with overrides (tests/helpers.py, as in SAELens)."""

from __future__ import annotations

import codecs
import copy
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from features.core.prepare import PrepareConfig
from pipelines.profile import load_profile

REPO = Path(__file__).resolve().parents[1]


def embedded_params(**overrides: Any) -> dict[str, Any]:
    """The embedded profile as a dict, with top-level groups replaced by `overrides`."""
    raw = load_profile("embedded", REPO / "profiles")
    raw.update(copy.deepcopy(overrides))
    return follow_models(raw, keep=set(overrides))


def prepare_config(**fields: Any) -> PrepareConfig:
    """A PrepareConfig with the embedded profile's split (prepare_data), overridden by `fields`."""
    return PrepareConfig(**embedded_params()["prepare_data"] | fields)


def follow_models(raw: dict[str, Any], keep: set[str] = frozenset()) -> dict[str, Any]:
    """Point the groups that name models or datasets (behaviour_labels, transfer, lodo) at those of `raw`, unless `keep`
    lists them: a test that swaps the models for tiny ones gets a configuration that still validates."""
    models, sae = list(raw["models"]), raw["sae"]
    if "behaviour_labels" not in keep:
        targets = [m for m in raw["behaviour_labels"]["targets"] if m in raw["models"]]
        raw["behaviour_labels"]["targets"] = targets or models[:1]
        for task in raw["behaviour_labels"]["tasks"].values():  # a judgement asks about texts of known datasets
            if task.get("kind") == "judgement" and not set(task["datasets"]) <= set(raw["datasets"]):
                task["datasets"] = list(raw["datasets"])
    if "transfer" not in keep:
        raw["transfer"]["sources"] = {m: {"layer": cell["layers"][0], "width": cell["widths"][0]}
                                      for m, cell in sae.items()}
        first = next(iter(sae))
        if not set(raw["transfer"]["pair"]) <= set(sae):
            raw["transfer"]["pair"] = [first, first]
    if "lodo" not in keep:  # the profile's, where its datasets and SAEs exist; else every dataset, first SAEs
        lodo = raw["lodo"]
        if not set(lodo["datasets"]) <= set(raw["datasets"]):
            lodo["datasets"] = list(raw["datasets"])
        if not all(m in sae and cell["layer"] in sae[m]["layers"] and cell["width"] in sae[m]["widths"]
                   for m, cell in lodo["sources"].items()):
            lodo["sources"] = {m: {"layer": cell["layers"][0], "width": cell["widths"][0]} for m, cell in sae.items()}
        if len(lodo["datasets"]) < 2:
            lodo["sources"] = {}
    return raw


def write_params(folder: Path, raw: dict[str, Any]) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def planted_predictions(accuracy: dict[str, float], y: np.ndarray, resamples: int = 5, seed: int = 0) -> pd.DataFrame:
    """Prediction rows (test and val) of fits whose predictions are right on a planted share of texts; every
    fit sees the same splits (whatever `seed`, as every model of a dataset does in train_probes), and a text's
    difficulty is shared across fits, as on real data."""
    rng, splits = np.random.default_rng(seed), np.random.default_rng(len(y))
    ids = np.array([f"t{i}" for i in range(len(y))])
    luck = rng.random(len(y))  # the same texts are hard for every fit: the pairing the tests rely on
    parts = []
    for r in range(resamples):
        test = splits.permutation(len(y)) < len(y) // 4
        for fit, share in accuracy.items():
            right = (luck + 0.05 * rng.random(len(y))) % 1 < share
            y_pred = np.where(right, y, 1 - y)
            for split, rows in (("test", test), ("val", ~test)):
                parts.append(pd.DataFrame({
                    "fit": fit, "resample": r, "split": split, "text_id": ids[rows], "y_true": y[rows],
                    "y_pred": y_pred[rows], "converged": True, "proba_0": np.where(y_pred[rows] == 0, 0.8, 0.2),
                    "proba_1": np.where(y_pred[rows] == 1, 0.8, 0.2) + 0.01 * rng.random(rows.sum())}))
    return pd.concat(parts, ignore_index=True)


def plant_fortunes(root: Path, lang: str, clean: list[str], offensive: list[str], rotate: bool = False) -> Path:
    """`root` laid out as Debian unpacks fortunes-<lang> and fortunes-<lang>-off: a file of `clean` entries and
    one of `offensive` ones (ROT13-encoded, flagged in strfile's index as Debian's Spanish ones, if `rotate`)."""
    from features.sources.fortunes import GAMES, LAYOUT, STR_ROTATED

    for label, entries in ((0, clean), (1, offensive)):
        folder = root / GAMES / LAYOUT[lang][label]
        folder.mkdir(parents=True, exist_ok=True)
        encoded = [codecs.encode(entry, "rot13") for entry in entries] if rotate and label else entries
        (folder / "jokes").write_text("\n%\n".join(encoded) + "\n%\n", encoding="utf-8")
        if rotate and label:  # version, entries, longest, shortest, flags; then the delimiter
            (folder / "jokes.dat").write_bytes(struct.pack(">5I", 2, len(entries), 80, 1, STR_ROTATED) + b"%\0\0\0")
    return root


def hub_parquet_export(cache: Path, repo: str, splits: dict[str, pd.DataFrame], sha: str = "a" * 40) -> Path:
    """The hub's parquet conversion of dataset `repo` in the hub cache layout, as `hf download --revision
    refs/convert/parquet` leaves it: `datasets--<owner>--<name>/refs/refs/convert/parquet` holding the commit, and
    `snapshots/<commit>/<config>/<split>/0000.parquet` per `splits` key `<config>/<split>`."""
    storage = cache / f"datasets--{repo.replace('/', '--')}"
    ref = storage / "refs" / "refs" / "convert" / "parquet"
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(sha)
    for folder, frame in splits.items():
        path = storage / "snapshots" / sha / folder / "0000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    return storage
