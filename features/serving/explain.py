"""Where in a text a decision's latents fire: each token of the text with the per-token activation of the latents
behind its score (the pooled value a probe reads is made of these), for the scoring page's shading."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from features.forward.extract import token_batches, tokenize
from features.forward.settings import ExtractSettings
from features.sources.sae import encode


@dataclass(frozen=True)
class TokenActivations:
    tokens: list[str]  # the counted tokens the model read (truncated as when scoring); joined, they read as the text
    activations: dict[int, list[float]]  # latent id -> its activation at each of those tokens


def token_activations(lm: Any, tokenizer: Any, sae: Any, layer: int, text: str, latents: Sequence[int],
                      settings: ExtractSettings) -> TokenActivations:
    """The per-token codes of `latents` for `text`, from the same truncated forward and tokens as its score."""
    tokenized = tokenize(tokenizer, [text], settings.max_tokens)
    [batch] = token_batches(lm, tokenizer, tokenized, [layer], batch_size=1, include_bos=settings.pools_bos,
                            paper_compat=settings.paper_compat, progress=False)
    codes = encode(sae, batch.residuals[layer]).float().cpu().numpy()
    return TokenActivations(token_pieces(tokenizer, batch.token_ids.tolist()),
                            {int(latent): codes[:, latent].round(4).tolist() for latent in latents})


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's piece of the decoded text, spaces included: what decoding it adds to the tokens before it
    (decoding a token alone drops the space a word-level or SentencePiece tokenizer puts before it)."""
    pieces, before = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(list(ids[:end]))
        pieces.append(text[len(before):] if text.startswith(before) else tokenizer.decode([ids[end - 1]]))
        before = text
    return pieces
