"""Stage latent_cards: a card for every latent of every SAE of one model (features.core.cards).

The texts: the first `latent_cards.corpus_texts` held-out corpus texts (collect_activations' held-out
split) and the first `latent_cards.texts_per_dataset` training texts of each dataset, never a test text.
One truncated forward per batch captures every SAE layer; each SAE encodes its layer's tokens and a
CardBuilder keeps the firings. Each card gets the SAE's logit lens (decoder rows through the model's
unembedding). Written per SAE to data/cards/<model>/<sae>/ (features.stores.cards), read by id by the
scoring service (`GET /latents/{model}/{sae}/{id}`, and the top latents of each score) and the report.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import pandas as pd

from features.forward.cards import build_cards
from features.sources.lm import load_prepared, resolve_device
from features.sources.sae import SAE_INDEX, load_sae
from features.stores.activations import HELDOUT_TEXTS
from features.stores.cards import write_cards
from features.stores.files import atomic_path, write_json
from pipelines import cost, paths, stage_main
from pipelines.params import Params, load_params

log = logging.getLogger("saefs.latent_cards")


def card_texts(name: str, params: Params) -> list[tuple[str, str, str]]:
    """(text_id, source, text) of every text the cards read: held-out corpus texts, then datasets' training texts."""
    lc = params.latent_cards
    corpus = json.loads((paths.activations_dir(name) / HELDOUT_TEXTS).read_text())[: lc.corpus_texts]
    texts = [(f"corpus:{i}", "corpus", text) for i, text in enumerate(corpus)]
    for dataset in params.datasets:
        prepared = pd.read_parquet(paths.prepared(dataset), columns=["text_id", "text", "split"])
        train = prepared[prepared["split"] == "train"].head(lc.texts_per_dataset)
        texts += [(text_id, dataset, text) for text_id, text in zip(train["text_id"], train["text"], strict=True)]
    return texts


def run(name: str) -> None:
    params = load_params()
    lc, ex = params.latent_cards, params.extract
    params.sae_of(name)  # a model without SAEs is named here
    device = resolve_device(ex.device)
    model, tokenizer = load_prepared(paths.model_dir(name), device)
    specs = json.loads((paths.sae_dir(name) / SAE_INDEX).read_text())
    saes = {cell: load_sae(spec, device) for cell, spec in specs.items()}
    texts = card_texts(name, params)
    started = time.perf_counter()
    built = build_cards(model, tokenizer, saes, texts, lc.settings(), max_tokens=lc.max_tokens,
                        batch_size=lc.batch_size, include_bos=ex.include_bos, paper_compat=ex.paper_compat)
    report: dict[str, Any] = {}
    with atomic_path(paths.cards_dir(name)) as tmp:
        for cell, (cards, n_tokens) in built.items():
            d_sae = int(saes[cell].cfg.d_sae)
            write_cards(tmp / cell, cards, d_sae, {"model": name, "sae": cell, "n_tokens": n_tokens,
                                                  "texts": len(texts), "settings": lc.model_dump(),
                                                  "sources": sorted({source for _, source, _ in texts}),
                                                  "neuronpedia_id": saes[cell].cfg.metadata.neuronpedia_id})
            report[cell] = {"cards": len(cards), "never_fired": d_sae - len(cards), "tokens": n_tokens}
            log.info("%s %s: %d cards, %d latents never fired on %d tokens", name, cell, len(cards),
                     d_sae - len(cards), n_tokens)
    report["seconds"] = round(time.perf_counter() - started, 1)
    cost.work(texts=len(texts), tokens=next(iter(built.values()))[1] if built else 0)
    write_json(paths.cards_metrics(name), report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `sae` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
