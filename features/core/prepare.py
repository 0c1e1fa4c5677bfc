"""Raw source rows -> the prepared schema: label mapping, stable ids, dedupe, sampling, split.

Sampling and splitting are keyed on a seeded hash of `text_id`, not on row order, so they are
stable across machines and source re-orderings, and a larger `max_rows` keeps every row a
smaller one chose.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import zip_longest
from typing import Self

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from features.core.config import Strict
from features.core.schema import PREPARED_COLUMNS
from features.errors import SaefsError

log = logging.getLogger(__name__)


class PrepareError(SaefsError):
    """Rows that cannot become a usable dataset; the message names the dataset and the fix."""


class DatasetConfig(Strict):
    """Which rows of one dataset are kept and how they are labelled; params.yaml's datasets.<name> extends it."""

    labels: tuple[int | str, ...] = Field(min_length=2, description="raw label values; the int label is the position")
    label_names: tuple[str, ...] | None = None
    lang: str = "en"  # of rows whose source gives none
    max_rows: int | None = Field(default=None, gt=0)
    balance: bool = False  # sample equal classes (as many as the rarest holds, up to max_rows in all)
    dedupe: bool = True

    @model_validator(mode="after")
    def _names_match_labels(self) -> Self:
        if self.label_names is not None and len(self.label_names) != len(self.labels):
            raise ValueError(f"label_names has {len(self.label_names)} entries but labels has {len(self.labels)}")
        if len({str(v) for v in self.labels}) != len(self.labels):
            raise ValueError(f"labels {list(self.labels)} repeat a value")
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        """Each class's name, in label order: `label_names`, else the raw label values as text."""
        return self.label_names or tuple(str(v) for v in self.labels)


class SplitConfig(Strict):
    """The train/test split and the rows' event time, the same for every dataset: params.yaml's prepare_data."""

    test_size: float = Field(gt=0, lt=1)
    seed: int
    event_timestamp: datetime = Field(description="Feast event time of every row (fixed, so outputs reproduce)")


class PrepareConfig(DatasetConfig, SplitConfig):
    name: str
    max_chars: int | None = None  # longest text (stripped) accepted: validate_data's bound, checked before dedupe


@dataclass
class PrepareSummary:
    rows_read: int
    dropped_duplicates: int = 0
    dropped_conflicting: int = 0
    dropped_by_max_rows: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label_name -> rows


def text_id(dataset: str, text: str) -> str:
    """A stable id from the dataset name and the text: the same on every run and machine."""
    digest = hashlib.sha256(dataset.encode() + b"\x00" + text.encode()).hexdigest()
    return f"{dataset}-{digest[:16]}"


def _rank(ids: pd.Series, seed: int, salt: str) -> np.ndarray:
    """A seeded pseudo-random order of the ids that does not depend on row order."""
    digests = [hashlib.blake2b(f"{seed}:{salt}:{i}".encode(), digest_size=8).digest() for i in ids]
    return np.array([int.from_bytes(d, "big") for d in digests], dtype=np.uint64)


def _rows(positions: np.ndarray) -> str:
    """The source's row numbers, counted from 1 as a user counts data rows (a CSV's header not included)."""
    numbers = [str(int(p) + 1) for p in positions]
    more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
    return f"rows {', '.join(numbers[:10])}{more} (counted from 1, header excluded)"


def _check_texts(texts: pd.Series, cfg: PrepareConfig) -> None:
    """Refuse null, blank and over-long texts, naming their rows: checked before dedupe, which would otherwise
    merge blank texts into one or two rows and fail later with advice that does not fit."""
    if (null := np.flatnonzero(texts.isna())).size:
        raise PrepareError(f"dataset {cfg.name!r}: {null.size} rows have no text (null): {_rows(null)}; "
                           "fill them in or delete those rows from the source")
    chars = texts.str.strip().str.len().to_numpy()
    if (blank := np.flatnonzero(chars == 0)).size:
        raise PrepareError(
            f"dataset {cfg.name!r}: {blank.size} of {len(texts)} rows have an empty or whitespace-only text: "
            f"{_rows(blank)}; fill them in or delete those rows from the source"
        )
    if cfg.max_chars is not None and (long := np.flatnonzero(chars > cfg.max_chars)).size:
        raise PrepareError(
            f"dataset {cfg.name!r}: {long.size} rows have texts longer than validate_data.max_chars "
            f"({cfg.max_chars} characters; the longest has {int(chars.max())}): {_rows(long)}; shorten or "
            "remove them in the source, or raise validate_data.max_chars in params.yaml"
        )


def _map_labels(raw: pd.Series, cfg: PrepareConfig) -> pd.Series:
    """Raw labels -> positions in the declared set (compared as strings: CSV and YAML disagree on types)."""
    empty = np.flatnonzero(raw.map(lambda v: bool(pd.isna(v)) or (isinstance(v, str) and not v.strip())))
    if empty.size:
        raise PrepareError(
            f"dataset {cfg.name!r}: {empty.size} rows have an empty label: {_rows(empty)}; fill in one of "
            f"{list(cfg.labels)} or delete those rows from the source"
        )
    position = {str(v): i for i, v in enumerate(cfg.labels)}
    as_str = raw.map(lambda v: str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v))
    unknown = as_str[~as_str.isin(position)]
    if len(unknown):
        values = unknown.value_counts().head(5).to_dict()
        raise PrepareError(
            f"dataset {cfg.name!r}: {len(unknown)} rows have labels outside the declared set "
            f"{list(cfg.labels)} (e.g. {values}); declare them in datasets.{cfg.name}.labels or clean the source"
        )
    return as_str.map(position).astype("int64")


def _dedupe(df: pd.DataFrame, cfg: PrepareConfig, summary: PrepareSummary) -> pd.DataFrame:
    """Drop exact duplicates; drop texts that appear with different labels altogether."""
    before = len(df)
    df = df.drop_duplicates(["text_id", "label"])
    summary.dropped_duplicates = before - len(df)
    conflicting = df["text_id"].duplicated(keep=False)
    summary.dropped_conflicting = int(conflicting.sum())
    if summary.dropped_duplicates or summary.dropped_conflicting:
        log.info("%s: dropped %d duplicate rows and %d rows whose text has conflicting labels",
                 cfg.name, summary.dropped_duplicates, summary.dropped_conflicting)
    return df[~conflicting]


def _sample(df: pd.DataFrame, cfg: PrepareConfig) -> pd.DataFrame:
    """Keep `max_rows` rows, stratified by label (each class keeps its share, at least one row), or with
    `balance` the same number of each class."""
    counts = df["label"].value_counts()
    if cfg.balance:
        per_class = max(1, min(counts.min(), (cfg.max_rows or len(df)) // len(counts)))
        quota = pd.Series(per_class, index=counts.index)
    elif cfg.max_rows is None or len(df) <= cfg.max_rows:
        return df
    else:  # each class its share, the rows flooring leaves over to the largest remainders: max_rows in all
        share = counts / len(df) * cfg.max_rows
        quota = np.floor(share).astype(int)
        quota[(share - quota).sort_values(ascending=False, kind="stable").index[:cfg.max_rows - quota.sum()]] += 1
        quota = np.maximum(1, quota)
    rank = pd.Series(_rank(df["text_id"], cfg.seed, "sample"), index=df.index)
    keep = [rank[df["label"] == lab].sort_values().index[:q] for lab, q in quota.items()]
    return df.loc[np.concatenate(keep)]


def _split(df: pd.DataFrame, cfg: PrepareConfig) -> pd.Series:
    """Stratified, seeded train/test assignment: per class, the lowest-ranked share goes to test."""
    split = pd.Series("train", index=df.index, dtype="string")
    rank = pd.Series(_rank(df["text_id"], cfg.seed, "split"), index=df.index)
    for _, members in df.groupby("label").groups.items():
        n_test = int(round(len(members) * cfg.test_size))
        if n_test == 0 or n_test == len(members):
            raise PrepareError(
                f"dataset {cfg.name!r}: a class with {len(members)} rows cannot be split at test_size "
                f"{cfg.test_size}; add rows or raise max_rows"
            )
        split[rank[members].sort_values().index[:n_test]] = "test"
    return split


def prepare(raw: pd.DataFrame, cfg: PrepareConfig) -> tuple[pd.DataFrame, PrepareSummary]:
    """Turn loader output (`text`, `raw_label`, optional `lang`) into a prepared dataset."""
    summary = PrepareSummary(rows_read=len(raw))
    if raw.empty:
        raise PrepareError(f"dataset {cfg.name!r}: the source has no rows")
    df = pd.DataFrame({"text": raw["text"].astype("string")})
    _check_texts(df["text"], cfg)
    df["label"] = _map_labels(raw["raw_label"], cfg)
    names = cfg.class_names
    df["label_name"] = df["label"].map(dict(enumerate(names))).astype("string")
    df["lang"] = raw["lang"].astype("string") if "lang" in raw else cfg.lang
    df["text_id"] = [text_id(cfg.name, t) for t in df["text"]]
    if cfg.dedupe:
        df = _dedupe(df, cfg, summary)
    present = sorted(df["label"].unique())
    if len(present) < 2:
        only = names[present[0]] if present else "none"
        absent = [name for i, name in enumerate(names) if i not in present]
        raise PrepareError(
            f"dataset {cfg.name!r} has one class only ({only!r}): {len(df)} rows of it, 0 of {absent}; a classifier "
            "needs at least two, check the source, the label field and the declared labels"
        )
    sampled = _sample(df, cfg)
    summary.dropped_by_max_rows = len(df) - len(sampled)
    df = sampled.copy()
    df["split"] = _split(df, cfg)
    df["event_timestamp"] = pd.Timestamp(cfg.event_timestamp).tz_convert("UTC")
    df = df.sort_values("text_id", kind="stable")[list(PREPARED_COLUMNS)].reset_index(drop=True)
    df = df.astype(PREPARED_COLUMNS)
    summary.counts = {
        s: {str(k): int(v) for k, v in g["label_name"].value_counts().sort_index().items()}
        for s, g in df.groupby("split")
    }
    return df, summary


def corpus_order(frames: dict[str, pd.DataFrame], seed: int) -> list[str]:
    """Every distinct non-blank text of the named frames (column `text`), interleaved across them (one of
    each in turn) in the same seeded hash rank as `max_rows`, so a prefix of any length spreads evenly over
    the sources and the order is stable across runs."""
    ranked: list[list[str]] = []
    for name, frame in frames.items():
        pool = frame["text"].dropna().astype(str)
        pool = pool[pool.str.strip() != ""].drop_duplicates()
        ids = pd.Series([text_id(name, t) for t in pool], index=pool.index)
        ranked.append(pool.loc[ids.iloc[np.argsort(_rank(ids, seed, "corpus"), kind="stable")].index].tolist())
    turns = zip_longest(*ranked)
    return [text for turn in turns for text in turn if text is not None]


def take_tokens(counts: Sequence[int], budgets: Sequence[int], what: str) -> list[range]:
    """Consecutive runs of texts (their indices), the i-th holding at least budgets[i] tokens, given each
    text's token count; an error naming `what` when the texts run out first."""
    runs, start, total = [], 0, 0
    cumulative = np.cumsum(counts)
    for budget in budgets:
        stop = int(np.searchsorted(cumulative, total + budget)) + 1
        if stop > len(counts):
            raise PrepareError(f"{what} has {int(cumulative[-1]) if len(counts) else 0:,} tokens, fewer than the "
                               f"{sum(budgets):,} asked for ({' + '.join(f'{b:,}' for b in budgets)}): add sources "
                               "or lower the token budgets")
        runs.append(range(start, stop))
        total, start = int(cumulative[stop - 1]), stop
    return runs
