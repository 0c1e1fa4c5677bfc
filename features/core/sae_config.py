"""How an SAE is trained: its settings (params.yaml's train_sae extends them), the step schedule they give, and
the architectures, kept apart from the training code so that the params every stage reads do not make every
stage's code fingerprint (`pipelines.fingerprint_sources`) change with the trainer's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from features.core.config import Strict


@dataclass(frozen=True)
class Schedule:
    """Training steps and the step counts of sae-lens' schedule: linear warm-up, constant, linear decay to 0."""

    steps: int
    warmup_steps: int
    decay_steps: int
    dead_window_steps: int  # steps without firing before a latent counts as dead (and joins AuxK)


DecoderInit = Literal["kaiming", "data"]  # SAETrainingConfig.decoder_init says what each means


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
    lr_warmup: float = Field(0.0, ge=0, lt=1, description="fraction of steps with a linear learning-rate warm-up")
    lr_decay: float = Field(0.0, ge=0, lt=1, description="fraction of steps, at the end, decaying it linearly to 0")
    dead_window_tokens: int = Field(
        1_024_000, gt=0, description="a latent silent for this many training tokens is dead and joins the auxiliary "
        "loss (sae-lens' default window is 1,000 steps; a short CPU run needs a window it can reach)")
    decoder_init: DecoderInit = Field(
        "kaiming", description="kaiming: sae-lens' init; data: each latent's decoder direction a distinct random "
        "training row minus the mean (the encoder its transpose), so every latent starts where the data lies")

    @model_validator(mode="after")
    def _lean_is_topk(self) -> SAETrainingConfig:
        if self.trainer == "lean" and self.architecture != "topk":
            raise ValueError(f"trainer 'lean' trains TopK SAEs only, architecture is {self.architecture!r}: set "
                             "trainer: sae_lens")
        if self.lr_warmup + self.lr_decay >= 1:
            raise ValueError(f"lr_warmup ({self.lr_warmup}) + lr_decay ({self.lr_decay}) must stay below 1: "
                             "some steps must run at the full learning rate")
        return self

    def schedule(self) -> Schedule:
        steps = math.ceil(self.training_samples / self.batch_size)  # as sae-lens: until that many samples were seen
        return Schedule(steps=steps, warmup_steps=int(steps * self.lr_warmup), decay_steps=int(steps * self.lr_decay),
                        dead_window_steps=math.ceil(self.dead_window_tokens / self.batch_size))


def _topk_sae(k: int, common: dict[str, Any]) -> Any:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    return TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common))


def _jumprelu_sae(k: int, common: dict[str, Any]) -> Any:
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        jumprelu_sparsity_loss_mode="quadratic", target_l0=float(k), **common))


# architecture -> (k, sae-lens config arguments) -> a training SAE; sae-lens loads lazily (it is slow to import)
ARCHITECTURES: dict[str, Callable[[int, dict[str, Any]], Any]] = {"topk": _topk_sae, "jumprelu": _jumprelu_sae}
