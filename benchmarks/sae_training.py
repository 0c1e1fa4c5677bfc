"""Benchmark SAE training: the lean TopK loop against sae-lens' SAETrainer, same activations and tokens, in one run.

    python benchmarks/sae_training.py [--model gemma3_270m] [--layer 9] [--width 4k] [--samples 100000]

Needs `dvc repro prepare_model` (the model). Collects the layer's activations of the train_sae corpus
with the stage's own code, holds out a tenth, trains both trainers with the train_sae params (TopK,
k, batch, learning rate, seed) for `--samples` training tokens, and prints tokens/s of both and
their ratio, and on the held-out tokens the fraction of variance explained, L0 and the fraction of
latents that never fire, with the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import pipelines  # noqa: F401  (offline environment)
from features.core.naming import parse_width
from features.core.sae_training import train_sae
from features.forward.extract import collect_activations
from features.sources.lm import load_prepared
from features.sources.sae import sae_quality
from pipelines import paths
from pipelines.params import load_params
from pipelines.train_sae import training_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--width", default="4k")
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    params = load_params()
    model, tokenizer = load_prepared(paths.model_dir(args.model))
    acts = collect_activations(model, tokenizer, training_texts(params), [args.layer],
                               max_tokens=params.extract.max_tokens, batch_size=params.extract.batch_size,
                               progress=False)[args.layer]
    order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))
    held_out, train = acts[order[: len(acts) // 10]], acts[order[len(acts) // 10:]]
    print(f"{args.model} layer {args.layer}: {len(train)} training and {len(held_out)} held-out tokens; "
          f"width {args.width}, k {params.train_sae.k}, {args.samples} training tokens")
    seconds = {}
    for trainer in ("sae_lens", "lean"):
        cfg = params.train_sae.model_copy(update={"trainer": trainer, "training_samples": args.samples})
        started = time.perf_counter()
        sae = train_sae(train, cfg, parse_width(args.width))
        seconds[trainer] = time.perf_counter() - started
        quality = sae_quality(sae.eval(), held_out)
        print(f"{trainer:>8}: {args.samples / seconds[trainer]:7.0f} tok/s; held out: variance explained "
              f"{quality.fve:.3f}, L0 {quality.l0:.1f}, dead {quality.dead_fraction:.1%}; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    print(f"lean / sae-lens speed: {seconds['sae_lens'] / seconds['lean']:.1f}x")


if __name__ == "__main__":
    main()
