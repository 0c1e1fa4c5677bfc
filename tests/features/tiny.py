"""Tiny random models, a word-level tokenizer and synthetic SAEs for fast offline tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

VOCAB_SIZE = 300
HIDDEN = 32
SPECIAL_TOKENS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
BOS_ID = SPECIAL_TOKENS["<bos>"]
N_WORDS = VOCAB_SIZE - len(SPECIAL_TOKENS)

_DECODER: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "vocab_size": VOCAB_SIZE,
}
_CONFIGS: dict[str, Callable[[int], tuple[type[PreTrainedModel], PreTrainedConfig]]] = {
    "gemma": lambda n: (GemmaForCausalLM, GemmaConfig(num_hidden_layers=n, **_DECODER)),
    "gemma2": lambda n: (Gemma2ForCausalLM, Gemma2Config(num_hidden_layers=n, sliding_window=4, **_DECODER)),
    "gemma3": lambda n: (
        Gemma3ForCausalLM,
        Gemma3TextConfig(num_hidden_layers=n, sliding_window=4, query_pre_attn_scalar=16, **_DECODER),
    ),
    "llama": lambda n: (LlamaForCausalLM, LlamaConfig(num_hidden_layers=n, **_DECODER)),
    "gpt2": lambda n: (
        GPT2LMHeadModel,
        GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_positions=64,
            n_embd=HIDDEN,
            n_layer=n,
            n_head=2,
            bos_token_id=BOS_ID,
            eos_token_id=1,
        ),
    ),
}
MODEL_KINDS = tuple(_CONFIGS)


def make_model(kind: str, n_layers: int = 4, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised causal LM of architecture `kind` (one of MODEL_KINDS), in eval mode."""
    model_class, config = _CONFIGS[kind](n_layers)
    torch.manual_seed(seed)
    return model_class(config).eval()


def make_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over 'w0'..'w295' that prepends <bos>, as Gemma's does."""
    vocab = {**SPECIAL_TOKENS, **{f"w{i}": len(SPECIAL_TOKENS) + i for i in range(N_WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS_ID)])
    pad = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", **pad
    )


def make_texts(lengths: list[int], seed: int = 0) -> list[str]:
    """Random texts with the given numbers of words (= tokens, BOS not counted)."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, N_WORDS, size=n)) for n in lengths]


def gemma_scope_params(d_in: int, d_sae: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays in Gemma Scope's params.npz layout, scaled so that some latents fire and some stay below threshold."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32) / np.sqrt(d_sae),
        "b_enc": rng.normal(scale=0.5, size=d_sae).astype(np.float32),
        "b_dec": rng.normal(scale=0.1, size=d_in).astype(np.float32),
        "threshold": rng.uniform(0.5, 2.0, size=d_sae).astype(np.float32),
    }


def make_jumprelu_sae(d_in: int, d_sae: int, seed: int = 0) -> Any:
    """A sae-lens JumpReLU SAE with Gemma-Scope-like random parameters (sae_lens imported lazily: it is slow)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    sae.load_state_dict({key: torch.from_numpy(value) for key, value in gemma_scope_params(d_in, d_sae, seed).items()})
    return sae.eval()
