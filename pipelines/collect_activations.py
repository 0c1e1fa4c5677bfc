"""Stage collect_activations: a model's residual streams on the SAE corpus, once for all its SAEs.

The corpus (`collect_activations.corpus`: generic text, never an evaluation text, as Gemma Scope's
training data) is ordered by a seeded rank, interleaved over its sources; its first texts, up to
`heldout_tokens`, are held out to measure SAEs, the next ones, up to `train_tokens`, train them.
One truncated forward per length-sorted batch captures every layer of `sae.<model>.layers`, streamed
to disk (features.stores.activations), so a new width or architecture trains without rerunning the
model. Pretrained SAEs need only the held-out split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Any

from features.core.prepare import corpus_order, take_tokens
from features.forward.extract import activation_batches, tokenize
from features.forward.throughput import throughput, truncated_forward_flops
from features.sources.datasets import load_source
from features.sources.lm import load_prepared, resolve_device
from features.sources.models import check_depth, read_manifest
from features.stores.activations import HELDOUT, HELDOUT_TEXTS, TRAIN, ActivationWriter, write_manifest
from features.stores.files import atomic_path, write_json
from pipelines import cost, paths, stage_main
from pipelines.params import Params, load_params

log = logging.getLogger("saefs.collect_activations")


def fingerprint(name: str, params: Params) -> dict[str, Any]:
    """What a model's activation cache depends on; train_sae refuses a cache whose fingerprint differs."""
    c, ex, sae = params.collect_activations, params.extract, params.sae_of(name)
    return {"model": dataclasses.asdict(read_manifest(paths.model_dir(name))),
            "corpus": json.loads(paths.corpus_fingerprint().read_text()), "layers": sorted(sae.layers),
            "splits": [HELDOUT, TRAIN] if sae.trained else [HELDOUT], "train_tokens": c.train_tokens,
            "heldout_tokens": c.heldout_tokens, "max_tokens": c.max_tokens, "seed": c.seed,
            "include_bos": ex.include_bos, "paper_compat": ex.paper_compat}


def _token_counts(tokenizer: Any, texts: list[str], max_tokens: int, include_bos: bool, needed: int,
                  chunk: int = 1024) -> list[int]:
    """Counted tokens of the first texts, as many as hold `needed` tokens (or all): the corpus may be far larger."""
    counts: list[int] = []
    for start in range(0, len(texts), chunk):
        ids = tokenize(tokenizer, texts[start : start + chunk], max_tokens).ids
        counts += [len(row) - (not include_bos and row[:1] == [tokenizer.bos_token_id]) for row in ids]
        if sum(counts) >= needed:
            break
    return counts


def run(name: str) -> None:
    params = load_params()
    c, ex, sae = params.collect_activations, params.extract, params.sae_of(name)
    check_depth(paths.model_dir(name), sae.layers, f"params.yaml sae.{name}.layers")
    expected = fingerprint(name, params)
    model, tokenizer = load_prepared(paths.model_dir(name), resolve_device(ex.device))
    texts = corpus_order({source: load_source(source, with_labels=False) for source in c.corpus}, c.seed)
    budgets = {HELDOUT: c.heldout_tokens} | ({TRAIN: c.train_tokens} if sae.trained else {})
    counted = _token_counts(tokenizer, texts, c.max_tokens, ex.include_bos, sum(budgets.values()))
    runs = dict(zip(budgets, take_tokens(counted, list(budgets.values()), f"the corpus {c.corpus} at max_tokens="
                                         f"{c.max_tokens}"), strict=True))
    shapes: dict[str, dict[str, int]] = {}
    report: dict[str, Any] = {}
    with atomic_path(paths.activations_dir(name)) as tmp:
        tmp.mkdir()
        for split, rows in runs.items():
            started = time.perf_counter()
            writer = ActivationWriter(tmp, split, sae.layers)
            split_texts = [texts[i] for i in rows]
            for batch in activation_batches(model, tokenizer, split_texts, sae.layers, max_tokens=c.max_tokens,
                                            batch_size=c.batch_size, include_bos=ex.include_bos,
                                            paper_compat=ex.paper_compat):
                writer.add(batch)
            shapes[split] = writer.close() | {"texts": len(split_texts)}
            seconds = time.perf_counter() - started
            cost.forward(split, throughput(shapes[split]["tokens"] + len(split_texts), seconds,
                                           truncated_forward_flops(model, sae.layers)))
            report[split] = shapes[split] | {"seconds": round(seconds, 1)}
            log.info("%s: %s split, %d tokens of %d corpus texts in %.0f s", name, split, shapes[split]["tokens"],
                     len(split_texts), seconds)
        write_json(tmp / HELDOUT_TEXTS, [texts[i] for i in runs[HELDOUT]])
        write_manifest(tmp, expected, shapes, sae.layers)
    cost.work(texts=sum(shape["texts"] for shape in shapes.values()),
              tokens=sum(shape["tokens"] for shape in shapes.values()))
    write_json(paths.collect_metrics(name), report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `sae` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
