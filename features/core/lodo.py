"""Leave one dataset out: does a probe trained on some safety datasets hold on another?

In-split scores overstate how a monitor does on data collected another way. For each held-out dataset
of a group whose label 1 means the same harm, a probe trained on the other datasets' training texts and
one trained on the held-out dataset's own training texts are scored on the same held-out test texts;
their paired difference is the transfer gap. A training text whose text is also one of the held-out
dataset's (the same tweet in two datasets: their text_ids differ, as each names its dataset) is dropped,
so nothing of the held-out dataset is ever trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from features.core.evidence import bootstrap_interval, paired_difference
from features.core.predictions import macro_f1
from features.errors import SaefsError


@dataclass(frozen=True)
class Fold:
    held_out: str
    others: np.ndarray  # row positions: the other datasets' training texts, the held-out texts removed
    own: np.ndarray  # the held-out dataset's training texts (the in-split probe)
    test: np.ndarray  # its test texts, which both probes are scored on
    dropped: int  # other datasets' training texts that are also texts of the held-out dataset


def text_keys(texts: pd.Series) -> np.ndarray:
    """A key per text that is equal for the same text in any dataset (whitespace at the ends ignored)."""
    return np.array([hashlib.sha256(text.strip().encode()).hexdigest() for text in texts])


def folds(frame: pd.DataFrame) -> list[Fold]:
    """One fold per dataset of `frame` (columns dataset, text, label, split; the prepared rows of every dataset),
    in the order they first appear. A dataset without both classes in its test texts, or whose training side
    lacks one, is a SaefsError naming it and the counts."""
    keys = text_keys(frame["text"])
    datasets = list(dict.fromkeys(frame["dataset"]))
    out = []
    for held in datasets:
        mine = (frame["dataset"] == held).to_numpy()
        train = (frame["split"] == "train").to_numpy()
        leak = np.isin(keys, keys[mine]) & ~mine & train
        fold = Fold(held, np.flatnonzero(train & ~mine & ~leak), np.flatnonzero(train & mine),
                    np.flatnonzero(mine & ~train), int(leak.sum()))
        for part, rows in (("test texts", fold.test), ("own training texts", fold.own),
                           ("training texts of the other datasets", fold.others)):
            counts = frame["label"].iloc[rows].value_counts().to_dict()
            if len(counts) < 2:
                raise SaefsError(f"leave-one-dataset-out, {held} held out: its {part} hold one class only "
                                 f"({counts}); every dataset of lodo.datasets needs both labels in both splits")
        out.append(fold)
    return out


def check_disjoint(frame: pd.DataFrame, fold: Fold) -> None:
    """SaefsError if any text trained on in `fold.others` is a text of the held-out dataset."""
    keys = text_keys(frame["text"])
    held = set(keys[(frame["dataset"] == fold.held_out).to_numpy()])
    shared = [frame["text_id"].iloc[i] for i in fold.others if keys[i] in held]
    if shared:
        raise SaefsError(f"{len(shared)} training texts of the {fold.held_out} fold are texts of {fold.held_out}: "
                         f"{shared[:5]}")


def gap(y_true: np.ndarray, in_split: np.ndarray, held_out: np.ndarray, labels: Sequence[int],
        n_boot: int, seed: int) -> dict[str, float]:
    """Macro F1 of both probes on the same held-out test texts, each with its bootstrap interval, and their
    paired difference (in-split minus held-out: what training on other datasets loses)."""
    def metric(truth: np.ndarray, guess: np.ndarray) -> float:
        return macro_f1(truth, guess, labels)

    own = bootstrap_interval(y_true, in_split, metric, n_boot, seed)
    other = bootstrap_interval(y_true, held_out, metric, n_boot, seed)
    difference = paired_difference(y_true, in_split, held_out, metric, n_boot, seed)
    return {"in_split_f1": own["estimate"], "in_split_low": own["low"], "in_split_high": own["high"],
            "held_out_f1": other["estimate"], "held_out_low": other["low"], "held_out_high": other["high"],
            "gap": difference["difference"], "gap_low": difference["low"], "gap_high": difference["high"],
            "gap_p": difference["p_value"], "n_test": len(y_true)}


def latent_overlap(tops: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """Jaccard overlap of the top latents of every pair of probes (named by `tops`' keys)."""
    rows = [{"a": a, "b": b, "jaccard": len(set(tops[a]) & set(tops[b])) / len(set(tops[a]) | set(tops[b]))
             if tops[a] or tops[b] else float("nan")} for a, b in combinations(sorted(tops), 2)]
    return pd.DataFrame(rows, columns=["a", "b", "jaccard"])
