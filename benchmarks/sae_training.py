"""Benchmark SAE training on a model's cached corpus activations: trainers and settings side by side, in one run.

    python benchmarks/sae_training.py [--model gemma3_270m] [--layer 9] [--width 4k] [--samples N]
                                      [--variant NAME:key=value,key=value ...]

Needs `dvc repro collect_activations@<model>` (the cache). Trains one SAE per variant on the same cached
training split (memory-mapped, as train_sae reads it), each a set of train_sae params over params.yaml's for
that SAE (by_width and sae.<model>.training included): by default sae-lens' SAETrainer and the lean loop at
those settings, and the lean loop at sae-lens' defaults (constant learning rate, a dead-latent window of 1,000
steps of 1,024 tokens).
Prints tokens/s and, on the held-out split, variance explained, L0, dead and dense latent fractions, with the
load average.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import pipelines  # noqa: F401  (offline environment)
from features.core.naming import parse_width
from features.core.sae_training import train_sae
from features.sources.sae import sae_quality
from features.stores.activations import HELDOUT, TRAIN, ActivationCache
from pipelines import paths
from pipelines.collect_activations import fingerprint
from pipelines.params import load_params

DEFAULT_VARIANTS = ["sae_lens:trainer=sae_lens", "lean:trainer=lean",
                    "lean at sae-lens defaults:trainer=lean,lr_warmup=0,lr_decay=0,dead_window_tokens=1024000,"
                    "batch_size=1024"]


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, settings = spec.rpartition(":")
    return name, dict(item.split("=", 1) for item in settings.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--width", default="4k")
    parser.add_argument("--samples", type=int, help="training tokens (default: train_sae's for --width)")
    parser.add_argument("--variant", action="append", help="NAME:key=value,... over train_sae (repeatable)")
    args = parser.parse_args()
    params = load_params()
    cache = ActivationCache.open(paths.activations_dir(args.model), fingerprint(args.model, params),
                                 fix=f"run `dvc repro collect_activations@{args.model}`")
    train, held_out = cache.layer(TRAIN, args.layer), torch.from_numpy(cache.layer(HELDOUT, args.layer).copy())
    trained = params.sae_training(args.model, args.layer, args.width)  # as train_sae trains that SAE
    samples = args.samples or trained.training_samples
    print(f"{args.model} layer {args.layer}: {len(train):,} cached training and {len(held_out):,} held-out tokens; "
          f"width {args.width}, k {params.train_sae.k}, {samples:,} training tokens")
    for name, settings in map(parse_variant, args.variant or DEFAULT_VARIANTS):
        base = trained.model_dump()
        cfg = type(trained)(**base | {key: type(base[key])(value) if base[key] is not None else value
                                               for key, value in settings.items()} | {"training_samples": samples})
        started = time.perf_counter()
        sae = train_sae(train, cfg, parse_width(args.width))
        seconds = time.perf_counter() - started
        quality = sae_quality(sae.eval(), held_out)
        print(f"{name:>28}: {samples / seconds:7.0f} tok/s; held out: variance explained {quality.fve:.3f}, "
              f"L0 {quality.l0:.1f}, dead {quality.dead_fraction:.1%}, dense {quality.dense_fraction:.1%}; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
