"""Benchmark the cross-lingual matrix's fits: one fit per (train language, split) for a whole row, against one
per cell (what the stage did before), on the same rows in one run.

    python benchmarks/transfer.py [--texts-per-language 600] [--resamples 3] [--width 4096]

Synthetic rows shaped as the embedded profile's (three languages, balanced labels, a prepared test split of a
fifth per language; SAE codes of `--width` latents with about 40 active per text, 640-dim hidden states, a
few words per text): `transfer.cross_lingual_cells` with the stage's params (C grid, folds, `n_jobs`), and the
per-cell loop it replaced, which fits each probe for every (train language, test language) cell. Prints both
times, their ratio, the fits each made, whether every prediction row is equal, and the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

import pipelines  # noqa: F401  (offline environment)
from features.core.probes import make_majority_baseline, make_tfidf_baseline
from features.core.transfer import cross_lingual_resamples
from pipelines import transfer
from pipelines.params import load_params

LANGUAGES = ("en", "es", "it")


def synthetic_rows(per_language: int, width: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Prepared rows of every language, their SAE codes (Feast's list columns) and hidden states: a few latents
    and words carry the label in every language, the rest is noise."""
    rng = np.random.default_rng(seed)
    n = per_language * len(LANGUAGES)
    langs = np.repeat(LANGUAGES, per_language)
    y = np.tile(np.arange(per_language) % 2, len(LANGUAGES))
    ids, values, texts = [], [], []
    for label, lang in zip(y, langs, strict=True):
        active = set(rng.choice(np.arange(8, width), 38, replace=False).tolist())
        if rng.random() < 0.7:
            active |= {int(label), 2 + int(label)}
        ids.append(sorted(active))
        values.append((rng.random(len(active)) * 3).astype(np.float32).tolist())
        words = [f"{lang}{w}" for w in rng.integers(0, 300, 8)] + ([f"{lang}mark{label}"] if rng.random() < 0.5 else [])
        texts.append(" ".join(words))
    hidden = rng.normal(size=(n, 640)).astype(np.float32)
    hidden[:, 0] += y * 0.5
    frame = pd.DataFrame({"text_id": [f"t{i}" for i in range(n)], "label": y, "lang": langs, "text": texts})
    rank = frame.groupby(["lang", "label"]).cumcount()
    frame["split"] = np.where(rank < frame.groupby(["lang", "label"])["label"].transform("size") // 5, "test", "train")
    return frame, pd.DataFrame({"latent_ids": ids, "latent_values": values}), pd.DataFrame({"hidden": list(hidden)})


def per_cell(frame: pd.DataFrame, codes: pd.DataFrame, hidden: pd.DataFrame, width: int, params) -> list[pd.DataFrame]:
    """The loop the stage ran before: every probe fitted for every (train language, test language) cell."""
    t, predictions = params.transfer, []
    matrix = cross_lingual_resamples(frame["lang"], frame["label"], frame["split"] == "test", t.resamples,
                                     params.prepare_data.seed)
    for train_lang, test_lang, splits in matrix:
        cell = transfer.Cell(f"bench:m:L0:{train_lang}->{test_lang}", frame, splits, t.cv_folds, t.n_jobs)
        cell.fit("sae", lambda seed: transfer._sae_probe(params, width, seed, ">"), codes)
        cell.fit("hidden", lambda seed: transfer._dense_probe(params, seed), hidden)
        cell.fit("tfidf", make_tfidf_baseline, frame[["text"]])
        cell.fit("majority", lambda seed: make_majority_baseline(), codes)
        predictions += cell.rows
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts-per-language", type=int, default=600)
    parser.add_argument("--resamples", type=int, default=3)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()
    params = load_params()
    params = params.model_copy(update={"transfer": params.transfer.model_copy(update={
        "resamples": args.resamples, "cross_lingual": {"bench": next(iter(params.transfer.cross_lingual.values()))}})})
    frame, codes, hidden = synthetic_rows(args.texts_per_language, args.width)
    print(f"{len(frame)} texts in {len(LANGUAGES)} languages, width {args.width}, {args.resamples} resamples, "
          f"n_jobs {params.transfer.n_jobs}, load {os.getloadavg()[0]:.2f}")
    Parallel(n_jobs=params.transfer.n_jobs)(delayed(abs)(i) for i in range(4))  # start the workers before timing
    with threadpool_limits(limits=1):  # as the stage: one BLAS thread per fit, `n_jobs` fits at once
        started = time.perf_counter()
        before = per_cell(frame, codes, hidden, args.width, params)
        old = time.perf_counter() - started
        started = time.perf_counter()
        _, now = transfer.cross_lingual_cells("bench", "m", 0, frame, codes, hidden, args.width, params)
        new = time.perf_counter() - started
    cells = len(LANGUAGES) ** 2
    print(f"one fit per cell:              {old:7.1f} s ({cells * 4 * args.resamples} fits)")
    print(f"one fit per train language:    {new:7.1f} s ({len(LANGUAGES) * 4 * args.resamples} fits)  "
          f"{old / new:.2f}x, load {os.getloadavg()[0]:.2f}")
    equal = pd.concat(before, ignore_index=True).equals(pd.concat(now, ignore_index=True))
    print(f"prediction rows equal: {equal}")


if __name__ == "__main__":
    main()
