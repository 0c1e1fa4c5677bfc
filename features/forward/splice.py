"""Loss recovered: the LM's next-token loss with an SAE's reconstruction spliced into the residual stream.

For each SAE at a layer, three losses over the same tokens (SAEBench's and sae-lens' evaluation):
clean, with the layer's residual stream zero-ablated, and with it replaced by the SAE's
reconstruction. Loss recovered = (ablated - spliced) / (ablated - clean): 1 when the SAE loses
nothing the model uses, 0 when it is as bad as erasing the layer. Only counted tokens are replaced
(never padding, nor BOS unless it is pooled), as the SAEs were trained on counted tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import SAE
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from features.core.pooling import counted_token_mask
from features.errors import SaefsError
from features.forward.batching import length_sorted_batches
from features.forward.extract import tokenize
from features.sources.lm import check_layers, decoder_layers, head_logits, right_pad

BATCH_TOKENS = 512  # tokens per forward
HEAD_POSITIONS = 512  # positions whose logits over the vocabulary (262k for Gemma 3) are held at once
Replace = Callable[[Tensor], Tensor]  # residuals of the counted tokens [n, d] -> what flows on instead


@dataclass(frozen=True)
class LossRecovered:
    clean: float  # mean next-token cross-entropy, nothing replaced
    ablated: float  # with the layer's residual stream zeroed at the counted tokens
    spliced: float  # with the SAE's reconstruction in its place
    tokens: int  # predicted tokens the means are over

    @property
    def recovered(self) -> float:
        return (self.ablated - self.spliced) / (self.ablated - self.clean)


def loss_recovered(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    saes: Mapping[int, Mapping[str, SAE[Any]]],
    *,
    max_tokens: int,
    include_bos: bool = False,
    paper_compat: bool = False,
    progress: bool = True,
) -> dict[tuple[int, str], LossRecovered]:
    """(layer, SAE name) -> the three losses of each SAE, over the same texts' next-token predictions.

    `paper_compat` splices at the block's input (where the paper's code read the residual stream),
    otherwise at its output (`blocks.{L}.hook_resid_post`).
    """
    blocks = decoder_layers(model)
    check_layers(saes, len(blocks))
    tokenized = tokenize(tokenizer, texts, max_tokens)
    variants: dict[Any, tuple[nn.Module, Replace] | None] = {"clean": None}
    for layer, named in saes.items():
        variants[("ablated", layer)] = (blocks[layer], torch.zeros_like)
        for name, sae in named.items():
            variants[(layer, name)] = (blocks[layer], _reconstruct(sae))
    sums = dict.fromkeys(variants, 0.0)
    n_predicted = 0
    batch_size = max(1, BATCH_TOKENS // max_tokens)
    batches = length_sorted_batches([len(ids) for ids in tokenized.ids], batch_size)
    for rows in tqdm(batches, desc="loss recovered", unit="batch", disable=not progress):
        input_ids, attention_mask = right_pad([tokenized.ids[i] for i in rows], model.device)
        mask = counted_token_mask(input_ids, attention_mask, tokenizer.bos_token_id, include_bos)
        n_predicted += int(attention_mask[:, 1:].sum())
        for key, variant in variants.items():
            sums[key] += _summed_loss(model, input_ids, attention_mask, mask, variant, paper_compat)
    if n_predicted == 0:
        raise SaefsError("no next-token predictions to measure loss recovered on: the texts are one token long")
    means = {key: total / n_predicted for key, total in sums.items()}
    return {(layer, name): LossRecovered(means["clean"], means[("ablated", layer)], means[(layer, name)], n_predicted)
            for layer, named in saes.items() for name in named}


def _reconstruct(sae: SAE[Any]) -> Replace:
    def replace(acts: Tensor) -> Tensor:
        return sae.decode(sae.encode(acts.to(sae.dtype))).to(acts.dtype)

    return replace


def _summed_loss(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, mask: Tensor,
                 variant: tuple[nn.Module, Replace] | None, before_block: bool) -> float:
    """Summed cross-entropy of every next token that is not padding, with `variant` (a block and what replaces
    its residual stream) spliced in, if any."""
    handle = None if variant is None else _splice(*variant, mask, before_block)
    try:
        with torch.inference_mode():
            hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      use_cache=False).last_hidden_state
    finally:
        if handle is not None:
            handle.remove()
    # Only the positions that predict a real token go through the head, HEAD_POSITIONS at a time: the logits of a
    # whole batch over Gemma 3's 262k words, and their shifted copy, took 1 GB and a quarter more time.
    predicts = attention_mask[:, 1:].bool()
    states, targets = hidden[:, :-1][predicts], input_ids[:, 1:][predicts]
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(states), HEAD_POSITIONS):
            logits = head_logits(model, states[start:start + HEAD_POSITIONS])
            total += float(F.cross_entropy(logits, targets[start:start + HEAD_POSITIONS], reduction="sum"))
    return total


def _splice(block: nn.Module, replace: Replace, mask: Tensor, before_block: bool) -> RemovableHandle:
    """Hook `block` so that its output (or input) at the masked positions is `replace`d."""

    def spliced(hidden: Tensor) -> Tensor:
        hidden = hidden.clone()
        hidden[mask] = replace(hidden[mask])
        return hidden

    def on_input(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (spliced(args[0]), *args[1:]), kwargs
        return args, kwargs | {"hidden_states": spliced(kwargs["hidden_states"])}

    def on_output(_module: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], output: Any) -> Any:
        if isinstance(output, tuple):
            return (spliced(output[0]), *output[1:])
        return spliced(output)

    if before_block:
        return block.register_forward_pre_hook(on_input, with_kwargs=True)
    return block.register_forward_hook(on_output, with_kwargs=True)
