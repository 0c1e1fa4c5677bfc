"""Benchmark latent cards: build time per 1,000 texts, lookup latency, and what cards add to a score.

    python benchmarks/latent_cards.py --model gemma3_270m [--texts 200] [--lookups 2000]

Needs `dvc repro train_sae` (the prepared model, its SAEs and collect_activations' held-out corpus texts).
With the stage's own code and params (`latent_cards`), it builds the cards of every SAE of the model over
the first `--texts` card texts into a scratch folder, per 1,000 texts (the logit lens, a fixed cost per
SAE, timed apart, beside whole-row top-k over the vocabulary on the same SAEs: the ratio and whether the ids agree);
then reads `--lookups` random latents by id (p50/p99), and times what
the scoring service adds to a response: a card summary for each of `serve.top_latents` latents (p50/p99;
target under 10 ms at p99). The load average is printed beside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pipelines  # noqa: F401  (offline environment)
from features.core.cards import logit_lens
from features.forward.cards import build_cards
from features.sources.lm import load_prepared, resolve_device
from features.sources.sae import SAE_INDEX, load_sae
from features.stores.cards import CardStore, card_summary, write_cards
from pipelines import paths
from pipelines.latent_cards import card_texts
from pipelines.params import load_params


def percentiles(seconds: list[float]) -> str:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return f"p50 {p50:.3f} ms, p99 {p99:.3f} ms"


def whole_rows(w_dec: torch.Tensor, w_unembed: torch.Tensor, n: int, chunk: int = 256) -> tuple[np.ndarray, ...]:
    """The logit lens as the stage computed it before vocabulary blocks: a whole row of logits per latent, 256 latents
    at a time, the bottom tokens as the top of the negated logits."""
    promoted, suppressed = [], []
    with torch.inference_mode():
        for start in range(0, w_dec.shape[0], chunk):
            logits = w_dec[start:start + chunk].float() @ w_unembed.float().T
            promoted.append(logits.topk(n, dim=1).indices.numpy())
            suppressed.append((-logits).topk(n, dim=1).indices.numpy())
    return np.concatenate(promoted), np.concatenate(suppressed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--texts", type=int, default=200, help="card texts to build on (the first of the stage's)")
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    params = load_params()
    lc, ex = params.latent_cards, params.extract
    device = resolve_device(ex.device)
    model, tokenizer = load_prepared(paths.model_dir(args.model), device)
    specs = json.loads((paths.sae_dir(args.model) / SAE_INDEX).read_text())
    saes = {cell: load_sae(spec, device) for cell, spec in specs.items()}
    texts = card_texts(args.model, params)[: args.texts]
    print(f"{args.model}: {len(saes)} SAEs ({', '.join(saes)}), {len(texts)} texts; load average "
          f"{os.getloadavg()[0]:.1f}")

    started = time.perf_counter()
    built = build_cards(model, tokenizer, saes, texts, lc.settings(), max_tokens=lc.max_tokens,
                        batch_size=lc.batch_size, include_bos=ex.include_bos, paper_compat=ex.paper_compat,
                        progress=False)
    total = time.perf_counter() - started
    unembed = model.get_output_embeddings().weight.detach().cpu()
    started = time.perf_counter()
    lenses = [logit_lens(sae.W_dec.detach().cpu(), unembed, lc.logit_tokens) for sae in saes.values()]
    lens = time.perf_counter() - started
    started = time.perf_counter()
    baselines = [whole_rows(sae.W_dec.detach().cpu(), unembed, lc.logit_tokens) for sae in saes.values()]
    baseline = time.perf_counter() - started
    same = all(np.array_equal(a, b) for lens_ids, row_ids in zip(lenses, baselines, strict=True)
               for a, b in zip(lens_ids, row_ids, strict=True))
    tokens = next(iter(built.values()))[1]
    print(f"build: {total * 1000 / len(texts):.1f} s per 1,000 texts ({tokens / len(texts):.0f} tokens each, "
          f"{len(saes)} SAEs), of which the logit lens {lens:.1f} s (once per SAE, whatever the texts); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"logit lens in vocabulary blocks {lens:.1f} s, as whole rows {baseline:.1f} s: {baseline / lens:.2f}x; "
          f"{'the same' if same else 'DIFFERENT'} token ids (ties may order apart); load average "
          f"{os.getloadavg()[0]:.1f}")

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        cell, (cards, n_tokens) = next(iter(built.items()))
        d_sae = int(saes[cell].cfg.d_sae)
        write_cards(Path(scratch) / cell, cards, d_sae, {"n_tokens": n_tokens})
        store = CardStore(Path(scratch) / cell)
        fired = np.array(sorted(cards))
        lookups = []
        for latent in rng.choice(fired, args.lookups):
            started = time.perf_counter()
            store.card(int(latent))
            lookups.append(time.perf_counter() - started)
        print(f"lookup of a card by id ({cell}, {len(cards)} of {d_sae} latents have cards, "
              f"{(Path(scratch) / cell / 'cards.jsonl').stat().st_size / 1e6:.1f} MB): {percentiles(lookups)}")
        top = params.serve.top_latents
        added = []
        for _ in range(args.lookups // top):
            started = time.perf_counter()
            for latent in rng.choice(fired, top):
                card_summary(store.card(int(latent)))
            added.append(time.perf_counter() - started)
        print(f"added to a scored text ({top} top latents, each label, density and 3 contexts): "
              f"{percentiles(added)}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
