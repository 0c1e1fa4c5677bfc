"""sae-lens' TopK training step in a plain loop, each token decoded from its k active latents only.

sae-lens' trainer decodes densely, [batch, width] x [width, d_in]: on a CPU that and its trainer's
overhead cost 2 to 3 times the step itself. The loop here trains the very parameters of a sae-lens
TopKTrainingSAE (features.core.sae_training builds it and saves it as sae-lens does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sae_lens.training.optim import get_lr_scheduler
from torch.nn import functional as F  # noqa: N812
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Schedule:
    """Training steps and the step counts of sae-lens' schedule: linear warm-up, constant, linear decay to 0."""

    steps: int
    warmup_steps: int
    decay_steps: int
    dead_window_steps: int  # steps without firing before a latent counts as dead (and joins AuxK)


@dataclass
class DeadHistory:
    """The training window's dead-latent count over training: how many latents had not fired for more than
    `dead_window_steps` steps, every `every` steps and at the last one.

    The count a trainer acts on (AuxK reads those latents), not a held-out figure: it shows latents dying in
    waves and being revived, and whether the last window still counts the latents that die late in the
    learning-rate decay (held-out dead fraction far above the last count means they died unseen).
    """

    every: int = 1
    steps: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)

    def record(self, step: int, last: int, dead: int) -> None:
        """Keep step `step`'s count (0-based) if it falls on the grid or is the `last` step."""
        if step % self.every == 0 or step == last:
            self.steps.append(step)
            self.dead.append(dead)

    def as_dict(self) -> dict[str, list[int]]:
        return {"step": self.steps, "dead": self.dead}


def shuffled_batches(acts: np.ndarray, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled passes over the rows of `acts` (an array or a read-only memory map), seeded, so
    training is repeatable and reads the same rows whether they come from memory or from disk."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=generator).numpy()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield torch.from_numpy(np.asarray(acts[order[start : start + batch_size]], dtype=np.float32))


def fit_topk(sae: Any, batches: Iterator[torch.Tensor], k: int, lr: float, schedule: Schedule,
             history: DeadHistory | None = None) -> None:
    """sae-lens' TopK training step (MSE plus AuxK on dead latents, Adam, gradient norm clipped at 1, sae-lens'
    learning-rate schedule), each token decoded from its k active latents only.

    As sae-lens' TopKTrainingSAE with rescale_acts_by_decoder_norm: pre-activations are scaled by the decoder
    row norms, the k kept values divided by them before decoding, so the decoder acts as unit-norm rows
    whatever their stored norm (saving folds the norms in). `batches` are already normalised. `history`, if
    given, records the window's dead count as each step starts.
    """
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=True)
    scheduler = get_lr_scheduler("constant", optimizer, training_steps=schedule.steps, lr=lr,
                                 warm_up_steps=schedule.warmup_steps, decay_steps=schedule.decay_steps, lr_end=lr,
                                 num_cycles=1)
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_dec.device)
    steps = schedule.steps
    for step, batch in tqdm(zip(range(steps), batches, strict=False), total=steps, desc="training SAE", unit="step"):
        dead = since_fired > schedule.dead_window_steps
        if history is not None:
            history.record(step, steps - 1, int(dead.sum()))
        norms = sae.W_dec.norm(dim=-1)
        # (batch - b_dec) @ W_enc + b_enc, with b_dec's share as one vector product added by the matmul itself:
        # the batch needs no gradient, so autograd skips a third matmul of the step (the gradient with respect to
        # the encoder's input), and no [batch, width] pass adds the biases
        hidden_pre = torch.addmm(sae.b_enc - sae.b_dec @ sae.W_enc, batch, sae.W_enc) * norms
        values, latents = hidden_pre.topk(k, dim=-1, sorted=False)
        values = values.relu()
        out = decode(sae.W_dec, norms, latents, values) + sae.b_dec
        loss = (out - batch).square().sum(dim=-1).mean() + auxk_loss(sae, norms, batch, out, hidden_pre, dead)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        with torch.no_grad():
            fired = torch.zeros_like(dead)
            fired[latents[values > 0]] = True
            since_fired += 1
            since_fired[fired] = 0


def decode(W_dec: torch.Tensor, norms: torch.Tensor, latents: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_j values_j / |W_dec[latent_j]| * W_dec[latent_j] per row: the dense decode's result from the active rows."""
    return F.embedding_bag(latents, W_dec, per_sample_weights=values / norms[latents], mode="sum")


def auxk_loss(sae: Any, norms: torch.Tensor, batch: torch.Tensor, out: torch.Tensor, hidden_pre: torch.Tensor,
               dead: torch.Tensor) -> torch.Tensor:
    """sae-lens' TopK auxiliary loss: the top d_in/2 dead latents reconstruct what the live ones left."""
    dead_latents = dead.nonzero().squeeze(-1)
    n_dead = len(dead_latents)
    if n_dead == 0:
        return out.new_zeros(())
    k_aux = min(batch.shape[-1] // 2, n_dead)
    scale = min(n_dead / (batch.shape[-1] // 2), 1.0)
    # the top among the dead columns only: a [batch, n_dead] slice, not a masked copy of the whole [batch, width]
    values, picked = hidden_pre[:, dead_latents].topk(k_aux, dim=-1, sorted=False)
    latents = dead_latents[picked]
    residual = (batch - out).detach()
    reconstruction = decode(sae.W_dec, norms, latents, values)
    return sae.cfg.aux_loss_coefficient * scale * (reconstruction - residual).square().sum(dim=-1).mean()
