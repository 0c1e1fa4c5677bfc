"""Shortcut audit: a planted shortcut is flagged, content is not, and each card rule fires on its own evidence."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from features.core.cards import CardSettings
from features.core.probes import influential_latents, make_probe
from features.core.shortcuts import audit, audit_latent, class_firings, token_kind
from features.forward.cards import build_cards
from features.forward.extract import extract
from features.stores.feast.columns import IDS, VALUES, sparse_columns
from tests.features.tiny import HIDDEN, make_jumprelu_sae, make_model, make_tokenizer

D_SAE, SHORTCUT, CONTENT = 16, 3, 5
ARTIFICIAL, CONTENT_WORD = "w7", "w20"  # the token planted in every positive text; a word both classes use


@pytest.mark.parametrize(("token", "before", "kind"), [
    (" .", "", "punctuation"), ("!!", "", "punctuation"), ("😂", "", "punctuation"), (" 2014", "", "number"),
    ("2.0", "", "number"), (" http", "", "url"), (".com", "", "url"), ("user", " @", "mention"),
    (" #blessed", "", "mention"), (" FREE", "", "capitals"), ("\n\n", "", "whitespace"), ("<bos>", "", "markup"),
    (" Free", "", None), (" awww", "", None), (" I", "", None), (" user", " the", None), ("w7", "", None)])
def test_token_kinds(token: str, before: str, kind: str | None) -> None:
    assert token_kind(token, before) == kind


def context(tokens: list[str], peak: int, text_id: str) -> dict[str, Any]:
    return {"text_id": text_id, "source": "spam", "peak": peak, "tokens": tokens,
            "activations": [1.0 if i == peak else 0.0 for i in range(len(tokens))]}


def card(peaks: list[str], randoms: list[str], density: float = 0.01) -> dict[str, Any]:
    """A card whose contexts peak on `peaks` (top) and `randoms` (random), each in its own text and words."""
    return {"density": density,
            "top_contexts": [context([f" w{i}", token, f" x{i}"], 1, f"t{i}") for i, token in enumerate(peaks)],
            "random_contexts": [context([f" y{i}", token], 1, f"r{i}") for i, token in enumerate(randoms)]}


def kinds(found: list) -> list[str]:
    return [finding.kind for finding in found]


def test_each_card_rule_flags_its_surface_feature_and_spares_words() -> None:
    rules = {"pooling": "sum", "dense_density": 0.1}
    words = [" cheap", " offer", " prize", " win"]
    assert audit_latent(0, card(words * 2, words), None, **rules) == []
    punctuation = card([" !", "!!", " ?", " cheap", "!", " !"], [" !", "?", " offer"])
    assert kinds(audit_latent(0, punctuation, None, **rules)) == ["punctuation"]
    # mostly words at the top, mostly punctuation at random: the random sample weighs as much as the top
    assert kinds(audit_latent(0, card(words * 2, [" !", "?", ".", " win"]), None, **rules)) == []
    assert kinds(audit_latent(0, card(words[:3] + [" !"] * 3, [" .", "?", "!"]), None, **rules)) == ["punctuation"]
    dense = card(words, words, density=0.3)
    assert kinds(audit_latent(0, dense, None, **rules)) == ["length"]
    assert kinds(audit_latent(0, dense, None, pooling="top20", dense_density=0.1)) == ["length"]
    assert audit_latent(0, dense, None, pooling="mean", dense_density=0.1) == []  # a mean does not count tokens
    template = " Sent from my iPhone now".split(" ")
    boiler = {"density": 0.01, "random_contexts": [],
              "top_contexts": [context(template, 3, f"t{i}") for i in range(4)]
              + [context([" hi", word, " there"], 1, "u") for word in words]}
    [finding] = audit_latent(0, boiler, None, **rules)
    assert finding.kind == "boilerplate" and "4 of its 8 top contexts" in finding.reason
    same_text = boiler | {"top_contexts": [context(template, 3, "t0") for _ in range(4)]}
    assert audit_latent(0, same_text, None, **rules) == []  # one text seen four times is no template


def planted_texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Random words; every positive text ends with ARTIFICIAL, and CONTENT_WORD is in 70% of positives and
    25% of negatives (a real but imperfect cue)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    texts = []
    for label in labels:
        words = [f"w{w}" for w in rng.integers(30, 200, 8)]
        if rng.random() < (0.7 if label else 0.25):
            words.insert(int(rng.integers(0, 8)), CONTENT_WORD)
        texts.append(" ".join(words + ([ARTIFICIAL] if label else [])))
    return texts, labels


def plant(model: Any, sae: Any, latent: int, token: int) -> None:
    """Layer 0's block input (paper_compat) is the scaled token embedding: `latent` reads `token`'s alone."""
    with torch.no_grad():
        direction = model.get_input_embeddings()(torch.tensor([token]))[0]
        sae.W_enc[:, latent] = direction / direction.norm() ** 2  # 1.0 on the token, about 0 elsewhere
        sae.b_enc[latent], sae.threshold[latent] = 0.0, 0.8


def test_a_planted_shortcut_is_flagged_as_a_class_marker_and_a_content_latent_is_not() -> None:
    """A dataset whose positive class carries an artificial token: a tiny model's SAE has one latent on that token
    and one on a content word; the probe on its pooled codes leans on the first, and the audit flags it alone."""
    model, tokenizer = make_model("gemma3", n_layers=2), make_tokenizer()
    sae = make_jumprelu_sae(HIDDEN, D_SAE)
    for latent, word in ((SHORTCUT, ARTIFICIAL), (CONTENT, CONTENT_WORD)):
        plant(model, sae, latent, tokenizer.convert_tokens_to_ids(word))
    texts, labels = planted_texts(120, seed=3)
    codes = extract(model, tokenizer, texts, [0], {0: {"16": sae}}, ["sum"], max_tokens=16, batch_size=32,
                    paper_compat=True, progress=False).codes[0, "16", "sum"]
    ids, values = sparse_columns(codes)
    frame = pd.DataFrame({IDS: ids.to_pylist(), VALUES: values.to_pylist()})
    probe = make_probe("logreg", width=D_SAE, C_grid=(1.0,), cv=3).fit(frame, labels)
    weights = influential_latents(probe, D_SAE)
    assert weights[0][0] == SHORTCUT  # the probe leans on the shortcut most
    built = build_cards(model, tokenizer, {"l0__sae16": sae}, [(f"t{i}", "planted", t) for i, t in enumerate(texts)],
                        CardSettings(top_contexts=5), max_tokens=16, batch_size=32, paper_compat=True,
                        progress=False)
    cards = built["l0__sae16"][0]
    assert cards[SHORTCUT]["label"].startswith(repr(ARTIFICIAL)) and cards[CONTENT]["label"].startswith(
        repr(CONTENT_WORD))
    firings = class_firings(probe[:-1].transform(frame), labels, ["ham", "spam"])
    findings = {latent: audit_latent(latent, cards.get(latent), firings, pooling="sum", dense_density=0.1)
                for latent, _ in weights}
    assert kinds(findings[SHORTCUT]) == ["class marker"]
    assert "class 'spam'" in findings[SHORTCUT][0].reason and "100%" in findings[SHORTCUT][0].reason
    assert findings[CONTENT] == []
    summary = audit(weights, findings, {latent: card["label"] for latent, card in cards.items()})
    shortcut_weight = abs(dict(weights)[SHORTCUT])
    assert summary["flagged_latents"][0]["latent"] == SHORTCUT
    assert CONTENT not in [entry["latent"] for entry in summary["flagged_latents"]]
    assert summary["weight_share_by_kind"]["class marker"] == pytest.approx(
        shortcut_weight / sum(abs(w) for _, w in weights), abs=1e-4)
    assert summary["flagged_weight_share"] >= summary["weight_share_by_kind"]["class marker"]


def test_the_audit_weighs_flagged_latents_by_absolute_weight() -> None:
    from features.core.shortcuts import Finding

    findings = {1: [Finding("number", "digits")], 2: [], 3: [Finding("number", "d"), Finding("length", "dense")]}
    summary = audit([(1, -3.0), (2, 5.0), (3, 2.0)], findings, {1: "'1'"})
    assert summary["flagged_weight_share"] == 0.5 and summary["latents"] == 3 and summary["flagged"] == 2
    assert summary["weight_share_by_kind"] == {"length": 0.2, "number": 0.5}
    assert [entry["latent"] for entry in summary["flagged_latents"]] == [1, 3]
    assert summary["flagged_latents"][0]["label"] == "'1'" and "label" not in summary["flagged_latents"][1]
