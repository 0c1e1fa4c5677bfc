"""Latent cards on disk, read by latent id in well under a millisecond.

A folder per SAE: `cards.jsonl` (one JSON card per line, only latents that fired), `index.npy` (int64
[d_sae]: each latent's byte offset in cards.jsonl, -1 when it never fired) and `meta.json` (d_sae, card
tokens, texts, settings, and for a public SAE its Neuronpedia id, which links each card to its page there).
A lookup reads one line at the index's offset; a store rebuilt while it is open (latent_cards ran again) is
noticed by the file's inode, and its new index read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from features.core.cards import dead_card
from features.errors import SaefsError
from features.stores.files import write_json

CARDS, INDEX, META = "cards.jsonl", "index.npy", "meta.json"
NEURONPEDIA = "https://www.neuronpedia.org"


class UnknownLatent(SaefsError):
    """A latent id outside the SAE, or cards of an SAE that has none."""


def write_cards(folder: Path, cards: Mapping[int, dict[str, Any]], d_sae: int, meta: dict[str, Any]) -> None:
    """Write the cards of one SAE into `folder` (the caller makes the folder's swap atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = np.full(d_sae, -1, dtype=np.int64)
    with (folder / CARDS).open("wb") as handle:
        for latent in sorted(cards):
            index[latent] = handle.tell()
            handle.write(json.dumps(cards[latent], ensure_ascii=False).encode() + b"\n")
    np.save(folder / INDEX, index)
    write_json(folder / META, meta | {"d_sae": d_sae, "cards": len(cards)})


def open_cards(model_dir: Path, sae: str) -> CardStore:
    """The cards of SAE `sae` of the model whose cards are in `model_dir` (data/cards/<model>); an unknown
    model or SAE is named with the ones that have cards."""
    if not model_dir.is_dir():
        known = sorted(p.name for p in model_dir.parent.iterdir()) if model_dir.parent.is_dir() else []
        raise UnknownLatent(f"no latent cards for model {model_dir.name!r}; models with cards: {known} "
                            "(`dvc repro latent_cards` builds them)")
    if not (model_dir / sae).is_dir():
        raise UnknownLatent(f"model {model_dir.name!r} has no SAE {sae!r} with cards; its SAEs: "
                            f"{sorted(p.name for p in model_dir.iterdir())}")
    return CardStore(model_dir / sae)


def context_text(context: dict[str, Any]) -> str:
    """A context on one line, its peak token in guillemets: 'you are a «stupid» idiot'."""
    tokens = list(context["tokens"])
    tokens[context["peak"]] = f"«{tokens[context['peak']]}»"
    return "".join(tokens)


def card_summary(card: dict[str, Any], contexts: int = 3) -> dict[str, Any]:
    """What a decision shows of a card: its label, density and first `contexts` top contexts, one line each."""
    return {"label": card["label"], "density": card["density"],
            "contexts": [context_text(context) for context in card["top_contexts"][:contexts]]}


class CardStore:
    """The cards of one SAE: `card(latent)`, a dead latent's card saying so, an unknown id refused."""

    def __init__(self, folder: Path) -> None:
        if not (folder / INDEX).is_file():
            raise UnknownLatent(f"no latent cards in {folder}: run `dvc repro latent_cards`")
        self.folder = folder
        self._load()

    def _load(self) -> None:
        # cards.jsonl first: a rebuild swaps the folder whole, so an index read after it is at least as new
        self._cards_inode = (self.folder / CARDS).stat().st_ino
        self.meta = json.loads((self.folder / META).read_text())
        self._index = np.load(self.folder / INDEX)

    @property
    def d_sae(self) -> int:
        return len(self._index)

    def card(self, latent: int) -> dict[str, Any]:
        with (self.folder / CARDS).open("rb") as handle:
            if os.fstat(handle.fileno()).st_ino != self._cards_inode:
                self._load()  # latent_cards ran again since: its index goes with the file just opened
            if not 0 <= latent < self.d_sae:
                raise UnknownLatent(f"latent {latent} is not in SAE {self.folder.name}: its ids run 0 to "
                                    f"{self.d_sae - 1}")
            offset = int(self._index[latent])
            if offset < 0:
                card = dead_card(latent, self.meta["n_tokens"])
            else:
                handle.seek(offset)
                card = json.loads(handle.readline())
        if self.meta.get("neuronpedia_id"):  # a public SAE: its page of this latent on Neuronpedia
            card["neuronpedia"] = f"{NEURONPEDIA}/{self.meta['neuronpedia_id']}/{latent}"
        return card
