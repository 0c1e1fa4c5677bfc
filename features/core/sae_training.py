"""Train an SAE on residual-stream activations held in memory (TopK or JumpReLU), in sae-lens' format.

The embedded profile trains small SAEs on a CPU; the same call trains real widths on a GPU.
`trainer: sae_lens` runs sae-lens' SAETrainer; `trainer: lean` (TopK only) runs the same training
step in a plain loop that decodes only the k active latents of each token (sae-lens' trainer decodes
densely: 2 to 3 times the work on a CPU) and returns the same sae-lens object, saved and loaded as
sae-lens saves and loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, Field, model_validator
from torch.nn import functional as F  # noqa: N812
from tqdm.auto import tqdm

from features.core.config import Strict


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


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled passes over `acts`, seeded, so training is repeatable."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


def _topk_sae(k: int, common: dict[str, Any]) -> Any:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    return TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common))


def _jumprelu_sae(k: int, common: dict[str, Any]) -> Any:
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        jumprelu_sparsity_loss_mode="quadratic", target_l0=float(k), **common))


DEAD_FEATURE_WINDOW = 1000  # training steps without firing before a latent counts as dead (sae-lens' default)
# architecture -> (k, sae-lens config arguments) -> a training SAE; sae-lens loads lazily (it is slow to import)
ARCHITECTURES: dict[str, Callable[[int, dict[str, Any]], Any]] = {"topk": _topk_sae, "jumprelu": _jumprelu_sae}


def train_sae(acts: torch.Tensor, cfg: SAETrainingConfig, width: int, device: str = "cpu"):
    """Train a `width`-latent SAE on `acts` [N, d_in] and return it (sae-lens, raw-activation scale).

    sae-lens rescales inputs to an average norm of sqrt(d_in) and folds the factor back into
    the weights at the end. The decoder bias starts at the activation mean: Gemma's residual
    stream is dominated by one constant direction, and a zero start wastes most of a small
    CPU budget (0.88 against 0.71 variance explained at 200k tokens, in our CPU calibration runs).
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
    sae = ARCHITECTURES[cfg.architecture](cfg.k, {
        "d_in": acts.shape[1], "d_sae": width, "dtype": "float32", "device": device,
        "normalize_activations": "expected_average_only_in"})
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(dim=0) * scale)
    batches = (batch.to(device) for batch in _batches(acts, cfg.batch_size, cfg.seed))
    if cfg.trainer == "lean":
        _fit_topk(sae, (batch * scale for batch in batches), cfg)
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


def _fit_topk(sae: Any, batches: Iterator[torch.Tensor], cfg: SAETrainingConfig) -> None:
    """sae-lens' TopK training step (MSE plus AuxK on latents dead for DEAD_FEATURE_WINDOW steps, Adam, gradient
    norm clipped at 1, constant learning rate), each token decoded from its k active latents only.

    As sae-lens' TopKTrainingSAE with rescale_acts_by_decoder_norm: pre-activations are scaled by the decoder
    row norms, the k kept values divided by them before decoding. `batches` are already normalised.
    """
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_dec.device)
    steps = math.ceil(cfg.training_samples / cfg.batch_size)  # as sae-lens: until that many samples were seen
    for _, batch in tqdm(zip(range(steps), batches, strict=False), total=steps, desc="training SAE", unit="step"):
        dead = since_fired > DEAD_FEATURE_WINDOW
        norms = sae.W_dec.norm(dim=-1)
        hidden_pre = ((batch - sae.b_dec) @ sae.W_enc + sae.b_enc) * norms
        values, latents = hidden_pre.topk(cfg.k, dim=-1, sorted=False)
        values = values.relu()
        out = _decode(sae.W_dec, norms, latents, values) + sae.b_dec
        loss = (out - batch).square().sum(dim=-1).mean() + _auxk_loss(sae, norms, batch, out, hidden_pre, dead)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            fired = torch.zeros_like(dead)
            fired[latents[values > 0]] = True
            since_fired += 1
            since_fired[fired] = 0


def _decode(W_dec: torch.Tensor, norms: torch.Tensor, latents: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_j values_j / |W_dec[latent_j]| * W_dec[latent_j] per row: the dense decode's result from the active rows."""
    return F.embedding_bag(latents, W_dec, per_sample_weights=values / norms[latents], mode="sum")


def _auxk_loss(sae: Any, norms: torch.Tensor, batch: torch.Tensor, out: torch.Tensor, hidden_pre: torch.Tensor,
               dead: torch.Tensor) -> torch.Tensor:
    """sae-lens' TopK auxiliary loss: the top d_in/2 dead latents reconstruct what the live ones left."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return out.new_zeros(())
    k_aux = min(batch.shape[-1] // 2, n_dead)
    scale = min(n_dead / (batch.shape[-1] // 2), 1.0)
    values, latents = torch.where(dead[None], hidden_pre, -torch.inf).topk(k_aux, dim=-1, sorted=False)
    residual = (batch - out).detach()
    reconstruction = _decode(sae.W_dec, norms, latents, values)
    return sae.cfg.aux_loss_coefficient * scale * (reconstruction - residual).square().sum(dim=-1).mean()
