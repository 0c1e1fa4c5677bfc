"""A CPU decoder's linear layers on oneDNN's product, weights packed once, a gated MLP's activation and multiply fused.

PyTorch multiplies fp32 matrices on a CPU with MKL, which on an AMD Zen 5 (AVX-512) reaches about half of what
oneDNN does: a 2,048-square product at 175 against 360 GFLOP/s, Gemma 3's extraction at 1,230 against 2,000
tokens/s. On a Zen 3 oneDNN measured the slower, so `features.sources.lm.load_causal_lm` measures which is faster
on each machine. The ops are those torch.compile (inductor) emits for a frozen CPU model; the products are the same,
summed in another order (Gemma 3's and SmolLM2's hidden states within 3e-6 relative). Inference only: the
packed weights take no gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

# oneDNN post-ops a gated MLP's activation can fuse into (attr, algorithm), with what each computes
POST_OPS: dict[tuple[str, str], Callable[[Tensor], Tensor]] = {
    ("gelu", "tanh"): lambda z: F.gelu(z, approximate="tanh"),  # Gemma
    ("swish", ""): F.silu,  # Llama, Mistral, Qwen
    ("gelu", "none"): F.gelu,
    ("relu", ""): F.relu,
}


def onednn_linears(module: nn.Module) -> nn.Module:
    """Run the fp32 `nn.Linear` layers under `module` (a model's decoder, not its LM head) through oneDNN, and each
    gated MLP (`down_proj(act_fn(gate_proj(x)) * up_proj(x))`) as `OneDNNGatedMLP` where it computes the same.
    Left as it is where PyTorch lacks oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return module
    for name, child in list(module.named_children()):
        replacement = fused_gated_mlp(child)
        if replacement is None and convertible(child):
            replacement = OneDNNLinear(child)
        if replacement is None:
            onednn_linears(child)
        else:
            setattr(module, name, replacement)
    return module


def convertible(module: nn.Module) -> bool:
    """A layer oneDNN's module replaces: a plain fp32 linear layer."""
    return type(module) is nn.Linear and module.weight.dtype == torch.float32


class OneDNNLinear(nn.Module):
    """An fp32 linear layer on oneDNN's product, its weight packed once into oneDNN's blocked layout (dense tensors
    in and out, any leading dimensions).

    `torch.utils.mkldnn.MkldnnLinear` reorders its input into oneDNN's layout and its output back at every call: on
    an AMD Zen 4 (2 threads, 1,024 rows) a Gemma 3 block's seven products took 73 ms that way, 75 ms on MKL and 56 ms
    packed.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor, post_op: tuple[str, str] = ("none", "")) -> Tensor:
        attr, algorithm = post_op
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, attr, [], algorithm)

    def times(self, x: Tensor, other: Tensor) -> Tensor:
        """`self(x) * other`, the multiply fused into the product's output."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "mul")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class OneDNNGatedMLP(nn.Module):
    """A gated MLP, `down_proj(act_fn(gate_proj(x)) * up_proj(x))`, as three oneDNN products with the activation and
    the multiply fused into the first two's outputs: neither takes a pass of its own over the [tokens, intermediate]
    activations (on a Zen 4, Gemma 3's MLP over 1,024 tokens in 40 ms against 47 unfused and 50 on MKL)."""

    def __init__(self, mlp: nn.Module, post_op: tuple[str, str]) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = (OneDNNLinear(getattr(mlp, name))
                                                        for name in ("gate_proj", "up_proj", "down_proj"))
        self.post_op = post_op

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.up_proj.times(x, self.gate_proj(x, self.post_op)))

    def extra_repr(self) -> str:
        return f"activation={self.post_op}"


def fused_gated_mlp(module: nn.Module) -> OneDNNGatedMLP | None:
    """`module` as a `OneDNNGatedMLP` if it is a gated MLP of fp32 linear layers whose activation is a oneDNN post-op
    and whose output the fused one reproduces on a random input (an architecture that shares the names but computes
    something else stays as it is); None otherwise."""
    parts = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    act_fn = getattr(module, "act_fn", None)
    if not all(convertible(part) for part in parts) or not isinstance(act_fn, nn.Module):
        return None
    probe = torch.linspace(-6, 6, 1001)
    with torch.inference_mode():
        post_op = next((op for op, fn in POST_OPS.items() if torch.allclose(act_fn(probe), fn(probe), atol=1e-6)),
                       None)
        if post_op is None:
            return None
        fused = OneDNNGatedMLP(module, post_op)
        x = torch.randn(8, parts[0].in_features, generator=torch.Generator().manual_seed(0))
        expected, got = module(x), fused(x)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())):
        log.warning("%s has a gated MLP's layers but computes something else: its linears run unfused",
                    type(module).__name__)
        return None
    return fused
