"""Shortcut audit: which latents a probe leans on fire on a text's surface rather than its content.

A latent is flagged by any of four deterministic rules, each read off evidence a reviewer can check:

  * surface tokens (card): at least SURFACE_SHARE of its context peaks (the token where each top and each
    random context of its card peaks; the two sets weigh equally, so ten top contexts do not drown five
    random ones) are surface tokens by `token_kind`: punctuation or symbols, numbers, URL parts, @mentions
    and #hashtags, words in capitals, whitespace, markup (special tokens, HTML tags). The finding names the
    commonest kind.
  * length (card and cell): it fires on more than the SAE's dense share of card tokens and the probe pools
    by sum or top-n counts, so its pooled value mostly counts the text's tokens.
  * boilerplate (card): at least BOILERPLATE_SHARE of its top contexts, from at least BOILERPLATE_TEXTS
    different texts, show the same BOILERPLATE_SPAN tokens either side of the peak: a template repeated
    verbatim (a licence header, a signature, a source's tag), not wording.
  * class marker (the probe's training texts): it is on in the probe's input for at least MARKER_COVERAGE
    of one class's training texts, and that class holds at least MARKER_PURITY of the training texts it
    is on in (MARKER_MIN_TEXTS at least). One feature that nearly decides the label on its own is more often
    an artefact of how the data was collected (a planted token, a source's footer) than of what the texts
    say (Gardner et al. 2021, "Competency problems"); the reviewer reads its card to tell.

`audit` then weighs the findings by the probe's weights: the share of its absolute weight (coefficients on
the scaled input, comparable across latents) that sits on flagged latents, per kind and in all.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from features.core.pooling import pooling_top_n

SURFACE_SHARE = 0.6
BOILERPLATE_SPAN, BOILERPLATE_SHARE, BOILERPLATE_TEXTS = 2, 0.5, 3
MARKER_COVERAGE, MARKER_PURITY, MARKER_MIN_TEXTS = 0.5, 0.98, 10
LISTED = 10  # flagged latents an audit lists with their reasons, most weighted first

_URL = re.compile(r"^(https?|www)\b|://|\.(com|org|net|co|uk|ly|html?)$|^(com|org|net|html?)$")
_MARKUP = re.compile(r"<[^<>\s]+>")
KINDS = {"punctuation": "punctuation or symbols", "number": "numbers", "url": "URL parts",
         "mention": "@mentions or #hashtags", "capitals": "words in capitals", "whitespace": "whitespace",
         "markup": "markup or special tokens", "length": "length", "boilerplate": "boilerplate",
         "class marker": "a class marker"}


@dataclass(frozen=True)
class Finding:
    kind: str  # a key of KINDS
    reason: str  # one line a reviewer can check against the card


@dataclass(frozen=True)
class ClassFirings:
    """Per class, in how many of its training texts each latent is on in the probe's input."""

    names: Sequence[str]  # class names, in label order
    sizes: np.ndarray  # [n_classes] training texts per class
    counts: np.ndarray  # [n_classes, width] texts of the class the latent is on in


def class_firings(inputs: csr_matrix, labels: Sequence[int], names: Sequence[str]) -> ClassFirings:
    """`inputs` [n_texts, width]: the probe's input on its training texts; `labels` their class positions."""
    on = (csr_matrix(inputs) > 0).astype(np.int64)
    classes = np.asarray(labels)
    sizes = np.array([(classes == c).sum() for c in range(len(names))])
    counts = np.vstack([np.asarray(on[classes == c].sum(axis=0)).ravel() for c in range(len(names))])
    return ClassFirings(list(names), sizes, counts)


def token_kind(token: str, before: str = "") -> str | None:
    """The surface kind of a token string (`before`: the token before it, for mentions); None for a word."""
    stripped = token.strip()
    if not stripped:
        return "whitespace"
    if _MARKUP.fullmatch(stripped):
        return "markup"
    if _URL.search(stripped.lower()):
        return "url"
    if (stripped[0] in "@#" and len(stripped) > 1) or (before.rstrip()[-1:] in ("@", "#") and token[:1].isalnum()):
        return "mention"
    if all(unicodedata.category(char)[0] in "PS" for char in stripped):
        return "punctuation"
    if any(char.isdigit() for char in stripped) and not any(char.isalpha() for char in stripped):
        return "number"
    if stripped.isupper() and sum(char.isalpha() for char in stripped) >= 2:
        return "capitals"
    return None


def surface_finding(card: Mapping[str, Any]) -> Finding | None:
    peaks = {name: [_peak(context) for context in card.get(f"{name}_contexts", [])] for name in ("top", "random")}
    shares = [np.mean([kind is not None for _, kind in found]) for found in peaks.values() if found]
    if not shares or np.mean(shares) < SURFACE_SHARE:
        return None
    surface = [(token, kind) for found in peaks.values() for token, kind in found if kind is not None]
    kind = Counter(kind for _, kind in surface).most_common(1)[0][0]
    examples = ", ".join(repr(token) for token, _ in Counter(surface).most_common(3))
    return Finding(kind, f"fires on surface tokens: {np.mean(shares):.0%} of its context peaks, mostly "
                         f"{KINDS[kind]} ({examples})")


def length_finding(card: Mapping[str, Any], pooling: str, dense_density: float) -> Finding | None:
    if card.get("density", 0.0) <= dense_density or not (pooling == "sum" or pooling_top_n(pooling)):
        return None
    return Finding("length", f"fires on {card['density']:.0%} of card tokens, so its {pooling}-pooled value "
                             "mostly counts the text's tokens")


def boilerplate_finding(card: Mapping[str, Any]) -> Finding | None:
    top = card.get("top_contexts", [])
    spans: dict[tuple[str, ...], set[str]] = {}
    for context in top:
        peak = context["peak"]
        spans.setdefault(tuple(context["tokens"][max(0, peak - BOILERPLATE_SPAN):peak + BOILERPLATE_SPAN + 1]),
                         set()).add(context["text_id"])
    if not spans:
        return None
    span, texts = max(spans.items(), key=lambda item: (len(item[1]), item[0]))
    if len(texts) < BOILERPLATE_TEXTS or len(texts) < BOILERPLATE_SHARE * len(top):
        return None
    return Finding("boilerplate", f"{len(texts)} of its {len(top)} top contexts, each from another text, read "
                                  f"{''.join(span)!r} around the peak: a repeated template")


def marker_finding(firings: ClassFirings, latent: int) -> Finding | None:
    counts = firings.counts[:, latent]
    if counts.sum() < MARKER_MIN_TEXTS:
        return None
    c = int(np.argmax(counts / np.maximum(firings.sizes, 1)))
    coverage, purity = counts[c] / max(firings.sizes[c], 1), counts[c] / counts.sum()
    if coverage < MARKER_COVERAGE or purity < MARKER_PURITY:
        return None
    return Finding("class marker", f"on in {coverage:.0%} of class {firings.names[c]!r}'s training texts, and "
                                   f"{purity:.0%} of the {counts.sum()} it is on in are that class: a single "
                                   "feature this clean is more often a collection artefact than content")


def audit_latent(latent: int, card: Mapping[str, Any] | None, firings: ClassFirings | None, *, pooling: str,
                 dense_density: float) -> list[Finding]:
    """Every rule's finding on one latent; card rules need its card, the class marker the training firings."""
    found = [] if card is None else [surface_finding(card), length_finding(card, pooling, dense_density),
                                     boilerplate_finding(card)]
    found.append(None if firings is None else marker_finding(firings, latent))
    return [finding for finding in found if finding is not None]


def audit(weights: Sequence[tuple[int, float]], findings: Mapping[int, Sequence[Finding]],
          labels: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The share of the probe's absolute weight on flagged latents, in all and per kind, and the LISTED most
    weighted flagged latents with their findings. `weights`: (latent, weight) of every latent it weighs."""
    total = sum(abs(weight) for _, weight in weights) or 1.0
    flagged = [(latent, weight) for latent, weight in weights if findings.get(latent)]
    by_kind: dict[str, float] = {}
    for latent, weight in flagged:
        for kind in {finding.kind for finding in findings[latent]}:
            by_kind[kind] = by_kind.get(kind, 0.0) + abs(weight) / total
    listed = sorted(flagged, key=lambda item: -abs(item[1]))[:LISTED]
    return {"latents": len(weights), "flagged": len(flagged),
            "flagged_weight_share": round(sum(abs(weight) for _, weight in flagged) / total, 4),
            "weight_share_by_kind": {kind: round(share, 4) for kind, share in sorted(by_kind.items())},
            "flagged_latents": [{"latent": latent, "weight": round(weight, 4),
                                 **({"label": labels[latent]} if labels and latent in labels else {}),
                                 "findings": [asdict(finding) for finding in findings[latent]]}
                                for latent, weight in listed]}


def _peak(context: Mapping[str, Any]) -> tuple[str, str | None]:
    tokens, peak = context["tokens"], context["peak"]
    return tokens[peak], token_kind(tokens[peak], tokens[peak - 1] if peak else "")
