"""Causal LM loading and residual-stream capture that stops after the deepest needed block."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from features.errors import SaefsError
from features.sources.models import model_location
from features.sources.onednn import convertible, onednn_linears

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """'auto' means the GPU when there is one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_prepared(prepared_dir: str | Path, device: str = "cpu",
                  onednn: bool | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer of a prepare_model output folder (weights inside it, in the HF cache, or on a path)."""
    location, revision = model_location(Path(prepared_dir))
    return load_causal_lm(location, device, revision=revision, onednn=onednn), load_tokenizer(location, revision)


def prepared_tokenizer(prepared_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a prepare_model output folder, without loading the model."""
    return load_tokenizer(*model_location(Path(prepared_dir)))


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on CUDA (the paper's models were run in half precision), fp32 on CPU (bf16 matmuls are slow there).

    bf16 weights rather than fp32 weights under autocast: every forward of every stage then runs at the tensor-core
    rate with no context to enter at each call site, the weights take half the memory (room for the batch), and
    the dtype is part of the model's identity in extract's fingerprint. The cost is a bf16 residual stream, where
    autocast would keep the residual additions in fp32; benchmarks/gpu.py times both. SAEs meet the bf16
    residuals under autocast (features.sources.sae.encode).
    """
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_causal_lm(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    onednn: bool | None = None,
) -> PreTrainedModel:
    """Load an HF causal LM (a folder or a cached hub id) from safetensors only, in eval mode on `device`. On a CPU
    its decoder's linear layers run through oneDNN (`onednn_linears`) if `onednn` is True, or, by default, if
    oneDNN measured faster than PyTorch's own product on this machine for the model's block shapes."""
    model = AutoModelForCausalLM.from_pretrained(
        str(path), revision=revision, dtype=dtype or default_dtype(device), device_map=device, use_safetensors=True
    )
    if torch.device(device).type == "cpu" and (onednn or onednn is None and _onednn_is_faster(model)):
        onednn_linears(model.base_model)
    return model.eval()


def _onednn_is_faster(model: PreTrainedModel) -> bool:
    from features.forward.throughput import onednn_speedup

    linears = [m for m in decoder_layers(model)[0].modules() if convertible(m)]
    if not linears or not torch.backends.mkldnn.is_available():
        return False
    speedup = onednn_speedup(linears)
    log.info("decoder linears on %s: oneDNN runs a block's at %.2fx PyTorch's product on this CPU",
             "oneDNN" if speedup > 1 else "PyTorch's product", speedup)
    return speedup > 1


def load_tokenizer(path: str | Path, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer beside a model; batches are right-padded, with EOS as pad when none is defined."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def read_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int) -> list[str]:
    """The part of each text a forward with `max_tokens` (BOS included) reads: its first max_tokens - 1 tokens.

    The character span comes from the fast tokenizer's offsets, so a baseline on these strings sees
    the words the LM saw, as written.
    """
    if not tokenizer.is_fast:
        raise SaefsError(f"{type(tokenizer).__name__} is a slow tokenizer without character offsets: "
                         "prepare the model with its tokenizer.json (prepare_model saves one)")
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens - 1,
                        return_offsets_mapping=True)
    return [text[: offsets[-1][1]] if offsets else "" for text, offsets in zip(texts, encoded["offset_mapping"],
                                                                            strict=True)]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM, in order, found by shape rather than by a per-architecture path.

    They are the one `nn.ModuleList` under the base model (`model.model`, `model.transformer`, ...)
    holding `num_hidden_layers` modules: `layers` (Llama, Gemma, Mistral, Qwen2, Phi3, GPT-NeoX),
    `h` (GPT-2, Falcon), `decoder.layers` (OPT).
    """
    config: Any = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text_config, "num_hidden_layers", None)
    base = getattr(model, "base_model", model)
    found = [(name, module) for name, module in base.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) == n_layers]
    if len(found) != 1:
        where = f"{len(found)} candidates ({', '.join(name for name, _ in found)})" if found else "none"
        raise SaefsError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}): saefs reads the residual stream "
            f"after each decoder block, found as the one module list of num_hidden_layers={n_layers} blocks "
            f"under the base model, and found {where}; use a Hugging Face causal LM with one stack of decoder blocks"
        )
    return found[0][1]


def head_logits(model: PreTrainedModel, hidden: Tensor) -> Tensor:
    """fp32 logits of final hidden states [..., d]: the model's output embedding, then its final soft-capping (Gemma
    2), as its own forward applies them, for the positions a caller needs only (a 262k-word head is costly)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def with_bos(ids: Sequence[int], bos_id: int | None) -> list[int]:
    """Token ids that start with BOS, prepended where the tokenizer does not add it (as TransformerLens does)."""
    ids = list(ids)
    return ids if bos_id is None or ids[:1] == [bos_id] else [bos_id, *ids]


def right_pad(ids: Sequence[Sequence[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded input ids and attention mask. The pad id is irrelevant: padded positions are
    masked out of attention, and causal attention keeps them from touching real tokens."""
    width = max(len(row) for row in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    attention_mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids.to(device), attention_mask.to(device)


def model_width(model: PreTrainedModel) -> int:
    """Width of the residual stream (d_model)."""
    return int(model.config.get_text_config().hidden_size)


def check_layers(layers: Iterable[int], n_blocks: int) -> list[int]:
    """Sorted unique layers, each a valid block index; a clear error otherwise."""
    checked = sorted(set(layers))
    if not checked:
        raise SaefsError("no layers requested: pass at least one block index")
    for layer in checked:
        if layer < 0 or layer >= n_blocks:
            raise SaefsError(f"layer {layer} is beyond the model's depth ({n_blocks} blocks: 0..{n_blocks - 1})")
    return checked


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block: nothing after it is needed."""


def capture_residuals(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    layers: Iterable[int],
    *,
    paper_compat: bool = False,
    **inputs: Any,
) -> dict[int, Tensor]:
    """Residual stream [B, T, d] at each requested layer from one truncated forward pass; `inputs` are further
    model inputs (a vision-language model's image features and token types).

    Default: the output of block L (`blocks.L.hook_resid_post` = HF `hidden_states[L+1]` for
    every block but the last, whose HF hidden state is taken after the final norm).
    `paper_compat=True`: the input of block L (= HF `hidden_states[L]`, embedding scaling
    included for L=0), as the paper's code read it. Blocks after the deepest layer and the LM
    head never run.
    """
    blocks = decoder_layers(model)
    wanted = check_layers(layers, len(blocks))
    captured: dict[int, Tensor] = {}
    handles = [
        _register_capture(blocks[layer], layer, captured, stop=layer == wanted[-1], before_block=paper_compat)
        for layer in wanted
    ]
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer for layer in wanted if layer not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached blocks {missing} of {type(model).__name__}")
    return captured


def _register_capture(
    block: nn.Module, layer: int, captured: dict[int, Tensor], *, stop: bool, before_block: bool
) -> RemovableHandle:
    """Hook `block` to store its input (before_block) or output hidden state under `layer`."""

    def keep(hidden: Tensor) -> None:
        captured[layer] = hidden
        if stop:
            raise _StopForward

    def on_input(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        keep(args[0] if args else kwargs["hidden_states"])

    def on_output(_module: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], output: Any) -> None:
        # Some architectures return (hidden_states, ...) tuples, transformers 5 mostly a bare tensor.
        keep(output[0] if isinstance(output, tuple) else output)

    if before_block:
        return block.register_forward_pre_hook(on_input, with_kwargs=True)
    return block.register_forward_hook(on_output, with_kwargs=True)
