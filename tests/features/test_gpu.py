"""The GPU batching's arithmetic and its CPU fallback (the CUDA probe itself runs in benchmarks/gpu.py)."""

from __future__ import annotations

import torch

from features.forward.gpu import MAX_TOKENS_PER_BATCH, Batching, forward_batching, tokens_that_fit
from features.forward.throughput import measure_matmul_gflops
from tests.features.tiny import make_model


def test_the_cpu_keeps_its_fixed_batch() -> None:
    assert forward_batching(make_model("gemma3"), [1], max_tokens=64, batch_size=32) == Batching(32, None)


def test_a_token_budget_fills_its_share_of_free_memory_within_bounds() -> None:
    assert tokens_that_fit(free_bytes=1e9, bytes_per_token=1e4, max_tokens=64, share=0.5) == 50_000
    assert tokens_that_fit(free_bytes=1e6, bytes_per_token=1e4, max_tokens=512) == 512  # one whole text at least
    assert tokens_that_fit(free_bytes=1e12, bytes_per_token=1e3, max_tokens=64) == MAX_TOKENS_PER_BATCH


def test_the_matmul_rate_is_measured_in_the_dtype_asked_for() -> None:
    assert measure_matmul_gflops(64, repeats=1, trials=1, dtype=torch.float64) > 0
