"""Train an SAE with sae-lens on residual-stream activations held in memory (TopK or JumpReLU).

The embedded profile trains small SAEs on a CPU; the same call trains real widths on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

Architecture = Literal["topk", "jumprelu"]


@dataclass(frozen=True)
class SAETrainingConfig:
    architecture: Architecture = "topk"
    width: int = 4096
    k: int = 32  # TopK: active latents per token; JumpReLU: the target L0
    training_samples: int = 200_000  # activation vectors seen (with repetition when fewer are given)
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled passes over `acts`, seeded, so training is repeatable."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


def _training_sae(cfg: SAETrainingConfig, d_in: int, device: str):
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig

    common = {"d_in": d_in, "d_sae": cfg.width, "dtype": "float32", "device": device,
              "normalize_activations": "expected_average_only_in"}
    if cfg.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, **common))
    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        jumprelu_sparsity_loss_mode="quadratic", target_l0=float(cfg.k), **common))


def train_sae(acts: torch.Tensor, cfg: SAETrainingConfig, device: str = "cpu"):
    """Train on `acts` [N, d_in] and return the trained sae-lens SAE (raw-activation scale).

    sae-lens rescales inputs to an average norm of sqrt(d_in) and folds the factor back into
    the weights at the end. The decoder bias starts at the activation mean: Gemma's residual
    stream is dominated by one constant direction, and a zero start wastes most of a small
    CPU budget (../shared/CALIBRATION.md: 0.88 against 0.71 variance explained at 200k tokens).
    """
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    if acts.ndim != 2 or len(acts) < cfg.batch_size:
        raise ValueError(
            f"need at least batch_size={cfg.batch_size} activation vectors [N, d_in], got {tuple(acts.shape)}"
        )
    torch.manual_seed(cfg.seed)
    acts = acts.to(torch.float32)
    scale = math.sqrt(acts.shape[1]) / acts.norm(dim=1).mean().item()
    sae = _training_sae(cfg, acts.shape[1], device)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(dim=0) * scale)
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=cfg.training_samples, train_batch_size_samples=cfg.batch_size,
            lr=cfg.lr, lr_end=cfg.lr, device=device, logger=LoggingConfig(log_to_wandb=False),
        ),
        sae=sae,
        data_provider=(batch.to(device) for batch in _batches(acts, cfg.batch_size, cfg.seed)),
    )
    trainer.activation_scaler.scaling_factor = scale  # skip re-estimating what was just measured
    return trainer.fit()
