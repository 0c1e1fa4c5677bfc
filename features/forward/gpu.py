"""Forward batches sized to a GPU's memory rather than to the CPU's fixed batch.

On the CPU a truncated forward reaches its matmul rate from about a thousand tokens per batch, and loses it again
when a batch's activations outgrow the caches, so `extract.batch_size` texts per batch, within the CPU's padded-token
budget (features.forward.extract.CPU_TOKENS_PER_BATCH), serve it and bound its memory. A GPU needs far
more tokens per batch to keep its tensor cores busy, and what bounds a batch there is memory: so on CUDA a batch
is a budget of padded tokens, as many as fit in a share of the free memory. The bytes per token come from a probe
forward at the longest width rather than from a model of each architecture (attention implementations, MLP widths
and the captured layers all differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from features.sources.lm import capture_residuals

PROBE_TOKENS = 8192  # enough rows that fixed allocations are a small part of the per-token figure
# The forward's share of free memory; the rest holds the SAE code groups (extract's max_code_elements), the
# pooling copies of the captured residuals and the allocator's fragmentation.
MEMORY_SHARE = 0.5
# Past 2^18 tokens every matmul of even a 270M model is a dense block of milliseconds, so a larger batch buys no
# occupancy, while its CPU-side work (padding, CSR assembly) grows and tokens x MLP-width tensors near 2^31 elements.
MAX_TOKENS_PER_BATCH = 2**18


@dataclass(frozen=True)
class Batching:
    """What `extract` and `token_batches` take: texts per batch, and padded tokens per batch (None: no budget)."""

    batch_size: int
    tokens_per_batch: int | None


def forward_batching(model: PreTrainedModel, layers: Sequence[int], max_tokens: int, batch_size: int) -> Batching:
    """`batch_size` texts per batch on the CPU (within its default token budget); on CUDA a token budget that fills
    the free memory, which alone bounds a batch (every text holds a token, so a text count equal to the budget never
    binds first)."""
    if model.device.type != "cuda":
        return Batching(batch_size, None)
    budget = cuda_tokens_per_batch(model, layers, max_tokens)
    return Batching(budget, budget)


def cuda_tokens_per_batch(model: PreTrainedModel, layers: Sequence[int], max_tokens: int,
                          share: float = MEMORY_SHARE) -> int:
    """Padded tokens per batch that fill `share` of the GPU's free memory, from the peak memory of a probe
    truncated forward (the captured residuals included) of max_tokens-wide rows."""
    device = model.device
    ids = torch.zeros(max(1, PROBE_TOKENS // max_tokens), max_tokens, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    capture_residuals(model, ids, mask, layers)  # the first forward allocates workspaces, not per-token memory
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    captured = capture_residuals(model, ids, mask, layers)
    bytes_per_token = (torch.cuda.max_memory_allocated(device) - before) / ids.numel()
    del captured
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # held by torch's cache, free
    return tokens_that_fit(free, bytes_per_token, max_tokens, share)


def tokens_that_fit(free_bytes: float, bytes_per_token: float, max_tokens: int, share: float = MEMORY_SHARE) -> int:
    """`share` of `free_bytes` in tokens, at least one max_tokens-long text, at most MAX_TOKENS_PER_BATCH."""
    fit = int(share * free_bytes / max(bytes_per_token, 1.0))
    return max(max_tokens, min(fit, MAX_TOKENS_PER_BATCH))
