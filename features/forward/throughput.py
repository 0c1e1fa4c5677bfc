"""How close a forward pass runs to this machine's fp32 matmul rate (the limit a CPU forward can reach).

A truncated decoder forward is matmul-bound: each token costs about two FLOPs per parameter of the
blocks it runs through (attention over at most a few hundred positions adds a few percent). Dividing
the achieved FLOP rate by the rate of a large square matmul gives the fraction of the limit; the
limit is measured once per machine (CPU model, threads, torch version) and cached, since a second
of matmuls per stage would distort the stages it measures. On a GPU the limit is its bf16 matmul rate,
the precision its forward runs in (features.sources.lm.default_dtype), cached per GPU model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from features.machine import machine_name

CACHE_ENV = "SAEFS_CACHE"  # where per-machine measurements are kept; ~/.cache/saefs by default
LIMITS, SPEEDUPS = "matmul_limit.json", "onednn_speedup.json"  # their files there


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "saefs")


def measure_matmul_gflops(n: int = 2048, repeats: int = 5, trials: int = 3, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an n x n matmul (fp32 on the current torch threads by default): the best of `trials`, since
    other jobs on a shared machine can only slow a trial down, and on a CPU the better of PyTorch's own product
    (MKL) and oneDNN's, which CPU forwards use."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    cuda = torch.device(device).type == "cuda"
    products = [lambda: a @ b]
    if not cuda and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        from features.sources.onednn import OneDNNLinear

        onednn = OneDNNLinear(nn.Linear(n, n, bias=False))  # its weights' values do not change the rate
        products.append(lambda: onednn(a))  # the path CPU forwards take (features.sources.onednn)
    best = 0.0
    with torch.inference_mode():
        for product in products:
            product()  # warm-up: thread pool, allocator, GPU clocks and kernels
            for _ in range(trials):
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                for _ in range(repeats):
                    product()
                if cuda:  # kernels run asynchronously: time them to their end
                    torch.cuda.synchronize(device)
                best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def measure_device_matmul_gflops(device: str | torch.device) -> float:
    """The matmul limit of `device`: fp32 on the CPU; on a GPU bf16 at 8192 (smaller products leave it idle)."""
    if torch.device(device).type == "cuda":
        return measure_matmul_gflops(8192, repeats=10, device=device, dtype=torch.bfloat16)
    return measure_matmul_gflops()


def _machine_key(device: str | torch.device = "cpu") -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)} | bf16 | torch {torch.__version__}"
    key = f"{machine_name()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    # oneDNN's rate counts where forwards use it: limits cached from PyTorch's own product alone are not compared
    return key + " | onednn" if torch.backends.mkldnn.is_available() else key


def matmul_limit(device: str | torch.device = "cpu") -> float:
    """This machine's fp32 matmul GFLOP/s at the current thread count (a GPU's bf16 rate): the best rate measured
    on it so far (measured on first use). A measurement on a busy machine can only be low, so the best one stands."""
    cached = _cached(LIMITS).get(_machine_key(device))
    return cached if cached is not None else remember_matmul_rate(measure_device_matmul_gflops(device), device)


def remember_matmul_rate(gflops: float, device: str | torch.device = "cpu") -> float:
    """Keep `gflops` (a fresh measurement) as this machine's limit if it beats the cached one; the limit."""
    key = _machine_key(device)
    return _remember(LIMITS, key, round(max(gflops, _cached(LIMITS).get(key, 0.0)), 2))


def onednn_speedup(linears: Sequence[nn.Linear], tokens: int = 1024, trials: int = 3) -> float:
    """How many times faster oneDNN runs `linears` (one decoder block's) on `tokens` rows than PyTorch's own fp32
    product (MKL), on this machine: measured once per machine and set of shapes (about a second), then cached.

    Which is faster depends on the CPU: on an AMD Zen 5 (AVX-512) oneDNN doubled Gemma 3's extraction, on an AMD
    Zen 3 it ran Gemma 3's block at 0.8 times MKL's rate. CPU forwards take oneDNN only where it measured faster
    (features.sources.lm.load_causal_lm). The best of `trials`, alternated, so a busy moment hurts neither side.
    """
    from features.sources.onednn import OneDNNLinear

    shapes = [(linear.in_features, linear.out_features) for linear in linears]
    key = f"{_machine_key()} | packed | {tokens} rows through {shapes}"  # not MkldnnLinear's, measured before
    cached = _cached(SPEEDUPS).get(key)
    if cached is not None:
        return cached
    plain = [nn.Linear(n_in, n_out) for n_in, n_out in shapes]  # the weights' values do not change the rate
    inputs = [torch.randn(tokens, n_in) for n_in, _ in shapes]
    layers = {"pytorch": plain, "onednn": [OneDNNLinear(linear) for linear in plain]}
    best = dict.fromkeys(layers, float("inf"))
    with torch.inference_mode():
        for trial in range(trials + 1):  # the first a warm-up: oneDNN builds a kernel per shape
            for name, modules in layers.items():
                start = time.perf_counter()
                for module, x in zip(modules, inputs, strict=True):
                    module(x)
                if trial:
                    best[name] = min(best[name], time.perf_counter() - start)
    return _remember(SPEEDUPS, key, round(best["pytorch"] / best["onednn"], 3))


def _cached(name: str) -> dict[str, float]:
    path = cache_dir() / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _remember(name: str, key: str, value: float) -> float:
    """Record `value` under `key` in the cache file `name` (an atomic write: stages run in parallel); `value`."""
    path = cache_dir() / name
    cached = _cached(name) | {key: value}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=2))
    tmp.replace(path)
    return value


def forward_flops_per_token(blocks: Sequence[nn.Module], extra_params: int = 0) -> int:
    """Matmul FLOPs per token of a forward through `blocks` (2 per weight), plus `extra_params` weights
    applied to every token as well (SAE encoders, an LM head)."""
    return 2 * (sum(_weights(block) for block in blocks) + extra_params)


def _weights(block: nn.Module) -> int:
    """Parameters, and the weights of linear layers converted to oneDNN (features.sources.onednn), which
    hold them as buffers."""
    converted = sum(b.numel() for name, b in block.named_buffers() if b.is_mkldnn and name.endswith("weight"))
    return sum(p.numel() for p in block.parameters()) + converted


def throughput(tokens: int, seconds: float, flops_per_token: int,
               device: str | torch.device = "cpu") -> dict[str, float]:
    """Tokens/s, GFLOP/s and the fraction of the matmul limit of `device` reached, with the load average beside."""
    rate = tokens / max(seconds, 1e-9)
    gflops = rate * flops_per_token / 1e9
    limit = matmul_limit(device)
    if gflops > limit:  # the cached limit was measured while the machine was busy: measure it again
        limit = remember_matmul_rate(measure_device_matmul_gflops(device), device)
    return {"tokens": tokens, "tokens_per_second": round(rate, 1), "gflop_per_second": round(gflops, 2),
            "matmul_limit_gflop_per_second": limit, "fraction_of_matmul_limit": round(gflops / limit, 3),
            "load_average": round(os.getloadavg()[0], 2)}


def truncated_forward_flops(model: nn.Module, layers: Sequence[int], extra_params: int = 0) -> int:
    """FLOPs per token of a forward that stops after the deepest of `layers` (as capture_residuals does)."""
    from features.sources.lm import decoder_layers

    return forward_flops_per_token(list(decoder_layers(model))[: max(layers) + 1], extra_params)
