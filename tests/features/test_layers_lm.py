from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from features.core.layers import hidden_state_index, hook_name, parse_hook
from features.errors import SaefsError
from features.sources.lm import capture_residuals, decoder_layers, load_causal_lm, load_tokenizer
from tests.features.tiny import MODEL_KINDS, VOCAB_SIZE, make_model, make_tokenizer


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded rows, as extraction feeds them."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, VOCAB_SIZE, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    return input_ids, attention_mask


def hf_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states


def test_hook_names_round_trip() -> None:
    assert hook_name(12) == "blocks.12.hook_resid_post"
    assert parse_hook("blocks.12.hook_resid_post") == 12


@pytest.mark.parametrize("bad", ["blocks.x.hook_resid_post", "blocks.3.hook_resid_pre", "layer_3", ""])
def test_parse_hook_names_the_bad_string_and_the_form(bad: str) -> None:
    with pytest.raises(SaefsError, match=r"blocks\.<L>\.hook_resid_post") as error:
        parse_hook(bad)
    assert repr(bad) in str(error.value)


def test_hidden_state_index_is_one_block_early_in_paper_mode() -> None:
    assert hidden_state_index(5, paper_compat=False) == 6
    assert hidden_state_index(5, paper_compat=True) == 5


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_resid_post_equals_hf_hidden_state_after_the_block(kind: str) -> None:
    model = make_model(kind)
    input_ids, attention_mask = padded_batch()
    expected = hf_hidden_states(model, input_ids, attention_mask)
    captured = capture_residuals(model, input_ids, attention_mask, [0, 2])  # the last block (3) is post-norm in HF
    for layer in (0, 2):
        torch.testing.assert_close(captured[layer], expected[hidden_state_index(layer, paper_compat=False)])


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_paper_compat_reads_the_block_input(kind: str) -> None:
    model = make_model(kind)
    input_ids, attention_mask = padded_batch()
    expected = hf_hidden_states(model, input_ids, attention_mask)
    captured = capture_residuals(model, input_ids, attention_mask, [0, 1, 3], paper_compat=True)
    for layer in (0, 1, 3):  # layer 0 is the (scaled, for Gemma) embedding output
        torch.testing.assert_close(captured[layer], expected[hidden_state_index(layer, paper_compat=True)])


def test_hf_final_hidden_state_is_normed_resid_post() -> None:
    model = make_model("gemma2")
    input_ids, attention_mask = padded_batch()
    expected = hf_hidden_states(model, input_ids, attention_mask)
    last = capture_residuals(model, input_ids, attention_mask, [3])[3]
    assert not torch.allclose(last, expected[4])
    with torch.inference_mode():
        torch.testing.assert_close(model.model.norm(last), expected[4])


@pytest.mark.parametrize("paper_compat", [False, True])
def test_forward_stops_after_the_deepest_layer(paper_compat: bool) -> None:
    model = make_model("gemma3")
    calls: list[str] = []
    blocks = decoder_layers(model)
    for index, block in enumerate(blocks):
        block.register_forward_hook(lambda *_, index=index: calls.append(f"block {index}"))
    model.lm_head.register_forward_hook(lambda *_: calls.append("lm_head"))
    model.model.norm.register_forward_hook(lambda *_: calls.append("norm"))
    captured = capture_residuals(model, *padded_batch(), [0, 1], paper_compat=paper_compat)
    assert set(captured) == {0, 1}
    assert calls == (["block 0"] if paper_compat else ["block 0", "block 1"])
    assert all(not block._forward_pre_hooks and len(block._forward_hooks) == 1 for block in blocks)


def test_a_layer_beyond_the_depth_is_refused() -> None:
    model = make_model("gemma2", n_layers=18)
    with pytest.raises(SaefsError, match=r"layer 30 is beyond the model's depth \(18 blocks: 0\.\.17\)"):
        capture_residuals(model, *padded_batch(), [5, 30])


def other_family(kind: str) -> nn.Module:
    """A tiny random causal LM (3 blocks) of a family that no table in saefs names, built offline."""
    from transformers import (
        AutoModelForCausalLM,
        FalconConfig,
        GPTNeoXConfig,
        MistralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
    )

    shape = {"vocab_size": VOCAB_SIZE, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
    decoder = shape | {"intermediate_size": 64, "num_key_value_heads": 1}
    configs = {
        "mistral": lambda: MistralConfig(head_dim=16, **decoder),
        "qwen2": lambda: Qwen2Config(**decoder),
        "phi3": lambda: Phi3Config(pad_token_id=0, bos_token_id=2, eos_token_id=1, **decoder),
        "opt": lambda: OPTConfig(ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64, **shape),
        "gpt_neox": lambda: GPTNeoXConfig(intermediate_size=64, **shape),
        "falcon": lambda: FalconConfig(**shape),
    }
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(configs[kind]()).eval()


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "phi3", "opt", "gpt_neox", "falcon"])
def test_decoder_blocks_of_other_families_are_found_and_read_like_hf(kind: str) -> None:
    model = other_family(kind)
    input_ids, attention_mask = padded_batch()
    expected = hf_hidden_states(model, input_ids, attention_mask)
    assert len(decoder_layers(model)) == 3
    post = capture_residuals(model, input_ids, attention_mask, [0, 1])  # block 2 is post-norm in HF
    pre = capture_residuals(model, input_ids, attention_mask, [0, 1, 2], paper_compat=True)
    for layer in (0, 1):
        torch.testing.assert_close(post[layer], expected[layer + 1])
    for layer in (0, 1, 2):
        torch.testing.assert_close(pre[layer], expected[layer])


def test_a_model_without_one_stack_of_blocks_is_named() -> None:
    class TwoStacks(nn.Module):  # which list holds the residual stream is ambiguous
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(model_type="twin", num_hidden_layers=2)
            self.left = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
            self.right = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    ambiguous = r"unsupported architecture 'twin' \(TwoStacks\).*2 candidates \(left, right\)"
    with pytest.raises(SaefsError, match=ambiguous):
        decoder_layers(TwoStacks())
    flat = nn.Linear(2, 2)
    flat.config = SimpleNamespace(model_type="mlp", num_hidden_layers=4)  # type: ignore[assignment]
    with pytest.raises(SaefsError, match=r"unsupported architecture 'mlp'.*num_hidden_layers=4.*found none"):
        decoder_layers(flat)


def test_load_from_a_saved_folder_uses_safetensors_and_pads_right(tmp_path: Path) -> None:
    model = make_model("llama")
    model.save_pretrained(tmp_path)
    make_tokenizer(with_pad=False).save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded = load_causal_lm(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert (loaded.dtype, tokenizer.pad_token, tokenizer.padding_side) == (torch.float32, "<eos>", "right")
    input_ids, attention_mask = padded_batch()
    with torch.inference_mode():
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, model(input_ids=input_ids).logits)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_cpu_model_runs_its_decoder_linears_through_onednn_with_the_same_hidden_states_and_flops(
        tmp_path: Path, kind: str) -> None:
    from features.forward.throughput import forward_flops_per_token

    model = make_model(kind)
    model.save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path, onednn=True)
    linears = [m for m in loaded.base_model.modules() if isinstance(m, nn.Linear)]
    converted = [m for m in loaded.base_model.modules() if type(m).__name__ == "OneDNNLinear"]
    # every decoder linear runs on oneDNN; GPT-2's Conv1D layers stay
    assert not linears and len(converted) == sum(isinstance(m, nn.Linear) for m in model.base_model.modules())
    # each block's gated MLP (Gemma's GELU, Llama's SiLU) runs with its activation and multiply fused
    fused = [m for m in loaded.base_model.modules() if type(m).__name__ == "OneDNNGatedMLP"]
    assert len(fused) == (0 if kind == "gpt2" else len(decoder_layers(model)))
    assert type(loaded.get_output_embeddings()) is nn.Linear  # the LM head, tied to the embeddings, stays
    input_ids, attention_mask = padded_batch()
    for ours, theirs in zip(hf_hidden_states(loaded, input_ids, attention_mask),
                            hf_hidden_states(model, input_ids, attention_mask), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert forward_flops_per_token(decoder_layers(loaded)) == forward_flops_per_token(decoder_layers(model))


class _GatedMLP(nn.Module):
    """The names and shapes of a gated MLP, computing `down(act(gate(x)) * up(x))` or, `added`, a sum instead."""

    def __init__(self, act_fn: nn.Module, added: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
        self.act_fn, self.added = act_fn, added

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.act_fn(self.gate_proj(x)), self.up_proj(x)
        return self.down_proj(gate + up if self.added else gate * up)


@pytest.mark.parametrize(("act_fn", "added", "fused"), [
    (nn.SiLU(), False, True),  # biases too
    (nn.GELU(approximate="tanh"), False, True),
    (nn.GELU(), False, True),  # erf's GELU, not mistaken for the tanh one
    (nn.Sigmoid(), False, False),  # no post-op fuses it
    (nn.SiLU(), True, False),  # the names of a gated MLP, another computation
])
def test_a_gated_mlp_is_fused_only_where_the_fused_products_compute_what_it_does(
        act_fn: nn.Module, added: bool, fused: bool) -> None:
    from features.sources.onednn import OneDNNGatedMLP, OneDNNLinear, onednn_linears

    mlp = _GatedMLP(act_fn, added)
    x = torch.randn(3, 5, 8)
    with torch.inference_mode():
        expected = mlp(x)
        converted = onednn_linears(nn.Sequential(mlp))[0]
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(converted, OneDNNGatedMLP) is fused
    if not fused:  # its linears still run on oneDNN, one by one
        assert converted is mlp and isinstance(mlp.gate_proj, OneDNNLinear)


@pytest.mark.parametrize("speedup", [0.5, 2.0])
def test_a_cpu_model_takes_onednn_only_where_it_measured_faster_on_this_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speedup: float) -> None:
    from features.forward import throughput

    monkeypatch.setenv(throughput.CACHE_ENV, str(tmp_path / "cache"))
    make_model("llama").save_pretrained(tmp_path / "model")
    block = decoder_layers(make_model("llama"))[0]
    measured = throughput.onednn_speedup([m for m in block.modules() if isinstance(m, nn.Linear)])
    assert measured > 0
    # plant the other machine: a CPU where oneDNN is slower (an AMD Zen 3) or faster (a Zen 5) than MKL
    cache = tmp_path / "cache" / throughput.SPEEDUPS
    (key,) = json.loads(cache.read_text())
    if Path("/proc/cpuinfo").is_file():  # two CPU generations may share a model name: the key tells them apart
        assert "cpu family" in key
    cache.write_text(json.dumps({key: speedup}))
    loaded = load_causal_lm(tmp_path / "model")
    kinds = {type(m).__name__ for m in loaded.base_model.modules() if type(m).__name__ in ("Linear", "OneDNNLinear")}
    assert kinds == ({"OneDNNLinear"} if speedup > 1 else {"Linear"})


def test_read_texts_is_the_span_a_truncated_forward_reads():
    from features.sources.lm import read_texts

    tokenizer = make_tokenizer()
    texts = ["w1 w2 w3 w4 w5 w6", "w7 w8", "w9"]
    read = read_texts(tokenizer, texts, max_tokens=4)
    assert read == ["w1 w2 w3", "w7 w8", "w9"]
    # the token ids extract keeps (BOS and the first max_tokens - 1), BOS aside
    assert [tokenizer(text)["input_ids"][1:4] for text in texts] == [
        tokenizer(text, add_special_tokens=False)["input_ids"] for text in read]
