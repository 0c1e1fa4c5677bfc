"""Cross-modal probes (PAPER.md §6.3): image datasets prepared as text datasets are, and the probe grid on a
vision-language model's features of them.

Images are prepared by `features.core.prepare` with the image's content id standing in for a text: the same
label mapping, deduplication (an identical image twice, or under two labels), stratified `max_rows` sampling and
seeded train/test split, and the same refusal of a dataset with one class.

Every probe of a dataset fits on the same resampled splits (`features.core.predictions.resamples`: the prepared
split first), each on the Feast view extract_images wrote for it: the SAE probe of each (layer, width, pooling,
threshold), the vision tower's features and the language model's residual at each layer (mean over the image
tokens). Scores are means over the splits with the corrected resampled-t interval; each SAE probe is paired
against the vision tower and the residual of its layer on the same splits, and Holm adjusts the p-values over
every comparison a model reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.core.binarize import BinarizeOp, threshold_tag
from features.core.evidence import with_holm_fields
from features.core.naming import codes_name, hidden_name
from features.core.predictions import fit_resamples, paired_fields, resample_metrics, resamples, summarize
from features.core.prepare import PrepareConfig, PrepareError, SplitConfig, prepare
from features.core.probes import make_probe

VISION = "vision__mean"  # the vision tower's output, mean over its patches
RESIDUAL = "mean"  # the residual baseline's pooling over the image tokens (hidden_name(layer, RESIDUAL))
VERSUS = ("vision", "residual")  # each SAE probe minus these, paired on the same splits
SCORES = ("macro_f1", "macro_f1_low", "macro_f1_high", "accuracy", "accuracy_low", "accuracy_high", "val_macro_f1",
          "resamples", "not_converged", "n_train", "n_test")


def prepare_images(raw: pd.DataFrame, name: str, split: SplitConfig, labels: Sequence[int | str] | None = None,
                   label_names: Sequence[str] | None = None, max_rows: int | None = None) -> pd.DataFrame:
    """An image source's rows (`image_id`, `image`, `raw_label`) in the prepared schema, `text` being the image
    id, with each row's `image` bytes. `labels` None: every raw label the source holds, sorted."""
    if labels is None:
        held = pd.Series(raw["raw_label"]).value_counts()
        if len(held) < 2:
            found = ", ".join(f"{label!r}: {count} images" for label, count in held.items()) or "no images"
            raise PrepareError(f"dataset {name!r} needs images of two or more classes; its source holds {found}: "
                               "check the source and its label_field")
        labels = sorted(held.index.tolist())
    cfg = PrepareConfig(name=name, labels=tuple(labels), label_names=tuple(label_names) if label_names else None,
                        max_rows=max_rows, **split.model_dump())
    prepared, _ = prepare(raw.rename(columns={"image_id": "text"})[["text", "raw_label"]], cfg)
    images = raw.drop_duplicates("image_id").set_index("image_id")["image"]
    return prepared.assign(image=images.loc[prepared["text"].to_numpy()].to_numpy())


@dataclass(frozen=True)
class ProbeSettings:
    """How every probe of the grid is fitted and resampled."""

    C_grid: Sequence[float]
    cv_folds: int
    resamples: int
    seed: int
    binarize_op: BinarizeOp = ">"
    n_jobs: int = 1


def sae_cell(layer: int, width: str, pooling: str, threshold: float | None, op: BinarizeOp = ">") -> str:
    """`l12__sae16k__sum__bin1`: the cell's name (features.core.naming, with its threshold's tag)."""
    return f"{codes_name(layer, width, pooling)}__{threshold_tag(threshold, op)}"


SaeCell = tuple[int, str, str, float | None]  # (layer, width, pooling, threshold): one SAE probe


def probe_dataset(dataset: str, frame: pd.DataFrame, codes: Mapping[SaeCell, tuple[pd.DataFrame, int]],
                  residual: Mapping[int, pd.DataFrame], vision: pd.DataFrame,
                  settings: ProbeSettings) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Every probe of one dataset on the same splits, each on its Feast view's columns aligned with `frame` (the
    prepared rows): `codes` (layer, width, pooling, threshold) -> the codes as probed (binarized at the threshold
    already) and the SAE's width, `residual` layer -> the mean residual, `vision` the tower's features. One row
    per probe with its scores (SCORES) and, for SAE probes, `sae_minus_<baseline>` with its interval and p-value
    (paired corrected resampled t); and every fit's prediction rows, fits named `<dataset>:<cell>`."""
    y, ids = frame["label"].to_numpy(), frame["text_id"].to_numpy()
    labels = np.unique(y).tolist()
    splits = resamples(y, (frame["split"] == "test").to_numpy(), settings.resamples, settings.seed)
    parts: list[pd.DataFrame] = []

    def fit(cell: str, make: Any, X: pd.DataFrame) -> dict[str, Any]:
        name = f"{dataset}:{cell}"
        rows, _ = fit_resamples(make, X, y, ids, splits, fit=name, labels=labels, cv=settings.cv_folds,
                                n_jobs=settings.n_jobs)
        parts.append(rows)
        summary = summarize(rows, labels)[name]
        return {"dataset": dataset, "cell": cell, **{key: summary.get(key) for key in SCORES}}

    def dense(seed: int) -> Any:
        return make_probe("logreg", input="dense", C_grid=settings.C_grid, cv=settings.cv_folds, seed=seed)

    rows = [fit(VISION, dense, vision) | {"features": "vision"}]
    rows += [fit(hidden_name(layer, RESIDUAL), dense, X) | {"features": "residual", "layer": layer}
             for layer, X in residual.items()]
    for (layer, width, pooling, threshold), (X, d_sae) in codes.items():
        def sparse(seed: int, d_sae: int = d_sae) -> Any:
            return make_probe("logreg", width=d_sae, C_grid=settings.C_grid, cv=settings.cv_folds, seed=seed)

        rows.append(fit(sae_cell(layer, width, pooling, threshold, settings.binarize_op), sparse, X)
                    | {"features": "sae", "layer": layer, "width": width, "pooling": pooling, "binarize": threshold})
    predictions = pd.concat(parts, ignore_index=True)
    table = resample_metrics(predictions, labels)
    for row in rows:
        if row["features"] != "sae":
            continue
        for baseline, cell in zip(VERSUS, (VISION, hidden_name(row["layer"], RESIDUAL)), strict=True):
            row |= paired_fields(table, f"{dataset}:{row['cell']}", f"{dataset}:{cell}", f"sae_minus_{baseline}")
    return rows, predictions


def with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`sae_minus_<baseline>_p_holm`: Holm over every paired comparison the rows report (a model's whole grid)."""
    return with_holm_fields(rows, [f"sae_minus_{baseline}" for baseline in VERSUS])
