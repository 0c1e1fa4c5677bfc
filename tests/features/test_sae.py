from __future__ import annotations

import gc
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig

from features.errors import SaefsError
from features.sources.sae import QualityMeter, SaeSpec, check_sae_fits, encode, load_sae, sae_quality
from tests.features.tiny import gemma_scope_params, make_jumprelu_sae

D_IN, D_SAE = 16, 48


def write_gemma_scope(folder: Path, params: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", allow_pickle=False, **params)
    return folder


def test_gemma_scope_params_encode_as_jumprelu(tmp_path: Path) -> None:
    params = gemma_scope_params(D_IN, D_SAE)
    sae = load_sae(f"path:{write_gemma_scope(tmp_path / 'gs', params)}")
    x = np.random.default_rng(1).normal(size=(64, D_IN)).astype(np.float32)
    pre = x @ params["W_enc"] + params["b_enc"]
    expected = np.maximum(pre, 0) * (pre > params["threshold"])
    assert isinstance(sae, JumpReLUSAE)
    assert 0 < np.count_nonzero(expected) < np.count_nonzero(np.maximum(pre, 0))  # the jump matters here
    with torch.inference_mode():
        np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gemma_scope_file_missing_an_array_is_named(tmp_path: Path) -> None:
    params = gemma_scope_params(D_IN, D_SAE)
    del params["threshold"]
    with pytest.raises(SaefsError, match=r"lacks Gemma Scope arrays \['threshold'\]"):
        load_sae(f"path:{write_gemma_scope(tmp_path / 'gs', params)}")


def test_sae_lens_folder_round_trip(tmp_path: Path) -> None:
    original = make_jumprelu_sae(D_IN, D_SAE)
    original.save_model(tmp_path / "saved")
    loaded = load_sae(f"path:{tmp_path / 'saved'}")
    x = torch.randn(8, D_IN)
    assert type(loaded) is type(original)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.encode(x), original.encode(x))
        torch.testing.assert_close(loaded(x), original(x))


def test_folder_in_no_known_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SaefsError, match=r"neither cfg\.json .* nor params\.npz"):
        load_sae(f"path:{tmp_path}")


def test_sae_lens_spec_calls_from_pretrained_with_release_and_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_from_pretrained(release: str, sae_id: str, device: str = "cpu") -> SAE[Any]:
        calls.append((release, sae_id, device))
        return make_jumprelu_sae(D_IN, D_SAE)

    monkeypatch.setattr(SAE, "from_pretrained", staticmethod(fake_from_pretrained))  # what the loader imports
    load_sae("sae_lens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical", device="meta")
    assert calls == [("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", "meta")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hub:foo", r"unknown SAE source 'hub:foo'"),
        ("gemma-scope", r"unknown SAE source"),
        ("sae_lens:gemma-scope-2b-pt-res-canonical", r"expected 'sae_lens:<release>/<sae_id>'"),
        ("train", r"load that folder with 'path:<dir>'"),
    ],
)
def test_bad_specs_are_explained(spec: str, message: str) -> None:
    with pytest.raises(SaefsError, match=message):
        load_sae(spec)


def test_spec_parsing_keeps_slashes_in_the_argument() -> None:
    assert SaeSpec.parse("path:/a/b:c") == SaeSpec("path", "/a/b:c")


def test_width_mismatch_names_both_widths_and_the_layer() -> None:
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=2304, d_sae=8))
    with pytest.raises(SaefsError) as error:
        check_sae_fits(sae, 640, "blocks.9.hook_resid_post")
    assert str(error.value) == (
        "SAE d_in 2304 does not match model width 640 at blocks.9.hook_resid_post: wrong model or layer?"
    )


def sign_split_sae(dead_latents: int = 0) -> JumpReLUSAE:
    """Latent i < D_IN reads relu(x_i), latent D_IN + i reads relu(-x_i): a lossless code of L0 = D_IN.
    The last `dead_latents` latents get an unreachable threshold."""
    eye = torch.eye(D_IN)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=2 * D_IN, apply_b_dec_to_input=False))
    threshold = torch.zeros(2 * D_IN)
    threshold[2 * D_IN - dead_latents :] = 1e9
    sae.load_state_dict(
        {
            "W_enc": torch.cat([eye, -eye], dim=1),
            "W_dec": torch.cat([eye, -eye], dim=0),
            "b_enc": torch.zeros(2 * D_IN),
            "b_dec": torch.zeros(D_IN),
            "threshold": threshold,
        }
    )
    return sae


def test_quality_of_a_lossless_sae() -> None:
    acts = torch.randn(100, D_IN) * 5 + 3
    quality = sae_quality(sign_split_sae(), acts, chunk_tokens=7)
    assert quality.fve == pytest.approx(1.0, abs=1e-6)
    assert quality.l0 == pytest.approx(D_IN)
    assert quality.dead_fraction == 0.0


def test_quality_counts_dead_latents_and_lost_variance() -> None:
    acts = torch.randn(100, D_IN)
    quality = sae_quality(sign_split_sae(dead_latents=D_IN), acts, chunk_tokens=7)  # only relu(x) survives
    expected_fve = 1 - (acts.clamp(max=0).square().sum() / (acts - acts.mean(0)).square().sum()).item()
    assert quality.fve == pytest.approx(expected_fve, rel=1e-5)
    assert quality.l0 == pytest.approx((acts > 0).sum().item() / 100)
    assert quality.dead_fraction == 0.5


def test_dead_and_dense_fractions_match_hand_counts() -> None:
    """Tokens built so that each latent fires on a known number of them: sign-split latent i reads relu(x_i)."""
    acts = -torch.ones(100, D_IN)  # every negative latent fires on every token: dense
    acts[:5, 0] = 1.0  # latent 0 fires on 5 of 100 tokens: live, not dense
    acts[:11, 1] = 1.0  # latent 1 fires on 11: dense (over 10%)
    acts[:10, 2] = 1.0  # latent 2 fires on exactly 10%: not dense
    quality = sae_quality(sign_split_sae(), acts, chunk_tokens=7)
    # firing counts: latents 0, 1, 2 (relu(x)) on 5, 11, 10 tokens and 3..15 on none (13 dead); latents 16, 17,
    # 18 (relu(-x)) on 95, 89, 90 and 19..31 on all 100: dense are 1, 16..31 (17); latent 2's 10% is not over
    assert quality.dead_fraction == 13 / 32
    assert quality.dense_fraction == 17 / 32


def test_quality_state_round_trips_and_adds_up() -> None:
    sae, acts = make_jumprelu_sae(8, 16), torch.randn(30, 8)
    whole, first, second = (QualityMeter(8, 16) for _ in range(3))
    whole.update(sae, acts, encode(sae, acts))
    first.update(sae, acts[:12], encode(sae, acts[:12]))
    second.update(sae, acts[12:], encode(sae, acts[12:]))
    restored = QualityMeter(8, 16)
    restored.load_state(first.state())  # e.g. read back from a shard
    restored.add(second)
    assert restored.n_tokens == 30
    assert asdict(restored.result()) == pytest.approx(asdict(whole.result()), rel=1e-12)
    with pytest.raises(SaefsError, match=r"lacks \['fire_count'\]"):
        QualityMeter(8, 16).load_state({k: v for k, v in first.state().items() if k != "fire_count"})


def test_topk_quality_decodes_sparse_codes_to_the_dense_reconstruction_and_counts_each_firing() -> None:
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    with torch.no_grad():
        for weight in (sae.W_enc, sae.W_dec, sae.b_dec):
            weight.normal_()
    acts = torch.randn(90, D_IN) * 3
    codes = encode(sae, acts)
    with torch.inference_mode():
        dense = sae.decode(codes)
    expected_fve = 1 - ((acts - dense).square().sum() / (acts - acts.mean(0)).square().sum()).item()
    quality = sae_quality(sae, acts, chunk_tokens=13)
    assert quality.fve == pytest.approx(expected_fve, rel=1e-5)
    assert quality.l0 == pytest.approx(4.0)
    meter = QualityMeter(D_IN, D_SAE)
    meter.update(sae, acts, codes)  # counted from the sparse codes' entries
    assert torch.equal(meter.fire_count, (codes > 0).sum(dim=0)) and meter.n_active.item() == (codes > 0).sum().item()


def _random_sae(kind: str) -> SAE[Any]:
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = {"standard": lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
           "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6)),
           "topk rescaled": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6,
                                                          rescale_acts_by_decoder_norm=True)),
           "jumprelu": lambda: make_jumprelu_sae(D_IN, D_SAE)}[kind]()
    with torch.no_grad():
        for weight in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            weight.normal_()
    return sae


@pytest.fixture
def onednn_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN measured faster at every shape, whatever this machine measures."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr("features.forward.throughput.onednn_speedup", lambda linears: 2.0)


@pytest.mark.parametrize("kind", ["standard", "topk", "topk rescaled", "jumprelu"])
def test_a_packed_encoder_encodes_as_the_sae_does(kind: str, onednn_faster: None) -> None:
    from features.sources.sae import PackedEncoder, packed_encoder

    sae = _random_sae(kind)
    acts = torch.randn(200, D_IN) * 3
    assert isinstance(packed_encoder(sae), PackedEncoder)
    with torch.inference_mode():
        expected = sae.encode(acts)
    codes = encode(sae, acts)
    assert 0 < (codes > 0).sum() < codes.numel() / 2
    # on oneDNN the product sums in another order: a TopK latent tied at the k-th place may swap with the next
    close = torch.isclose(codes, expected, rtol=1e-4, atol=1e-4)
    assert close.float().mean() > 0.999, f"{(~close).sum()} of {close.numel()} codes differ"


def test_an_sae_that_encodes_otherwise_keeps_its_own_encode(onednn_faster: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_lens import TopKSAE

    from features.sources.sae import packed_encoder

    sae = _random_sae("topk")
    original = TopKSAE.encode
    monkeypatch.setattr(TopKSAE, "encode", lambda self, x: original(self, x) * 2)  # a kind that scales its codes
    assert packed_encoder(sae) is None
    acts = torch.randn(20, D_IN)
    with torch.inference_mode():
        assert torch.equal(encode(sae, acts), sae.encode(acts))


def test_an_encoder_trained_in_place_is_packed_again(onednn_faster: None) -> None:
    from features.sources.sae import packed_encoder

    sae = _random_sae("topk")
    acts = torch.randn(50, D_IN) * 3
    first = packed_encoder(sae)
    assert packed_encoder(sae) is first  # packed once
    with torch.no_grad():
        sae.W_enc.mul_(-1)  # as an optimizer step does, in place
    assert packed_encoder(sae) is not first
    with torch.inference_mode():
        np.testing.assert_allclose(encode(sae, acts), sae.encode(acts), rtol=1e-4, atol=1e-4)
    alive = weakref.ref(sae)
    del sae, first
    gc.collect()
    assert alive() is None  # its packed encoder does not keep an SAE alive
