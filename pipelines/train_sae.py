"""Stage train_sae: the SAEs of one model, one per (layer, width).

With `source: train`, residual activations of a generic text corpus (`train_sae.corpus`) are
collected in one truncated forward pass per batch, and an SAE is trained with sae-lens for each
(layer, width). The corpus is kept apart from the classification datasets, as Gemma Scope's
training data is: no evaluation text reaches an SAE, and editing a dataset never retrains one.
A pretrained source (`sae_lens:`, `path:`) is loaded and checked against the model instead, so
that an SAE of another model fails here, before any extraction.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from features.core.layers import hook_name
from features.core.naming import parse_width, sae_name
from features.core.prepare import sample_corpus
from features.core.sae_training import train_sae
from features.forward.extract import collect_activations
from features.forward.throughput import throughput, truncated_forward_flops
from features.sources.datasets import load_source
from features.sources.lm import load_prepared, resolve_device
from features.sources.models import check_depth, read_manifest
from features.sources.sae import SAE_INDEX, check_sae_fits, load_sae
from features.stores.files import atomic_path, write_json
from pipelines import cost, paths, stage_main
from pipelines.params import Params, load_params

log = logging.getLogger("saefs.train_sae")


def training_texts(params: Params) -> list[str]:
    t = params.train_sae
    frames = {source: load_source(source, with_labels=False) for source in t.corpus}
    return sample_corpus(frames, t.corpus_texts, t.seed)


def _train(name: str, params: Params, out: Path, device: str, report: dict[str, Any]) -> None:
    cfg, t, ex = params.sae_of(name), params.train_sae, params.extract
    model, tokenizer = load_prepared(paths.model_dir(name), device)
    started = time.perf_counter()
    texts = training_texts(params)
    acts = collect_activations(model, tokenizer, texts, cfg.layers, max_tokens=ex.max_tokens,
                               batch_size=ex.batch_size, include_bos=ex.pools_bos,
                               paper_compat=ex.paper_compat)
    seconds = time.perf_counter() - started
    report |= {"texts": len(texts), "tokens": len(acts[cfg.layers[0]]), "collect_seconds": round(seconds, 1)}
    cost.work(texts=len(texts), tokens=report["tokens"])
    cost.forward("collect", throughput(report["tokens"] + len(texts), seconds, truncated_forward_flops(
        model, cfg.layers)))
    log.info("%s: %d training tokens from %d corpus texts", name, report["tokens"], len(texts))
    del model  # the activations are all training needs
    for layer in cfg.layers:
        for width in cfg.widths:
            started = time.perf_counter()
            sae = train_sae(acts[layer], t, parse_width(width), device=device)
            sae.save_inference_model(out / sae_name(layer, width))
            seconds = time.perf_counter() - started
            report["saes"][sae_name(layer, width)] = {"seconds": round(seconds, 1),
                                                      "tokens_per_second": round(t.training_samples / seconds, 1)}
            cost.work(training_tokens=t.training_samples)


def run(name: str) -> None:
    params = load_params()
    cfg = params.sae_of(name)
    device = resolve_device(params.extract.device)
    check_depth(paths.model_dir(name), cfg.layers, f"params.yaml sae.{name}.layers")
    d_model = read_manifest(paths.model_dir(name)).d_model
    final = paths.sae_dir(name)
    report: dict[str, Any] = {"source": cfg.source, "saes": {}}
    with atomic_path(final) as tmp:
        tmp.mkdir()
        if cfg.trained:
            _train(name, params, tmp, device, report)
        specs = {sae_name(layer, width): cfg.spec(layer, width, final / sae_name(layer, width))
                 for layer in cfg.layers for width in cfg.widths}
        for layer in cfg.layers:
            for width in cfg.widths:
                name_ = sae_name(layer, width)
                sae = load_sae(cfg.spec(layer, width, tmp / name_), device)  # what extract will load
                check_sae_fits(sae, d_model, hook_name(layer))
                report["saes"].setdefault(name_, {}).update(d_sae=sae.cfg.d_sae, architecture=sae.cfg.architecture())
                log.info("%s: %s ready (%s, %d latents)", name, name_, sae.cfg.architecture(), sae.cfg.d_sae)
        write_json(tmp / SAE_INDEX, specs)
    write_json(paths.train_sae_metrics(name), report)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `sae` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
