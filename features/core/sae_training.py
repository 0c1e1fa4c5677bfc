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
from typing import TYPE_CHECKING, Any

from features.core.sae_config import ARCHITECTURES, SAETrainingConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

    from features.core.lean_topk import DeadHistory


def train_sae(acts: np.ndarray | torch.Tensor, cfg: SAETrainingConfig, width: int, device: str = "cpu",
              history: DeadHistory | None = None, label: str = "training SAE"):
    """Train a `width`-latent SAE on `acts` [N, d_in] (in memory or memory-mapped) and return it (sae-lens,
    raw-activation scale). The rows are read in the same seeded order either way: an SAE trained on a cache
    equals one trained on the same activations in memory. `history` records the trainer's dead-latent count
    over training, with either trainer. `label` names the lean loop's progress bar.

    sae-lens rescales inputs to an average norm of sqrt(d_in) and folds the factor back into
    the weights at the end. The decoder bias starts at the activation mean: Gemma's residual
    stream is dominated by one constant direction, and a zero start wastes most of a small
    CPU budget (0.88 against 0.71 variance explained at 200k tokens, in our CPU calibration runs).
    """
    import torch  # here, not at the top: params (and so every stage) import this module's config
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    from features.core.lean_topk import fit_topk, shuffled_batches

    rows = acts.numpy() if isinstance(acts, torch.Tensor) else acts
    if rows.ndim != 2 or len(rows) < cfg.batch_size:
        raise ValueError(
            f"need at least batch_size={cfg.batch_size} activation vectors [N, d_in], got {tuple(rows.shape)}"
        )
    torch.manual_seed(cfg.seed)
    mean, mean_norm = _moments(rows)
    scale = math.sqrt(rows.shape[1]) / mean_norm
    sae = ARCHITECTURES[cfg.architecture](cfg.k, {
        "d_in": rows.shape[1], "d_sae": width, "dtype": "float32", "device": device,
        "normalize_activations": "expected_average_only_in"})
    with torch.no_grad():
        sae.b_dec.copy_(torch.from_numpy(mean * scale))
    if cfg.decoder_init == "data":
        init_from_rows(sae, rows, mean, cfg.seed)
    batches = (batch.to(device) for batch in shuffled_batches(rows, cfg.batch_size, cfg.seed))
    schedule = cfg.schedule()
    if cfg.trainer == "lean":
        fit_topk(sae, (batch * scale for batch in batches), cfg.k, cfg.lr, schedule, history, label)
        sae.fold_activation_norm_scaling_factor(scale)  # as sae-lens' trainer ends: raw-scale weights
        return sae
    if history is not None:  # sae-lens' trainer draws one batch per step: read its dead mask as it does
        batches = _watched(batches, lambda: trainer, schedule.steps, history)
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=cfg.training_samples, train_batch_size_samples=cfg.batch_size,
            lr=cfg.lr, lr_end=cfg.lr, lr_warm_up_steps=schedule.warmup_steps, lr_decay_steps=schedule.decay_steps,
            device=device, logger=LoggingConfig(log_to_wandb=False), dead_feature_window=schedule.dead_window_steps,
        ),
        sae=sae,
        data_provider=batches,
    )
    trainer.activation_scaler.scaling_factor = scale  # skip re-estimating what was just measured
    return trainer.fit()


def _watched(batches: Any, trainer: Callable[[], Any], steps: int, history: DeadHistory) -> Any:
    """`batches`, recording sae-lens' trainer's dead-latent count as each step draws its batch."""
    for step, batch in enumerate(batches):
        history.record(step, steps - 1, int(trainer().dead_neurons.sum()))
        yield batch


def init_from_rows(sae: Any, rows: np.ndarray, mean: np.ndarray, seed: int) -> None:
    """Point each latent's decoder row at a distinct random row of `rows` minus `mean`, keeping the row's norm,
    and set the encoder to the decoder's transpose (as sae-lens' init does).

    A random direction of a nearly low-rank residual stream (Gemma 3's early blocks) barely meets the data: such a
    latent never wins the top k, and AuxK revives it only at a learning rate that sets off waves of deaths later.
    """
    import numpy as np
    import torch

    if len(rows) < sae.cfg.d_sae:
        raise ValueError(f"decoder_init 'data' draws one training row per latent: {len(rows)} rows for "
                         f"{sae.cfg.d_sae} latents; collect more tokens or use decoder_init: kaiming")
    picked = np.sort(np.random.default_rng(seed).choice(len(rows), sae.cfg.d_sae, replace=False))
    directions = torch.from_numpy(np.asarray(rows[picked], dtype=np.float32) - mean)
    directions /= directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        sae.W_dec.copy_(directions * sae.W_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)


def _moments(rows: np.ndarray, chunk: int = 65_536) -> tuple[np.ndarray, float]:
    """Mean vector (float32) and mean row norm of `rows`, in float64 chunks (a memory map is never loaded whole)."""
    import numpy as np

    total, norms = np.zeros(rows.shape[1]), 0.0
    for start in range(0, len(rows), chunk):
        part = np.asarray(rows[start : start + chunk], dtype=np.float64)
        total += part.sum(axis=0)
        norms += float(np.linalg.norm(part, axis=1).sum())
    return (total / len(rows)).astype(np.float32), norms / len(rows)
