"""Train an SAE on residual-stream activations held in memory (TopK or JumpReLU), in sae-lens' format.

The embedded profile trains small SAEs on a CPU; the same call trains real widths on a GPU.
`trainer: sae_lens` runs sae-lens' SAETrainer; `trainer: lean` (TopK only) runs the same training
step in a plain loop that decodes only the k active latents of each token (sae-lens' trainer decodes
densely: 2 to 3 times the work on a CPU) and returns the same sae-lens object, saved and loaded as
sae-lens saves and loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from features.core.config import Strict

if TYPE_CHECKING:
    import torch


def check_architecture(name: str) -> str:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {name!r}: expected one of {sorted(ARCHITECTURES)}")
    return name


class SAETrainingConfig(Strict):
    """How an SAE is trained (its width aside, which each grid cell sets); params.yaml's train_sae extends it."""

    architecture: Annotated[str, AfterValidator(check_architecture)]
    k: int = Field(gt=0, description="TopK: active latents per token; JumpReLU: target L0")
    training_samples: int = Field(gt=0, description="activation vectors seen (repeated when fewer are given)")
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    seed: int
    trainer: Literal["lean", "sae_lens"] = Field(
        "lean", description="lean: the TopK step with a sparse decode (TopK only); sae_lens: sae-lens' SAETrainer")

    @model_validator(mode="after")
    def _lean_is_topk(self) -> SAETrainingConfig:
        if self.trainer == "lean" and self.architecture != "topk":
            raise ValueError(f"trainer 'lean' trains TopK SAEs only, architecture is {self.architecture!r}: set "
                             "trainer: sae_lens")
        return self


def _topk_sae(k: int, common: dict[str, Any]) -> Any:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    return TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common))


def _jumprelu_sae(k: int, common: dict[str, Any]) -> Any:
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        jumprelu_sparsity_loss_mode="quadratic", target_l0=float(k), **common))


# architecture -> (k, sae-lens config arguments) -> a training SAE; sae-lens loads lazily (it is slow to import)
ARCHITECTURES: dict[str, Callable[[int, dict[str, Any]], Any]] = {"topk": _topk_sae, "jumprelu": _jumprelu_sae}


def train_sae(acts: torch.Tensor, cfg: SAETrainingConfig, width: int, device: str = "cpu"):
    """Train a `width`-latent SAE on `acts` [N, d_in] and return it (sae-lens, raw-activation scale).

    sae-lens rescales inputs to an average norm of sqrt(d_in) and folds the factor back into
    the weights at the end. The decoder bias starts at the activation mean: Gemma's residual
    stream is dominated by one constant direction, and a zero start wastes most of a small
    CPU budget (0.88 against 0.71 variance explained at 200k tokens, in our CPU calibration runs).
    """
    import torch  # here, not at the top: params (and so every stage) import this module's config
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    from features.core.lean_topk import DEAD_FEATURE_WINDOW, fit_topk, shuffled_batches

    if acts.ndim != 2 or len(acts) < cfg.batch_size:
        raise ValueError(
            f"need at least batch_size={cfg.batch_size} activation vectors [N, d_in], got {tuple(acts.shape)}"
        )
    torch.manual_seed(cfg.seed)
    acts = acts.to(torch.float32)
    scale = math.sqrt(acts.shape[1]) / acts.norm(dim=1).mean().item()
    sae = ARCHITECTURES[cfg.architecture](cfg.k, {
        "d_in": acts.shape[1], "d_sae": width, "dtype": "float32", "device": device,
        "normalize_activations": "expected_average_only_in"})
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(dim=0) * scale)
    batches = (batch.to(device) for batch in shuffled_batches(acts, cfg.batch_size, cfg.seed))
    if cfg.trainer == "lean":
        fit_topk(sae, (batch * scale for batch in batches), cfg.k, cfg.lr, cfg.training_samples, cfg.batch_size)
        sae.fold_activation_norm_scaling_factor(scale)  # as sae-lens' trainer ends: raw-scale weights
        return sae
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=cfg.training_samples, train_batch_size_samples=cfg.batch_size,
            lr=cfg.lr, lr_end=cfg.lr, device=device, logger=LoggingConfig(log_to_wandb=False),
            dead_feature_window=DEAD_FEATURE_WINDOW,
        ),
        sae=sae,
        data_provider=batches,
    )
    trainer.activation_scaler.scaling_factor = scale  # skip re-estimating what was just measured
    return trainer.fit()


