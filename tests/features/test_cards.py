"""Latent cards: a latent planted to fire on one token gets a card that names it, and cards are read by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix

from features.core.cards import NEVER_FIRED, CardBuilder, CardSettings, CardText, logit_lens
from features.forward.cards import build_cards
from features.stores.cards import CardStore, UnknownLatent, write_cards
from features.stores.files import atomic_path
from tests.features.tiny import HIDDEN, make_jumprelu_sae, make_model, make_texts, make_tokenizer

D_SAE, VOCAB, PLANTED, TOKEN, DEAD = 16, 50, 3, 7, 15
WORDS = [f"w{i}" for i in range(VOCAB)]


def planted(seed: int = 0, n_texts: int = 40, length: int = 20) -> tuple[list[CardText], CardBuilder]:
    """Texts of random tokens; latent PLANTED fires (4 + noise) on every TOKEN and nowhere else, latents
    0..9 fire at random (below 1), DEAD never; added in two batches."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, VOCAB, length).tolist() for _ in range(n_texts)]
    texts = [CardText(f"t{i}", "corpus" if i % 2 else "toxic", row) for i, row in enumerate(ids)]
    builder = CardBuilder(D_SAE, CardSettings(top_contexts=4, random_contexts=3, window=2, label_tokens=2,
                                              min_count=2, logit_tokens=3, seed=1))
    for half in (range(0, n_texts // 2), range(n_texts // 2, n_texts)):
        rows = [(t, p, tok) for t in half for p, tok in enumerate(ids[t])]
        text, pos, tok = (np.array(column) for column in zip(*rows, strict=True))
        codes = np.where(rng.random((len(rows), 10)) < 0.2, rng.random((len(rows), 10)), 0.0)
        codes = np.hstack([codes, np.zeros((len(rows), D_SAE - 10))])
        codes[:, PLANTED] = np.where(tok == TOKEN, 4 + rng.random(len(rows)), 0.0)
        builder.add(csr_matrix(codes), text, pos, tok)
    return texts, builder


def test_a_planted_latents_card_names_its_token_shows_it_in_every_context_and_marks_it() -> None:
    texts, builder = planted()
    unembed = torch.randn(VOCAB, 6)
    w_dec = torch.randn(D_SAE, 6)
    w_dec[PLANTED] = unembed[11] * 5  # its decoder direction is token 11's unembedding
    cards = builder.cards(texts, WORDS.__getitem__, logit_lens(w_dec, unembed, 3, latent_chunk=4, vocab_chunk=8))
    card = cards[PLANTED]
    occurrences = sum(row.count(TOKEN) for row in (t.token_ids for t in texts))
    assert card["fires"] == occurrences and card["density"] == pytest.approx(occurrences / builder.n_tokens)
    assert card["label_tokens"][0] == {"token": f"w{TOKEN}", "precision": 1.0, "share": 1.0}
    assert card["label"].startswith(repr(f"w{TOKEN}"))
    assert card["logit_lens"]["promotes"][0] == "w11"
    for context in card["top_contexts"] + card["random_contexts"]:
        assert context["tokens"][context["peak"]] == f"w{TOKEN}"
        marked = [token for token, value in zip(context["tokens"], context["activations"], strict=True) if value > 0]
        assert marked and set(marked) == {f"w{TOKEN}"}  # every firing token of the window is marked, no other
    peaks = [context["activations"][context["peak"]] for context in card["top_contexts"]]
    assert len(peaks) == 4 and peaks == sorted(peaks, reverse=True)
    assert peaks[0] == pytest.approx(card["max_activation"], abs=1e-3)
    assert DEAD not in cards


def test_random_contexts_do_not_depend_on_batch_order() -> None:
    texts, builder = planted(seed=4)
    again = CardBuilder(D_SAE, builder.settings)
    for part in reversed(builder._parts):  # the same firings, added in the other order
        latents, text, pos, values, tokens = part
        codes = csr_matrix((values, (np.arange(len(values)), latents)), shape=(len(values), D_SAE))
        again.add(codes, text, pos, tokens)
    again.n_tokens, again._token_counts = builder.n_tokens, builder._token_counts
    first, second = builder.cards(texts, WORDS.__getitem__), again.cards(texts, WORDS.__getitem__)
    assert [c["text_id"] for c in first[PLANTED]["random_contexts"]] == \
           [c["text_id"] for c in second[PLANTED]["random_contexts"]]


def test_cards_are_read_by_id_a_dead_latent_says_so_and_an_unknown_id_is_named(tmp_path: Path) -> None:
    texts, builder = planted()
    cards = builder.cards(texts, WORDS.__getitem__)
    write_cards(tmp_path / "l1__sae16", cards, D_SAE, {"n_tokens": builder.n_tokens})
    store = CardStore(tmp_path / "l1__sae16")
    assert store.card(PLANTED) == cards[PLANTED]
    dead = store.card(DEAD)
    assert dead["fires"] == 0 and dead["label"] == NEVER_FIRED and dead["n_tokens"] == builder.n_tokens
    with pytest.raises(UnknownLatent, match="latent 16 is not in SAE l1__sae16: its ids run 0 to 15"):
        store.card(D_SAE)
    with pytest.raises(UnknownLatent, match="run `dvc repro latent_cards`"):
        CardStore(tmp_path / "missing")
    assert "neuronpedia" not in store.card(PLANTED)  # a locally trained SAE has no public page
    public = "gemma-2-2b/20-gemmascope-res-16k"  # sae-lens' neuronpedia id of a Gemma Scope SAE
    write_cards(tmp_path / "public", cards, D_SAE, {"n_tokens": builder.n_tokens, "neuronpedia_id": public})
    for latent in (PLANTED, DEAD):
        assert CardStore(tmp_path / "public").card(latent)["neuronpedia"] == \
            f"https://www.neuronpedia.org/{public}/{latent}"


def test_an_open_store_reads_the_new_cards_after_a_rebuild_swapped_its_folder(tmp_path: Path) -> None:
    texts, builder = planted()
    cards = builder.cards(texts, WORDS.__getitem__)
    folder = tmp_path / "l1__sae16"
    write_cards(folder, cards, D_SAE, {"n_tokens": builder.n_tokens})
    store = CardStore(folder)
    assert store.card(PLANTED)["fires"] == cards[PLANTED]["fires"]
    rebuilt = {PLANTED: cards[PLANTED] | {"fires": 1, "label": "rebuilt"}}  # one card only: other offsets
    with atomic_path(folder) as tmp:
        write_cards(tmp, rebuilt, D_SAE, {"n_tokens": 5})
    assert store.card(PLANTED)["label"] == "rebuilt" and store.card(0)["label"] == NEVER_FIRED


def test_a_latent_planted_in_a_tiny_models_sae_is_named_by_its_token_and_promotes_its_decoder_token() -> None:
    """Layer 0's block input (paper_compat) is the scaled token embedding, context-free: a latent whose encoder
    reads one token's embedding, behind a threshold, fires on that token alone."""
    model, tokenizer = make_model("gemma3", n_layers=2), make_tokenizer()
    sae = make_jumprelu_sae(HIDDEN, D_SAE)
    target, promoted = tokenizer.convert_tokens_to_ids(["w7", "w9"])
    with torch.no_grad():
        direction = model.get_input_embeddings()(torch.tensor([target]))[0]
        sae.W_enc[:, PLANTED] = direction / direction.norm() ** 2  # 1.0 on the token, about 0 elsewhere
        sae.b_enc[PLANTED], sae.threshold[PLANTED] = 0.0, 0.8
        sae.W_dec[PLANTED] = model.get_output_embeddings().weight[promoted]
    raw = make_texts([10] * 30, seed=2) + ["w1 w7 w3", "w7 w2 w5 w7"]
    texts = [(f"t{i}", "corpus", text) for i, text in enumerate(raw)]
    built = build_cards(model, tokenizer, {"l0__sae16": sae}, texts, CardSettings(top_contexts=5, window=2),
                        max_tokens=16, batch_size=8, paper_compat=True, progress=False)
    card = built["l0__sae16"][0][PLANTED]
    assert card["label_tokens"][0] == {"token": "w7", "precision": 1.0, "share": 1.0}
    assert card["label"].startswith("'w7'")
    assert all(context["tokens"][context["peak"]] == "w7" for context in card["top_contexts"])
    assert card["logit_lens"]["promotes"][0] == "w9"


@pytest.mark.parametrize(("latent_chunk", "vocab_chunk"), [(8, 16), (64, 7), (1, 1000)])
def test_the_logit_lens_in_blocks_finds_each_rows_top_and_bottom_tokens(latent_chunk: int, vocab_chunk: int) -> None:
    """Blocks that divide neither the latents nor the vocabulary, a block narrower than n, one block: the merged
    ids are those of the whole row, in order."""
    generator = torch.Generator().manual_seed(0)
    w_dec, unembed = torch.randn(37, 6, generator=generator), torch.randn(101, 6, generator=generator)
    logits = w_dec @ unembed.T
    promoted, suppressed = logit_lens(w_dec, unembed, 5, latent_chunk=latent_chunk, vocab_chunk=vocab_chunk)
    np.testing.assert_array_equal(promoted, logits.topk(5, dim=1).indices.numpy())
    np.testing.assert_array_equal(suppressed, logits.topk(5, dim=1, largest=False).indices.numpy())
