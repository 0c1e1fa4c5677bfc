"""sae-lens' TopK training step in a plain loop, each token decoded from its k active latents only.

sae-lens' trainer decodes densely, [batch, width] x [width, d_in]: on a CPU that and its trainer's
overhead cost 2 to 3 times the step itself. The loop here trains the very parameters of a sae-lens
TopKTrainingSAE (features.core.sae_training builds it and saves it as sae-lens does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sae_lens.training.optim import get_lr_scheduler
from torch.nn import functional as F  # noqa: N812
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from features.core.sae_config import Schedule


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
             history: DeadHistory | None = None, label: str = "training SAE") -> None:
    """sae-lens' TopK training step (MSE plus AuxK on dead latents, Adam, gradient norm clipped at 1, sae-lens'
    learning-rate schedule), each token decoded from its k active latents only.

    As sae-lens' TopKTrainingSAE with rescale_acts_by_decoder_norm: pre-activations are scaled by the decoder
    row norms, the k kept values divided by them before decoding, so the decoder acts as unit-norm rows
    whatever their stored norm (saving folds the norms in). `batches` are already normalised. `history`, if
    given, records the window's dead count as each step starts. `label` names the progress bar.
    """
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), fused=True)
    scheduler = get_lr_scheduler("constant", optimizer, training_steps=schedule.steps, lr=lr,
                                 warm_up_steps=schedule.warmup_steps, decay_steps=schedule.decay_steps, lr_end=lr,
                                 num_cycles=1)
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_dec.device)
    steps = schedule.steps
    for step, batch in tqdm(zip(range(steps), batches, strict=False), total=steps, desc=label, unit="step"):
        dead = since_fired > schedule.dead_window_steps
        if history is not None:
            history.record(step, steps - 1, int(dead.sum()))
        norms = sae.W_dec.norm(dim=-1)
        # (batch - b_dec) @ W_enc + b_enc, with b_dec's share as one vector product added by the matmul itself
        bias = sae.b_enc - sae.b_dec @ sae.W_enc
        with torch.no_grad():  # the dense product only selects: the picked entries carry the gradient
            product = torch.addmm(bias, batch, sae.W_enc)
            scaled = product * norms
            latents = scaled.topk(k, dim=-1, sorted=False).indices
            aux_latents = auxk_latents(scaled, dead, batch.shape[-1] // 2)
            index = torch.cat([latents, aux_latents], dim=1)
        picked = picked_product(product, batch, sae.W_enc, bias, index) * norms[index]
        values = picked[:, :k].relu()
        out = decode(sae.W_dec, norms, latents, values) + sae.b_dec
        loss = (out - batch).square().sum(dim=-1).mean() + auxk_loss(sae, norms, batch, out, picked[:, k:],
                                                                     aux_latents, int(dead.sum()))
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


def auxk_latents(pre: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Per row of pre-activations [batch, width], the top `k_aux` dead latents (all of them if fewer): what
    AuxK reconstructs with. Picked among the dead columns only, a [batch, n_dead] slice, not a masked copy."""
    dead_latents = dead.nonzero().squeeze(-1)
    if len(dead_latents) == 0:
        return torch.empty(len(pre), 0, dtype=torch.long, device=pre.device)
    return dead_latents[pre[:, dead_latents].topk(min(k_aux, len(dead_latents)), dim=-1, sorted=False).indices]


def auxk_loss(sae: Any, norms: torch.Tensor, batch: torch.Tensor, out: torch.Tensor, values: torch.Tensor,
              latents: torch.Tensor, n_dead: int) -> torch.Tensor:
    """sae-lens' TopK auxiliary loss: the top d_in/2 dead latents (`latents`, their pre-activations `values`)
    reconstruct what the live ones left, scaled down while fewer than d_in/2 latents are dead."""
    if n_dead == 0:
        return out.new_zeros(())
    scale = min(n_dead / (batch.shape[-1] // 2), 1.0)
    residual = (batch - out).detach()
    reconstruction = decode(sae.W_dec, norms, latents, values)
    return sae.cfg.aux_loss_coefficient * scale * (reconstruction - residual).square().sum(dim=-1).mean()


# The share of a [batch, width] product's entries under which the gradient of W from the picked entries alone (a
# sparse product) beats the dense one: on this project's CPU, 16k latents and batch 1,024, the sparse product took
# 65 ms at k 64 and 100 ms with AuxK's 320 more a row, the dense 305 ms (one thread).
SPARSE_GRADIENT_MAX_DENSITY = 0.05


def picked_product(product: torch.Tensor, batch: torch.Tensor, W: torch.Tensor, bias: torch.Tensor,
                   index: torch.Tensor) -> torch.Tensor:
    """`product.gather(1, index)` where `product` is batch @ W + bias computed without a graph, differentiable in
    `W` and `bias` as if the product had been: a TopK SAE's loss reads a few entries of each row, so the
    gradient of W needs only those (a sparse [width, batch] x [batch, d_in] product), not the dense [d_in,
    batch] x [batch, width] one, nor a [batch, width] gradient of the product."""
    return _Picked.apply(product, batch, W, bias, index)


class _Picked(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, product: torch.Tensor, batch: torch.Tensor, W: torch.Tensor, bias: torch.Tensor,
                index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(batch, index)
        ctx.width = W.shape[1]
        return product.gather(1, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor, torch.Tensor, None]:
        batch, index = ctx.saved_tensors
        latents = index.flatten()
        grad_bias = grad.new_zeros(ctx.width).index_add_(0, latents, grad.flatten())
        if index.shape[1] <= SPARSE_GRADIENT_MAX_DENSITY * ctx.width:
            rows = torch.arange(len(index), device=index.device).repeat_interleave(index.shape[1])
            picked = torch.sparse_coo_tensor(torch.stack([latents, rows]), grad.flatten(), (ctx.width, len(batch)),
                                             check_invariants=False)
            grad_W = torch.sparse.mm(picked, batch).T.contiguous()
        else:
            grad_W = batch.T @ grad.new_zeros(len(batch), ctx.width).scatter_add_(1, index, grad)
        return None, None, grad_W, grad_bias, None
