"""SAE sources (a registry keyed by the spec's kind), the width check, and quality figures.

Specs:
  `sae_lens:<release>/<sae_id>`  a pretrained SAE from the sae-lens catalogue (needs the HF hub),
                                 e.g. `sae_lens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical`
  `path:<dir>`                   a local folder in sae-lens format (cfg.json + sae_weights.safetensors)
                                 or in Gemma Scope format (params.npz)
  `train`                        trained by the train_sae stage, which saves a folder: load it as `path:`

A new kind is one loader in `SAE_LOADERS`; params validation reads its keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from features.errors import SaefsError

# torch and sae-lens load inside the functions that use them: params validation (every stage, and the two that
# run on every repro) reads SAE_LOADERS, and they take seconds to import.
if TYPE_CHECKING:
    from sae_lens import SAE, JumpReLUSAE
    from torch import Tensor

SaeLoader = Callable[[str, str], "SAE[Any]"]  # (spec argument, device) -> SAE
TRAINED = "train"  # the spec of an SAE that the train_sae stage trains (a bare word: no argument)
# A model's SAE folder (train_sae) lists its SAEs in this file: SAE name (`l9__sae4k`) -> `load_sae` spec.
SAE_INDEX = "saes.json"
GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaeSpec:
    kind: str
    argument: str

    @classmethod
    def parse(cls, spec: str) -> SaeSpec:
        kind, _, argument = spec.partition(":")
        if kind not in SAE_LOADERS:
            raise SaefsError(f"unknown SAE source {spec!r}: expected one of {sorted(SAE_LOADERS)}, e.g. 'path:<dir>'")
        return cls(kind, argument)


@dataclass(frozen=True)
class SaeQuality:
    fve: float  # fraction of variance explained by the reconstruction
    l0: float  # mean number of active latents per token
    dead_fraction: float  # fraction of latents never active on these tokens
    dense_fraction: float  # fraction of latents active on more than DENSE_DENSITY of these tokens


def load_sae(spec: str, device: str = "cpu") -> SAE[Any]:
    """Resolve an SAE spec (see the module docstring) to an SAE in eval mode on `device`."""
    parsed = SaeSpec.parse(spec)
    return SAE_LOADERS[parsed.kind](parsed.argument, device).eval()


def sae_identity(sae: SAE[Any]) -> str:
    """SHA-256 of an SAE's configuration (device aside) and weights: what its codes depend on, whatever its source."""
    import torch

    settings = {key: value for key, value in sae.cfg.to_dict().items() if key != "device"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_sae_fits(sae: SAE[Any], d_model: int, where: str) -> None:
    """Fail early when an SAE cannot read the residual stream it is applied to."""
    if sae.cfg.d_in != d_model:
        raise SaefsError(
            f"SAE d_in {sae.cfg.d_in} does not match model width {d_model} at {where}: wrong model or layer?"
        )


def encode(sae: SAE[Any], acts: Tensor) -> Tensor:
    """SAE codes [N, d_sae] of activations [N, d_in], computed on the SAE's device, as float32 whatever the SAE's
    dtype (pooled sums accumulate in it); on a CPU where oneDNN multiplies faster, by the SAE's `PackedEncoder`."""
    import torch

    with torch.inference_mode(), _at_input_precision(acts):
        acts = acts.to(device=sae.device, dtype=sae.dtype)
        packed = packed_encoder(sae)
        return (sae.encode(acts) if packed is None else packed(acts)).float()


class PackedEncoder:
    """An SAE's encode with its encoder product, `sae_in @ W_enc + b_enc`, on oneDNN's packed weights, bias fused
    (features.sources.onednn): sae-lens' Standard, TopK and JumpReLU SAEs multiply inline, on PyTorch's product,
    which ran a 4k encoder over 1,024 tokens at 173 GFLOP/s against 213 packed on a Zen 4 (181 against 130 at 16k).
    The SAE's own input processing and activation run as they are; `packed_encoder` checks they compose to its
    `encode`. A packed copy of the encoder's weights: inference only."""

    def __init__(self, sae: SAE[Any], decoder_norms: Tensor | None) -> None:
        from torch import nn
        from torch.nn.utils import skip_init

        from features.sources.onednn import OneDNNLinear

        self.sae = weakref.ref(sae)  # not the SAE itself: `_PACKED` would keep every SAE it holds alive
        linear = skip_init(nn.Linear, sae.cfg.d_in, sae.cfg.d_sae)  # no random init of weights replaced at once
        linear.weight.data, linear.bias.data = sae.W_enc.detach().T.contiguous(), sae.b_enc.detach()
        self.product = OneDNNLinear(linear)
        self.decoder_norms = decoder_norms

    def __call__(self, acts: Tensor) -> Tensor:
        sae = self.sae()
        return _activate(sae, self.product(sae.process_sae_in(acts)), self.decoder_norms)


def _decoder_norms(sae: SAE[Any]) -> Tensor | None:
    """The decoder rows' norms a TopK SAE trained with `rescale_acts_by_decoder_norm` scales its pre-activations by."""
    return sae.W_dec.norm(dim=-1) if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False) else None


def _activate(sae: SAE[Any], hidden_pre: Tensor, decoder_norms: Tensor | None) -> Tensor:
    """What sae-lens' Standard, TopK and JumpReLU SAEs' `encode` computes from its encoder product."""
    from sae_lens import JumpReLUSAE

    hidden_pre = sae.hook_sae_acts_pre(hidden_pre)
    if decoder_norms is not None:
        hidden_pre = hidden_pre * decoder_norms
    acts = sae.activation_fn(hidden_pre)
    if isinstance(sae, JumpReLUSAE):
        acts = acts * (hidden_pre > sae.threshold).to(acts.dtype)
    return sae.hook_sae_acts_post(acts)


# SAE -> (its weights' identity and version when packed, its PackedEncoder or None where it has none)
_PACKED: weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], PackedEncoder | None]] = weakref.WeakKeyDictionary()


def packed_encoder(sae: SAE[Any]) -> PackedEncoder | None:
    """The `PackedEncoder` of an fp32 SAE on a CPU where oneDNN measured faster at its encoder's shape
    (features.forward.throughput.onednn_speedup), whose `encode` is its input processing, the product and
    `_activate` (checked on a probe: a kind that computes something else encodes as it does); None otherwise.
    Packed once per SAE, and again when its weights change (training in place)."""
    import torch
    from sae_lens import SAE

    weights = [getattr(sae, name, None) for name in ("W_enc", "b_enc", "W_dec")]  # W_dec: TopK's rescaling
    cpu_fp32 = all(isinstance(w, torch.Tensor) and w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)
    if not cpu_fp32 or not isinstance(sae, SAE):
        return None
    version = tuple(number for w in weights for number in (w.data_ptr(), w._version))
    cached = _PACKED.get(sae)
    if cached is None or cached[0] != version:
        cached = version, _packed_if_faster(sae)
        _PACKED[sae] = cached
    return cached[1]


def _packed_if_faster(sae: SAE[Any]) -> PackedEncoder | None:
    import torch
    from torch import nn

    from features.forward.throughput import onednn_speedup

    if not torch.backends.mkldnn.is_available() or onednn_speedup([nn.Linear(sae.cfg.d_in, sae.cfg.d_sae)]) <= 1:
        return None
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # random rows, and decoder directions that fire their latents
        probe = torch.cat([torch.randn(32, sae.cfg.d_in, generator=generator), 4 * sae.W_dec[:32] + sae.b_dec])
        # sae-lens' own product: the same operations, the same bits
        norms = _decoder_norms(sae)
        composed = _activate(sae, sae.process_sae_in(probe) @ sae.W_enc + sae.b_enc, norms)
        if not torch.equal(composed, sae.encode(probe)):
            log.info("%s encodes otherwise than its product and activation: it keeps PyTorch's product",
                     type(sae).__name__)
            return None
        return PackedEncoder(sae, norms)


def _at_input_precision(acts: Tensor) -> AbstractContextManager[Any]:
    """On a GPU, an fp32 SAE multiplies half-precision activations (a bf16 model's) under autocast at their
    precision: an fp32 product adds no digit the input had, at about a fifteenth of the bf16 tensor-core rate,
    which would make the SAEs cost more than the model's forward. Biases, thresholds and codes stay fp32. On the
    CPU (fp32 activations) nothing changes. Read off the activations, which share the SAE's device: a stand-in
    SAE (an identity, in the tests) need not say its device."""
    import torch

    if acts.device.type == "cuda" and acts.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=acts.dtype)
    return nullcontext()


def _sparse_if_topk(sae: SAE[Any], codes: Tensor) -> Tensor:
    """TopK codes on the CPU as a sparse tensor, which sae-lens' TopK decode multiplies by the k active decoder
    rows only (4x faster than the dense product at width 4k, equal within float rounding); other SAEs, and codes
    on a GPU, decode dense (there the dense product runs on tensor cores under autocast; torch.sparse.mm has no
    bf16 path)."""
    from sae_lens import TopKSAE, TopKTrainingSAE

    sparse = codes.device.type == "cpu" and isinstance(sae, TopKSAE | TopKTrainingSAE)
    return codes.to_sparse() if sparse else codes


_METER_SUMS = ("squared_error", "sum_x", "sum_x2", "n_active", "fire_count")
DENSE_DENSITY = 0.1  # a latent firing on more than this share of tokens is dense (SAEBench's and sae-lens' cut)


class QualityMeter:
    """Streams reconstruction and sparsity sums over chunks of tokens (float64, on the CPU)."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        import torch

        self.n_tokens = 0
        self.squared_error = torch.zeros((), dtype=torch.float64)
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_x2 = torch.zeros(d_in, dtype=torch.float64)
        self.n_active = torch.zeros((), dtype=torch.float64)
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)

    def update(self, sae: SAE[Any], acts: Tensor, codes: Tensor) -> None:
        """Add token activations [N, d_in] and their codes [N, d_sae]. The sums are reduced on the codes' device
        and only they reach the CPU: copying [N, d_sae] masks off a GPU would take longer than the encoding."""
        import torch

        with torch.inference_mode(), _at_input_precision(acts):
            decoded = _sparse_if_topk(sae, codes)
            reconstruction = sae.decode(decoded).double()
        target = acts.to(reconstruction.device).double()
        if decoded.is_sparse:  # count firings from the k entries a row, not two passes over [N, d_sae]
            fire = torch.bincount(decoded.indices()[1][decoded.values() > 0], minlength=codes.shape[1])
        else:
            fire = (codes > 0).sum(dim=0)
        self.n_tokens += len(acts)
        self.squared_error += (target - reconstruction).square().sum().cpu()
        self.sum_x += target.sum(dim=0).cpu()
        self.sum_x2 += target.square().sum(dim=0).cpu()
        self.n_active += fire.sum().cpu()
        self.fire_count += fire.cpu()

    def add(self, other: QualityMeter) -> None:
        """Take in another meter's tokens (another worker's, another shard's): every sum adds."""
        self.n_tokens += other.n_tokens
        self.squared_error += other.squared_error
        self.sum_x += other.sum_x
        self.sum_x2 += other.sum_x2
        self.n_active += other.n_active
        self.fire_count += other.fire_count

    def state(self) -> dict[str, np.ndarray]:
        """The running sums as arrays, e.g. to store with a shard; `load_state` restores them."""
        return {"n_tokens": np.asarray(self.n_tokens, dtype=np.int64)} | {
            name: getattr(self, name).numpy() for name in _METER_SUMS}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        import torch

        missing = sorted({"n_tokens", *_METER_SUMS} - set(state))
        if missing:
            raise SaefsError(f"SAE quality state lacks {missing}: it was not written by QualityMeter.state")
        self.n_tokens = int(state["n_tokens"])
        for name in _METER_SUMS:
            setattr(self, name, torch.from_numpy(np.array(state[name])).to(getattr(self, name).dtype))

    def result(self) -> SaeQuality:
        if self.n_tokens == 0:
            raise SaefsError("no tokens were measured: SAE quality needs at least one token")
        total_variance = (self.sum_x2 - self.sum_x.square() / self.n_tokens).sum()
        return SaeQuality(
            fve=float(1.0 - self.squared_error / total_variance),
            l0=float(self.n_active / self.n_tokens),
            dead_fraction=float((self.fire_count == 0).double().mean()),
            dense_fraction=float((self.fire_count > DENSE_DENSITY * self.n_tokens).double().mean()),
        )


def sae_quality(sae: SAE[Any], acts: Tensor, chunk_tokens: int = 4096) -> SaeQuality:
    """Reconstruction and sparsity of `sae` on token activations [N, d_in] (already masked)."""
    if acts.ndim != 2 or len(acts) == 0:
        raise SaefsError(f"acts must be a non-empty [N, d_in] matrix of token activations, got {tuple(acts.shape)}")
    meter = QualityMeter(acts.shape[1], sae.cfg.d_sae)
    for chunk in acts.split(chunk_tokens):
        meter.update(sae, chunk, encode(sae, chunk))
    return meter.result()


def _load_sae_lens_release(argument: str, device: str) -> SAE[Any]:
    from sae_lens import SAE

    release, _, sae_id = argument.partition("/")
    if not release or not sae_id:
        raise SaefsError(
            f"bad sae_lens spec 'sae_lens:{argument}': expected 'sae_lens:<release>/<sae_id>', "
            "e.g. 'sae_lens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical'"
        )
    return SAE.from_pretrained(release, sae_id, device=device)


def _load_folder(argument: str, device: str) -> SAE[Any]:
    from sae_lens import SAE

    folder = Path(argument)
    if (folder / "cfg.json").is_file():
        return SAE.load_from_disk(folder, device=device)
    if (folder / "params.npz").is_file():
        return _load_gemma_scope(folder / "params.npz", device)
    raise SaefsError(
        f"SAE folder {str(folder)!r} holds neither cfg.json + sae_weights.safetensors (sae-lens format) "
        "nor params.npz (Gemma Scope format)"
    )


def _load_gemma_scope(params_path: Path, device: str) -> JumpReLUSAE:
    """Gemma Scope's params.npz as a sae-lens JumpReLU SAE (Gemma Scope does not subtract b_dec on input)."""
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    with np.load(params_path) as params:
        missing = [key for key in GEMMA_SCOPE_KEYS if key not in params.files]
        if missing:
            raise SaefsError(f"{params_path} lacks Gemma Scope arrays {missing}; expected {list(GEMMA_SCOPE_KEYS)}")
        weights = {key: torch.from_numpy(params[key]).float() for key in GEMMA_SCOPE_KEYS}
    d_in, d_sae = weights["W_enc"].shape
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    sae.load_state_dict(weights)
    return sae.to(device)


def _not_loadable(_argument: str, _device: str) -> SAE[Any]:
    raise SaefsError(
        f"SAE source {TRAINED!r} is produced by the train_sae stage, which saves a folder in sae-lens format; "
        "load that folder with 'path:<dir>'"
    )


SAE_LOADERS: dict[str, SaeLoader] = {  # kind -> loader of `<kind>:<argument>`
    "sae_lens": _load_sae_lens_release,
    "path": _load_folder,
    TRAINED: _not_loadable,
}
PRETRAINED_SAE_KINDS = tuple(kind for kind in SAE_LOADERS if kind != TRAINED)
