"""Latent cards of several SAEs of one model from one forward over the card texts (features.core.cards)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from scipy.sparse import csr_matrix
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from features.core.cards import CardBuilder, CardSettings, CardText, logit_lens
from features.core.naming import parse_sae_name
from features.forward.extract import token_batches, tokenize
from features.sources.sae import encode


def build_cards(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, saes: Mapping[str, Any],
                texts: Sequence[tuple[str, str, str]], settings: CardSettings, *, max_tokens: int, batch_size: int,
                include_bos: bool = False, paper_compat: bool = False,
                progress: bool = True) -> dict[str, tuple[dict[int, dict[str, Any]], int]]:
    """Per SAE (named like `l9__sae4k`), its cards by latent id and the number of card tokens, over `texts`
    ((text_id, source, text) each): one truncated forward per batch captures every SAE layer."""
    tokenized = tokenize(tokenizer, [text for _, _, text in texts], max_tokens)
    layers = sorted({parse_sae_name(cell)[0] for cell in saes})
    builders = {cell: CardBuilder(int(sae.cfg.d_sae), settings) for cell, sae in saes.items()}
    for batch in token_batches(model, tokenizer, tokenized, layers, batch_size=batch_size, include_bos=include_bos,
                               paper_compat=paper_compat, progress=progress, desc="latent cards"):
        for cell, sae in saes.items():
            codes = encode(sae, batch.residuals[parse_sae_name(cell)[0]])
            builders[cell].add(csr_matrix(codes.float().cpu().numpy()), batch.texts, batch.positions, batch.token_ids)
    card_texts = [CardText(text_id, source, tokenized.ids[i]) for i, (text_id, source, _) in enumerate(texts)]
    decode = lru_cache(maxsize=None)(lambda token: tokenizer.decode([token]))
    unembed = model.get_output_embeddings().weight.detach().cpu()
    # Building the cards (contexts, densities, logit lens) takes longer than the forward: a bar of its own.
    return {cell: (builders[cell].cards(card_texts, decode,
                                        logit_lens(sae.W_dec.detach().cpu(), unembed, settings.logit_tokens)),
                   builders[cell].n_tokens)
            for cell, sae in tqdm(saes.items(), desc="card contents", unit="SAE", disable=not progress)}
