"""Latent cards: what a person reads to check an SAE latent, built from its firings on a set of texts.

A card holds, for one latent: its activation density (share of card tokens it fires on); its top
activating contexts (a window of tokens around the peak, with the latent's activation at each token
of the window, so every firing token is marked); a few random firing contexts beside them (top
examples alone overstate how clean a latent is); the tokens its decoder direction promotes and
suppresses through the unembedding (logit lens); and a short label.

The label is deterministic: the latent's most characteristic firing tokens, ranked by
precision x share, where precision is the fraction of a token's occurrences on which the latent
fires and share the fraction of the latent's firings that land on that token. A token that the
latent fires on every time it appears, and that makes up most of its firings, ranks first; a
frequent token it fires on by chance ranks low. Tokens seen fewer than `min_count` times in its
firings are not candidates. When no token qualifies, the label is what the latent promotes.

`CardBuilder` takes per-token codes batch by batch and keeps every firing (latent, text, position,
activation): about k firings per token for a TopK SAE, a few megabytes per 10,000 tokens. Random
contexts are a bottom-k sample by a seeded hash of (latent, text, position), so the sample does not
depend on batch order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.sparse import csr_matrix

from features.errors import SaefsError

if TYPE_CHECKING:
    from torch import Tensor

NEVER_FIRED = "never fired on the card texts"
FIRING_DTYPES = (np.int32, np.int64, np.int32, np.float32, np.int64)  # a firing: latent, text, position, value, token


@dataclass(frozen=True)
class CardSettings:
    top_contexts: int = 10
    random_contexts: int = 5
    window: int = 8  # tokens each side of the peak
    label_tokens: int = 3
    min_count: int = 2
    logit_tokens: int = 10
    seed: int = 0


@dataclass(frozen=True)
class CardText:
    """A text the cards were built on: where it comes from, and its token ids (as the forward saw them)."""

    text_id: str
    source: str  # "corpus" or a dataset name
    token_ids: Sequence[int]


class CardBuilder:
    """Accumulates one SAE's firings over batches of tokens; `cards` turns them into card dicts."""

    def __init__(self, d_sae: int, settings: CardSettings) -> None:
        self.d_sae, self.settings = d_sae, settings
        self.n_tokens = 0
        self._token_counts: dict[int, int] = {}
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, codes: csr_matrix, texts: np.ndarray, positions: np.ndarray, token_ids: np.ndarray) -> None:
        """`codes` [n_tokens, d_sae] (CSR, zeros not stored) of tokens at (`texts`, `positions`) with `token_ids`."""
        codes = csr_matrix(codes)
        if codes.shape[1] != self.d_sae or not (codes.shape[0] == len(texts) == len(positions) == len(token_ids)):
            raise SaefsError(f"codes {codes.shape} do not match d_sae {self.d_sae} and {len(texts)} tokens")
        rows = np.repeat(np.arange(codes.shape[0]), np.diff(codes.indptr))
        fired = codes.data > 0
        rows, latents, values = rows[fired], codes.indices[fired], codes.data[fired]
        firing = (latents, np.asarray(texts)[rows], np.asarray(positions)[rows], values, np.asarray(token_ids)[rows])
        self._parts.append(tuple(column.astype(dtype) for column, dtype in zip(firing, FIRING_DTYPES, strict=True)))
        ids, counts = np.unique(np.asarray(token_ids, dtype=np.int64), return_counts=True)
        for token, count in zip(ids.tolist(), counts.tolist(), strict=True):
            self._token_counts[token] = self._token_counts.get(token, 0) + count
        self.n_tokens += len(token_ids)

    def cards(self, texts: Sequence[CardText], decode: Callable[[int], str],
              logit_lens: tuple[np.ndarray, np.ndarray] | None = None) -> dict[int, dict[str, Any]]:
        """A card per latent that fired, by latent id. `texts[i]` is text i of `add`; `decode` maps a token id
        to its string; `logit_lens` is (promoted, suppressed) token ids [d_sae, n] (see `logit_lens`)."""
        s = self.settings
        kept = self._parts or [tuple(np.zeros(0, dtype) for dtype in FIRING_DTYPES)]
        latents, text, pos, values, tokens = (np.concatenate(column) for column in zip(*kept, strict=True))
        max_len = max((len(t.token_ids) for t in texts), default=1) + 1
        keys = text * max_len + pos  # a token's place, ordered by text then position
        order = np.lexsort((keys, latents))  # by latent, then place
        latents, keys, text, pos, values, tokens = (a[order] for a in (latents, keys, text, pos, values, tokens))
        starts = np.searchsorted(latents, np.arange(self.d_sae + 1))
        priority = _seeded_hash(latents.astype(np.int64), keys, s.seed)
        out = {}
        for latent in np.flatnonzero(np.diff(starts)):
            lo, hi = starts[latent], starts[latent + 1]
            segment = slice(lo, hi)
            top = lo + np.lexsort((keys[segment], -values[segment]))[: s.top_contexts]
            sample = lo + np.argsort(priority[segment], kind="stable")[: s.random_contexts]

            def context(i: int, lo: int = lo, hi: int = hi) -> dict[str, Any]:
                return _context(texts[text[i]], int(pos[i]), keys[lo:hi], values[lo:hi], int(text[i]) * max_len,
                                s.window, decode)

            card = {"latent": int(latent), "fires": int(hi - lo), "density": (hi - lo) / max(self.n_tokens, 1),
                    "max_activation": float(values[segment].max()),
                    "label_tokens": self._label_tokens(tokens[segment], decode),
                    "top_contexts": [context(int(i)) for i in top],
                    "random_contexts": [context(int(i)) for i in sample]}
            if logit_lens is not None:
                card["logit_lens"] = {"promotes": [decode(int(t)) for t in logit_lens[0][latent]],
                                      "suppresses": [decode(int(t)) for t in logit_lens[1][latent]]}
            card["label"] = label(card)
            out[int(latent)] = card
        return out

    def _label_tokens(self, tokens: np.ndarray, decode: Callable[[int], str]) -> list[dict[str, Any]]:
        ids, counts = np.unique(tokens, return_counts=True)
        keep = counts >= self.settings.min_count
        ids, counts = ids[keep], counts[keep]
        precision = counts / np.array([self._token_counts[int(t)] for t in ids], dtype=float)
        share = counts / len(tokens)
        best = np.lexsort((ids, -(precision * share)))[: self.settings.label_tokens]
        return [{"token": decode(int(ids[i])), "precision": round(float(precision[i]), 4),
                 "share": round(float(share[i]), 4)} for i in best]


def label(card: dict[str, Any]) -> str:
    """The card's short label: its characteristic firing tokens, else what it promotes (see the module doc)."""
    if not card.get("fires"):
        return NEVER_FIRED
    if card["label_tokens"]:
        return " / ".join(repr(entry["token"]) for entry in card["label_tokens"])
    promotes = card.get("logit_lens", {}).get("promotes", [])[:3]
    return "promotes " + ", ".join(repr(token) for token in promotes) if promotes else "no single token"


def dead_card(latent: int, n_tokens: int) -> dict[str, Any]:
    return {"latent": latent, "fires": 0, "density": 0.0, "label": NEVER_FIRED, "n_tokens": n_tokens,
            "top_contexts": [], "random_contexts": [], "label_tokens": []}


def logit_lens(w_dec: Any, w_unembed: Any, n: int, latent_chunk: int = 4096,
               vocab_chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Token ids each latent's decoder direction most promotes and suppresses through the unembedding:
    top and bottom `n` of W_dec[latent] @ W_U^T, [d_sae, n] each (torch tensors in).

    Computed a block of latents by a block of the vocabulary at a time, keeping each block's top and bottom `n`
    and picking the best `n` of those (they are the whole row's): a d_sae x vocab matrix
    never exists, and on Gemma 3's 262k-token vocabulary blocks of 8,192 tokens ran its 4k SAEs' lenses 1.25 to 1.6
    times as fast as whole rows of logits, 256 latents at a time (benchmarks/latent_cards.py), with the same ids."""
    import torch

    promoted, suppressed = [], []
    with torch.inference_mode():
        for start in range(0, w_dec.shape[0], latent_chunk):
            directions = w_dec[start:start + latent_chunk].float()
            tops, bottoms = [], []  # per vocabulary block, its n highest and n lowest logits: (values, token ids)
            for first in range(0, w_unembed.shape[0], vocab_chunk):
                logits = directions @ w_unembed[first:first + vocab_chunk].float().T
                k = min(n, logits.shape[1])
                tops.append(_offset(logits.topk(k, dim=1), first))
                bottoms.append(_offset(logits.topk(k, dim=1, largest=False), first))
            promoted.append(_best_ids(tops, n, largest=True))
            suppressed.append(_best_ids(bottoms, n, largest=False))
    return np.concatenate(promoted), np.concatenate(suppressed)


def _offset(picked: tuple[Tensor, Tensor], first: int) -> tuple[Tensor, Tensor]:
    """A block's (values, ids) with its ids counted from the vocabulary's start."""
    values, ids = picked
    return values, ids + first


def _best_ids(candidates: list[tuple[Tensor, Tensor]], n: int, largest: bool) -> np.ndarray:
    """The ids of the `n` highest (lowest) values among every block's candidates [latents, n]: the whole row's."""
    import torch

    values, ids = torch.cat([v for v, _ in candidates], 1), torch.cat([i for _, i in candidates], 1)
    return ids.gather(1, values.topk(n, dim=1, largest=largest).indices).numpy()


def _context(text: CardText, peak: int, keys: np.ndarray, values: np.ndarray, base: int, window: int,
             decode: Callable[[int], str]) -> dict[str, Any]:
    start, stop = max(0, peak - window), min(len(text.token_ids), peak + window + 1)
    activations = np.zeros(stop - start, dtype=np.float32)
    lo, hi = np.searchsorted(keys, [base + start, base + stop])
    activations[keys[lo:hi] - base - start] = values[lo:hi]
    return {"text_id": text.text_id, "source": text.source, "peak": peak - start,
            "tokens": [decode(int(t)) for t in text.token_ids[start:stop]],
            "activations": [round(float(a), 3) for a in activations]}


def _seeded_hash(latents: np.ndarray, keys: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per (latent, place), fixed by `seed` (splitmix64), for bottom-k sampling."""
    with np.errstate(over="ignore"):
        x = (latents.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ keys.astype(np.uint64) ^ np.uint64(seed)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
