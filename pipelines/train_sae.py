"""Stage train_sae: the SAEs of one model, one per (layer, width), and their quality on held-out corpus tokens.

With `source: train`, an SAE is trained for each (layer, width) on the corpus activations that
collect_activations cached (read memory-mapped: the model does not run again), with the lean TopK loop
or sae-lens' trainer (features.core.sae_training). A pretrained source (`sae_lens:`, `path:`) is loaded and
checked against the model instead, so that an SAE of another model fails here, before any extraction.
Either way each SAE is then measured as the field measures SAEs, on the held-out corpus split: variance
explained, L0, dead and dense latent fractions, and loss recovered (the LM's next-token loss with the SAE's
reconstruction spliced in at its layer, features.forward.splice). check_sae gates on these figures.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from features.core.layers import hook_name
from features.core.lean_topk import DeadHistory
from features.core.naming import parse_width, sae_name
from features.core.sae_config import Schedule
from features.core.sae_training import train_sae
from features.errors import SaefsError
from features.forward.splice import loss_recovered
from features.sources.lm import load_prepared, resolve_device
from features.sources.models import check_depth, read_manifest
from features.sources.sae import SAE_INDEX, check_sae_fits, load_sae, sae_quality
from features.stores.activations import HELDOUT, HELDOUT_TEXTS, TRAIN, ActivationCache
from features.stores.files import atomic_path, write_json
from pipelines import cost, paths, stage_main
from pipelines.collect_activations import fingerprint
from pipelines.params import Params, TrainSaeParams, load_params

log = logging.getLogger("saefs.train_sae")
HISTORY_POINTS = 200  # the dead-latent history keeps about this many steps of each SAE's training


def _train(name: str, params: Params, cache: ActivationCache, out: Path, device: str,
           report: dict[str, Any]) -> None:
    cfg, t = params.sae_of(name), params.train_sae
    tokens = cache.tokens(TRAIN)
    for width in cfg.widths:
        if parse_width(width) * t.min_tokens_per_latent > tokens:
            raise SaefsError(
                f"sae.{name}.widths: width {width} ({parse_width(width):,} latents) needs at least "
                f"{parse_width(width) * t.min_tokens_per_latent:,.0f} training tokens "
                f"(train_sae.min_tokens_per_latent={t.min_tokens_per_latent}), the corpus cache has {tokens:,}: "
                "raise collect_activations.train_tokens or choose a smaller width")
    jobs = [(layer, width, params.sae_training(name, layer, width)) for layer in cfg.layers for width in cfg.widths]
    # A CPU trains several SAEs faster side by side, each on its share of the threads, than one after another on
    # all of them: a step's small products and many small ops leave two threads half idle (two 4k SAEs at one
    # thread each: 1.6 times the tokens a second of one at two). A GPU takes them one at a time.
    workers = min(t.n_jobs, len(jobs)) if device == "cpu" else 1
    threads = max(1, torch.get_num_threads() // workers) if workers > 1 else None  # None: this process's own
    if threads is not None:
        log.info("%s: training %d SAEs, %d at a time in worker processes of %d torch thread(s) each", name,
                 len(jobs), workers, threads)
    # the memory maps travel to the workers as their files' absolute paths, and so does `out`: a reused worker
    # keeps the working directory it started in
    trained = Parallel(n_jobs=workers)(delayed(_train_one)(cache.layer(TRAIN, layer), layer, width, settings,
                                                           out.resolve(), device, threads)
                                       for layer, width, settings in jobs)
    for (layer, width, settings), (seconds, used, history) in zip(jobs, trained, strict=True):
        schedule = settings.schedule()
        report[sae_name(layer, width)] = {"seconds": round(seconds, 1), "training_tokens": tokens,
                                          "tokens_per_second": round(settings.training_samples / seconds, 1),
                                          "torch_threads": used, "sae_at_once": workers,
                                          "training": training_record(history, schedule, parse_width(width))}
        cost.work(training_tokens=settings.training_samples)


def _train_one(acts: np.memmap, layer: int, width: str, settings: TrainSaeParams, out: Path, device: str,
               threads: int | None) -> tuple[float, int, DeadHistory]:
    """Train and save one SAE on its layer's cached activations (on `threads` torch threads in a worker process;
    None: as the caller's); its training seconds, the torch threads it had and its dead-latent history."""
    if threads is not None:
        torch.set_num_threads(threads)
    schedule = settings.schedule()
    history = DeadHistory(every=max(1, schedule.steps // HISTORY_POINTS))
    started = time.perf_counter()
    sae = train_sae(acts, settings, parse_width(width), device=device, history=history,
                    label=f"training {sae_name(layer, width)}")
    folder = out / sae_name(layer, width)
    sae.save_inference_model(folder)
    # sae-lens writes cfg.json's keys in an order that changes from process to process (it follows a set's): sorted,
    # equal SAEs are equal files, and DVC reruns nothing downstream of a retraining that changed nothing
    config = folder / "cfg.json"
    write_json(config, json.loads(config.read_text()))
    return time.perf_counter() - started, torch.get_num_threads(), history


def training_record(history: DeadHistory, schedule: Schedule, width: int) -> dict[str, Any]:
    """The trainer's dead-latent window over training, for the metrics and the report's figure: its count at
    the last step and at its peak (as fractions of the width), where the learning-rate decay starts, and the
    history itself. A held-out dead fraction far above the last count means latents died unseen in the decay."""
    return {"dead_window_steps": schedule.dead_window_steps, "steps": schedule.steps,
            "lr_decay_from_step": schedule.steps - schedule.decay_steps,
            "dead_fraction_at_end": round(history.dead[-1] / width, 5),
            "dead_fraction_peak": round(max(history.dead) / width, 5), "dead_history": history.as_dict()}


def _measure(name: str, params: Params, cache: ActivationCache, saes: dict[int, dict[str, Any]], device: str,
             report: dict[str, Any]) -> None:
    """Each SAE's figures on the held-out corpus tokens: activations from the cache, losses from the model."""
    with tqdm(total=sum(map(len, saes.values())), desc="held-out quality", unit="SAE") as bar:
        for layer, named in saes.items():
            acts = torch.from_numpy(cache.layer(HELDOUT, layer).copy())
            for name_, sae in named.items():
                report[name_]["heldout"] = vars(sae_quality(sae, acts)) | {"tokens": len(acts)}
                bar.update()
    texts = json.loads((cache.folder / HELDOUT_TEXTS).read_text())[: params.train_sae.loss_texts]
    model, tokenizer = load_prepared(paths.model_dir(name), device)
    ex, c = params.extract, params.collect_activations
    started = time.perf_counter()
    losses = loss_recovered(model, tokenizer, texts, saes, max_tokens=c.max_tokens, include_bos=ex.include_bos,
                            paper_compat=ex.paper_compat)
    cost.work(loss_texts=len(texts))
    for (_, name_), loss in losses.items():
        report[name_]["heldout"] |= {"loss_clean": loss.clean, "loss_ablated": loss.ablated,
                                     "loss_spliced": loss.spliced, "loss_recovered": loss.recovered,
                                     "loss_tokens": loss.tokens}
        log.info("%s: %s on held-out corpus tokens: FVE %.3f, dead %.1f%%, dense %.1f%%, loss recovered %.3f",
                 name, name_, report[name_]["heldout"]["fve"], 100 * report[name_]["heldout"]["dead_fraction"],
                 100 * report[name_]["heldout"]["dense_fraction"], loss.recovered)
    log.info("%s: loss recovered of %d SAEs on %d texts in %.0f s", name, len(losses), len(texts),
             time.perf_counter() - started)


def run(name: str) -> None:
    params = load_params()
    cfg = params.sae_of(name)
    device = resolve_device(params.extract.device)
    check_depth(paths.model_dir(name), cfg.layers, f"params.yaml sae.{name}.layers")
    d_model = read_manifest(paths.model_dir(name)).d_model
    cache = ActivationCache.open(paths.activations_dir(name), fingerprint(name, params),
                                 fix=f"run `dvc repro collect_activations@{name}` first")
    final = paths.sae_dir(name)
    report: dict[str, Any] = {sae_name(layer, width): {} for layer in cfg.layers for width in cfg.widths}
    with atomic_path(final) as tmp:
        tmp.mkdir()
        if cfg.trained:
            _train(name, params, cache, tmp, device, report)
        specs = {sae_name(layer, width): cfg.spec(layer, width, final / sae_name(layer, width))
                 for layer in cfg.layers for width in cfg.widths}
        saes: dict[int, dict[str, Any]] = {layer: {} for layer in cfg.layers}
        for layer in cfg.layers:
            for width in cfg.widths:
                name_ = sae_name(layer, width)
                sae = load_sae(cfg.spec(layer, width, tmp / name_), device)  # what extract will load
                check_sae_fits(sae, d_model, hook_name(layer))
                saes[layer][name_] = sae
                report[name_] |= {"d_sae": sae.cfg.d_sae, "architecture": sae.cfg.architecture()}
                log.info("%s: %s ready (%s, %d latents)", name, name_, sae.cfg.architecture(), sae.cfg.d_sae)
        _measure(name, params, cache, saes, device, report)
        write_json(tmp / SAE_INDEX, specs)
    write_json(paths.train_sae_metrics(name), {"source": cfg.source, "saes": report})


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="model", help="a key of `sae` in params.yaml")


if __name__ == "__main__":
    sys.exit(main())
