"""Throughput of `extract` on a GPU: token budgets and precisions side by side, in one run.

    python benchmarks/gpu.py                          # on a machine with a CUDA device
    python benchmarks/gpu.py --smoke --device cpu     # the same steps on a tiny model, anywhere

On a GPU machine with PyTorch and transformers but not this project's stack, the wheels of
benchmarks/gpu-requirements.txt (`pip download --no-deps`, then `pip install --no-deps --target DIR`, DIR
on PYTHONPATH) are all it needs.

Needs no prepared data: it builds a model of the embedded profile's architecture with random weights
(Gemma 3 270M's sizes: 18 blocks of width 640, 4 heads and 1 KV head of 256, MLP 2048, vocabulary 262,144;
throughput does not depend on the weights), random sae-lens TopK SAEs of width 4k (k 32) and 16k (k 64) at
the embedded layers 5 and 9, and synthetic texts of a word-level tokenizer (words drawn by Zipf's law, lengths
spread around half of max_tokens, some cut). It runs the project's own `extract`, with the pipeline's
poolings, at several budgets of padded tokens per batch (`auto`: features.forward.gpu's, from free memory)
and in three precisions: bf16 weights (the CUDA default, features.sources.lm.default_dtype), fp32 weights,
and fp32 weights under bf16 autocast. Per run it prints tokens/s of `extract` and of the truncated forward
alone (the gap is SAE encoding, pooling and CSR assembly), the fraction of the GPU's bf16 matmul rate
measured in the same run (FLOPs counted as the extract stage counts them: blocks up to the deepest layer plus
each SAE encoder), and peak GPU memory; then the CPU default path (fp32, batch_size 32) on the same machine's
cores and the GPU's speed-up over it. Without a CUDA device it prints the machine and exits (status 0).

Random TopK SAEs pool to about as many active latents per text as the trained ones (k x tokens, less
repeats; CALIBRATION.md), so the CSR side is of a real run's size; the script prints it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedModel, PreTrainedTokenizerFast

from features.forward.batching import length_sorted_batches
from features.forward.extract import extract, tokenize
from features.forward.gpu import cuda_tokens_per_batch
from features.forward.throughput import measure_device_matmul_gflops, truncated_forward_flops
from features.sources.lm import capture_residuals, right_pad

GEMMA3_270M = {"hidden_size": 640, "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
               "head_dim": 256, "intermediate_size": 2048, "vocab_size": 262_144, "sliding_window": 512,
               "query_pre_attn_scalar": 256, "max_position_embeddings": 32_768}
TINY = {"hidden_size": 64, "num_hidden_layers": 10, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 32, "intermediate_size": 128, "vocab_size": 4096, "sliding_window": 64,
        "query_pre_attn_scalar": 32}
SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}  # Gemma's ids
POOLINGS = ["sum", "mean", "max", "last", "top20"]  # params.yaml's extract.poolings
PRECISIONS = ("bf16", "fp32", "fp32+autocast")


def word_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over 'w0'.. that prepends <bos>, as Gemma's does."""
    vocab = SPECIALS | {f"w{i}": len(SPECIALS) + i for i in range(n_words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


def synthetic_texts(n: int, n_words: int, max_tokens: int, seed: int = 0) -> list[str]:
    """Texts of words drawn by Zipf's law (the r-th commonest at a rate ~ 1/r, so words repeat as in text),
    about max_tokens / 2 long, an eighth cut at max_tokens."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(max_tokens / 2), 0.6, n), 1, 2 * max_tokens).astype(int)
    rates = 1.0 / np.arange(1, n_words + 1)
    words = rng.choice(n_words, size=int(lengths.sum()), p=rates / rates.sum())
    return [" ".join(f"w{w}" for w in text) for text in np.split(words, np.cumsum(lengths)[:-1])]


def random_saes(layers: Sequence[int], widths: dict[str, tuple[int, int]], d_in: int, device: str) -> dict:
    """Random sae-lens TopK SAEs: layer -> width name -> SAE, (d_sae, k) per width."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    return {layer: {name: TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device)).eval()
                    for name, (d_sae, k) in widths.items()} for layer in layers}


def on_cpu(saes: dict) -> dict:
    """The same SAEs rebuilt on the CPU (sae-lens keeps the device it was built on in its config)."""
    moved = {}
    for layer, named in saes.items():
        moved[layer] = {}
        for name, sae in named.items():
            twin = type(sae)(type(sae.cfg)(**{**sae.cfg.__dict__, "device": "cpu"}))
            twin.load_state_dict({key: value.cpu() for key, value in sae.state_dict().items()})
            moved[layer][name] = twin.eval()
    return moved


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """run(*args)'s result, its seconds and the peak memory it allocated on `device` (GiB; 0 on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    result = run(*args)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return result, seconds, peak


@dataclass(frozen=True)
class Bench:
    """What every run shares: the texts, tokenizer, layers, SAEs and counts."""

    texts: list[str]
    tokenizer: PreTrainedTokenizerFast
    layers: list[int]
    max_tokens: int
    saes: dict
    flops_per_token: int
    matmul_gflops: float  # the GPU's bf16 rate measured in this run (0 on the CPU)

    def extract(self, model: PreTrainedModel, texts: Sequence[str], saes: dict, batch_size: int,
                budget: int | None, precision: str) -> Any:
        with autocast_for(precision, model.device):
            return extract(model, self.tokenizer, texts, self.layers, saes, POOLINGS, max_tokens=self.max_tokens,
                           batch_size=batch_size, tokens_per_batch=budget, progress=False)

    def forward_only(self, model: PreTrainedModel, batch_size: int, budget: int | None, precision: str) -> None:
        """The truncated forwards of `extract`'s batches and nothing else: the ceiling of the rest."""
        tokenized = tokenize(self.tokenizer, self.texts, self.max_tokens)
        with autocast_for(precision, model.device):
            for rows in length_sorted_batches([len(ids) for ids in tokenized.ids], batch_size, budget):
                input_ids, mask = right_pad([tokenized.ids[i] for i in rows], model.device)
                capture_residuals(model, input_ids, mask, self.layers)

    def n_batches(self, batch_size: int, budget: int | None) -> int:
        lengths = [len(ids) for ids in tokenize(self.tokenizer, self.texts, self.max_tokens).ids]
        return len(length_sorted_batches(lengths, batch_size, budget))


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    if precision == "fp32+autocast" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def measure(bench: Bench, model: PreTrainedModel, precision: str, spec: str) -> dict[str, Any]:
    """One run of `extract` over the bench's texts at the budget `spec` (padded tokens per batch, or auto)."""
    device = model.device
    budget: int | None = int(spec) if spec != "auto" else None
    if spec == "auto" and device.type == "cuda":
        with autocast_for(precision, device):  # the probe measures the precision the runs use
            budget = cuda_tokens_per_batch(model, bench.layers, bench.max_tokens)
    batch_size = budget or 32  # with a budget it alone bounds a batch; the CPU's auto is its default batch
    out, seconds, peak = timed(device, bench.extract, model, bench.texts, bench.saes, batch_size, budget, precision)
    _, forward_seconds, _ = timed(device, bench.forward_only, model, batch_size, budget, precision)
    tokens = int(out.n_tokens.sum()) + len(bench.texts)  # BOS runs through the model too, as the stage counts
    rate = tokens / seconds
    return {"precision": precision, "budget": budget or spec, "batches": bench.n_batches(batch_size, budget),
            "tokens": tokens, "extract_tokens_per_second": round(rate),
            "forward_tokens_per_second": round(tokens / forward_seconds),
            "fraction_of_bf16_matmul_rate": round(rate * bench.flops_per_token / 1e9 / bench.matmul_gflops, 4)
            if bench.matmul_gflops else None, "peak_gib": round(peak, 2),
            "active_latents": {f"l{layer} {name}": round(float(out.codes[layer, name, "sum"].getnnz(axis=1).mean()))
                               for layer, named in bench.saes.items() for name in named}}


def measure_cpu(bench: Bench, fp32: PreTrainedModel, n_texts: int) -> float:
    """Tokens/s of the CPU default path (fp32 weights, batch_size 32) on the first `n_texts` texts."""
    subset = bench.texts[:n_texts]
    model, saes = copy.deepcopy(fp32).to("cpu"), on_cpu(bench.saes)
    bench.extract(model, subset[:32], saes, 32, None, "fp32")  # warm-up
    out, seconds, _ = timed(torch.device("cpu"), bench.extract, model, subset, saes, 32, None, "fp32")
    return (int(out.n_tokens.sum()) + len(subset)) / seconds


def machine(device: torch.device) -> list[str]:
    lines = [f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
             f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"]
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        lines.append(f"GPU {torch.cuda.get_device_name(device)}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} free), "
                     f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to run the steps for a check")
    parser.add_argument("--texts", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=64, help="params.yaml's extract.max_tokens")
    parser.add_argument("--layers", type=int, nargs="+", default=[5, 9])
    parser.add_argument("--budgets", nargs="+", default=["4096", "16384", "65536", "auto"],
                        help="padded tokens per batch, or auto (features.forward.gpu)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--cpu-texts", type=int, default=256, help="texts of the CPU default path (0: skip it)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and few texts: checks the steps")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    print("\n".join(machine(device)), flush=True)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (benchmarks/extract.py measures the CPU path; "
              "--device cpu --smoke runs these steps on the CPU)")
        return

    sizes, widths = (TINY, {"256": (256, 8), "1k": (1024, 16)}) if args.smoke else (
        GEMMA3_270M, {"4k": (4096, 32), "16k": (16384, 64)})
    n_words = min(30_000, sizes["vocab_size"] - len(SPECIALS))
    torch.manual_seed(0)
    with device:  # initialised where it runs: seconds, not a minute, for 268M parameters
        fp32 = Gemma3ForCausalLM(Gemma3TextConfig(**sizes)).eval()
    models = {"fp32": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    saes = random_saes(args.layers, widths, sizes["hidden_size"], args.device)
    encoders = sum(sae.cfg.d_in * sae.cfg.d_sae for named in saes.values() for sae in named.values())
    bench = Bench(synthetic_texts(64 if args.smoke else args.texts, n_words, args.max_tokens), word_tokenizer(n_words),
                  args.layers, args.max_tokens, saes, truncated_forward_flops(fp32, args.layers, encoders),
                  measure_device_matmul_gflops(device) if device.type == "cuda" else 0.0)
    rate = f"; bf16 matmul rate {bench.matmul_gflops / 1e3:.0f} TFLOP/s (8192^3)" if bench.matmul_gflops else ""
    print(f"{'tiny model' if args.smoke else 'Gemma 3 270M sizes'}, random weights, attention "
          f"{fp32.config._attn_implementation}; layers {args.layers}, TopK SAEs {list(widths)}; poolings {POOLINGS}")
    print(f"{len(bench.texts)} texts, max_tokens {args.max_tokens}; "
          f"{bench.flops_per_token / 1e6:.0f} MFLOP per token{rate}")

    print(f"\n{'precision':<14}{'tokens/batch':>13}{'batches':>8}{'extract tok/s':>15}{'forward tok/s':>15}"
          f"{'of bf16 rate':>14}{'peak GiB':>10}")
    results = []
    for precision in args.precisions:
        model = models["bf16" if precision == "bf16" else "fp32"]
        bench.extract(model, bench.texts[:256], saes, 10**9, 8192, precision)  # warm-up: kernels, allocator, clocks
        for spec in args.budgets:
            row = measure(bench, model, precision, spec)
            results.append(row)
            fraction = row["fraction_of_bf16_matmul_rate"]
            print(f"{precision:<14}{row['budget']!s:>13}{row['batches']:>8}{row['extract_tokens_per_second']:>15,}"
                  f"{row['forward_tokens_per_second']:>15,}{'-' if fraction is None else f'{fraction:.1%}':>14}"
                  f"{row['peak_gib']:>10.2f}", flush=True)
    print(f"active latents per text, sum pooling: {results[-1]['active_latents']}")
    summary: dict[str, Any] = {"machine": machine(device), "results": results}
    if args.cpu_texts:
        cpu_rate = summary["cpu_tokens_per_second"] = round(measure_cpu(bench, fp32, args.cpu_texts))
        best = max(results, key=lambda row: row["extract_tokens_per_second"])
        print(f"CPU default path (fp32, batch 32, {torch.get_num_threads()} threads, {args.cpu_texts} texts): "
              f"{cpu_rate:,} tok/s; the fastest run above ({best['precision']}, {best['budget']}) is "
              f"{best['extract_tokens_per_second'] / cpu_rate:.1f}x that")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
