"""Which latents separate two sets of texts: a ranking over their pooled SAE codes.

Each latent that is on in at least one text of either set is tested on its own: a two-sided Mann-Whitney
U test of its pooled values in set A against set B (rank-based, so the many zeros of a sparse code tie
rather than skew it; normal approximation with tie correction), with Benjamini-Hochberg q-values over
the latents tested (a false-discovery rate, not a family-wise one: a contrast is a search over thousands
of latents). The effect size is the AUROC of the latent's value as a score for A over B (U / (n_A n_B):
the chance that a text of A has the larger value, ties counted half): 1 or 0 separates perfectly, 0.5
not at all. Latents rank by |AUROC - 0.5|, then q, then id. Beside it, each set's share of texts the
latent is on in and its mean value, which is what a person reads first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix, vstack
from scipy.stats import false_discovery_control, mannwhitneyu

from features.errors import SaefsError

CHUNK = 4096  # latents densified at once: n_texts x CHUNK floats
COLUMNS = ["latent", "higher_in", "auroc", "on_a", "on_b", "mean_a", "mean_b", "p", "q"]


def contrast(a: csr_matrix, b: csr_matrix) -> pd.DataFrame:
    """Every latent on in some text of `a` or `b` ([n_texts, width] pooled codes each), most separating
    first: its `higher_in` set ("A" or "B"), AUROC for A, share of texts on and mean value per set, p and q."""
    a, b = csr_matrix(a), csr_matrix(b)
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise SaefsError(f"a contrast needs texts in both sets; got {a.shape[0]} and {b.shape[0]}")
    if a.shape[1] != b.shape[1]:
        raise SaefsError(f"the two sets' codes are {a.shape[1]} and {b.shape[1]} latents wide: encode both with "
                         "the same SAE")
    both = vstack([a, b], format="csc")
    tested = np.flatnonzero(np.diff(both.indptr))
    u, p = np.empty(len(tested)), np.empty(len(tested))
    for start in range(0, len(tested), CHUNK):
        chunk = slice(start, start + CHUNK)
        values = both[:, tested[chunk]].toarray()
        u[chunk], p[chunk] = mannwhitneyu(values[: a.shape[0]], values[a.shape[0]:], axis=0, method="asymptotic")
    p = np.nan_to_num(p, nan=1.0)  # a latent equal in every text of both sets separates nothing
    auroc = u / (a.shape[0] * b.shape[0])
    table = pd.DataFrame({
        "latent": tested, "higher_in": np.where(auroc >= 0.5, "A", "B"), "auroc": auroc,
        "on_a": _share_on(a, tested), "on_b": _share_on(b, tested),
        "mean_a": _mean(a, tested), "mean_b": _mean(b, tested),
        "p": p, "q": false_discovery_control(p) if len(p) else p}, columns=COLUMNS)
    table["separation"] = (table["auroc"] - 0.5).abs()
    return (table.sort_values(["separation", "q", "latent"], ascending=[False, True, True])
            .drop(columns="separation").reset_index(drop=True))


def _share_on(codes: csr_matrix, latents: np.ndarray) -> np.ndarray:
    return np.asarray((codes[:, latents] > 0).sum(axis=0)).ravel() / codes.shape[0]


def _mean(codes: csr_matrix, latents: np.ndarray) -> np.ndarray:
    return np.asarray(codes[:, latents].mean(axis=0)).ravel()
