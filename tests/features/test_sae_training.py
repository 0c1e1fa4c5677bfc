"""The lean TopK trainer against sae-lens' SAETrainer: the same weights from the same data, in sae-lens' format."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from features.core import lean_topk
from features.core.sae_config import SAETrainingConfig
from features.core.sae_training import train_sae
from features.forward.extract import activation_batches, collect_activations
from features.sources.sae import encode, load_sae
from features.stores.activations import ActivationCache, ActivationWriter, write_manifest
from tests.features.tiny import make_model, make_texts, make_tokenizer


def planted(n: int = 1200, d_in: int = 16, atoms: int = 40, seed: int = 0) -> torch.Tensor:
    """Sparse combinations of random directions on top of a large constant one (as a residual stream)."""
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d_in, generator=generator)
    codes = torch.rand(n, atoms, generator=generator) * (torch.rand(n, atoms, generator=generator) < 0.08)
    return codes @ dictionary + 5.0


def config(trainer: str, **update) -> SAETrainingConfig:
    return SAETrainingConfig(architecture="topk", k=4, training_samples=32 * 30, batch_size=32, lr=3e-3, seed=1,
                             trainer=trainer).model_copy(update=update)


@pytest.mark.parametrize("schedule", [
    {},  # sae-lens' defaults: constant learning rate, a dead window of 1,000 steps (never reached here)
    {"dead_window_tokens": 96},  # 3 steps: AuxK on dead latents runs
    {"lr_warmup": 0.1, "lr_decay": 0.3, "dead_window_tokens": 96},  # sae-lens' warm-up and decay schedule
])
def test_the_lean_loop_trains_the_same_sae_as_sae_lens(schedule: dict) -> None:
    acts = planted()
    lean = train_sae(acts, config("lean", **schedule), 64)
    reference = train_sae(acts, config("sae_lens", **schedule), 64)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(lean, name), getattr(reference, name), atol=2e-4, rtol=1e-3)
    assert lean.cfg.normalize_activations == reference.cfg.normalize_activations == "none"  # the scale folded in
    torch.testing.assert_close(encode(lean, acts), encode(reference, acts), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("max_density", [0.0, 1.0])  # the dense gradient of W, the sparse one
def test_the_picked_entries_get_the_gradient_of_the_dense_product(max_density: float,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean_topk, "SPARSE_GRADIENT_MAX_DENSITY", max_density)
    generator = torch.Generator().manual_seed(0)
    batch, weights = torch.randn(6, 5, generator=generator), torch.randn(5, 9, generator=generator)
    index = torch.tensor([[0, 3, 3], [8, 1, 0], [2, 2, 2], [4, 5, 6], [7, 0, 1], [8, 8, 3]])  # repeats sum
    grad_out = torch.randn(6, 3, generator=generator)
    W, bias = weights.clone().requires_grad_(), torch.randn(9, generator=generator).requires_grad_()
    (torch.addmm(bias, batch, W).gather(1, index) * grad_out).sum().backward()
    W_picked, bias_picked = W.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    with torch.no_grad():
        product = torch.addmm(bias_picked, batch, W_picked)
    picked = lean_topk.picked_product(product, batch, W_picked, bias_picked, index)
    torch.testing.assert_close(picked, product.gather(1, index))
    (picked * grad_out).sum().backward()
    torch.testing.assert_close(W_picked.grad, W.grad)
    torch.testing.assert_close(bias_picked.grad, bias.grad)


def test_the_sparse_gradient_trains_the_same_sae_as_sae_lens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lean_topk, "SPARSE_GRADIENT_MAX_DENSITY", 1.0)  # these small SAEs would take the dense one
    acts, schedule = planted(), {"lr_warmup": 0.1, "lr_decay": 0.3, "dead_window_tokens": 96}
    lean = train_sae(acts, config("lean", **schedule), 64)
    reference = train_sae(acts, config("sae_lens", **schedule), 64)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(lean, name), getattr(reference, name), atol=2e-4, rtol=1e-3)


def test_a_lean_sae_saves_and_loads_as_sae_lens_does(tmp_path: Path) -> None:
    acts = planted()
    sae = train_sae(acts, config("lean", training_samples=32 * 300), 64)
    sae.save_inference_model(tmp_path / "sae")
    loaded = load_sae(f"path:{tmp_path / 'sae'}")
    torch.testing.assert_close(encode(loaded, acts), encode(sae, acts), atol=1e-4, rtol=1e-4)
    with torch.inference_mode():  # raw-scale reconstruction: better than the mean alone
        error = (loaded.decode(encode(loaded, acts)) - acts).square().sum()
    assert error < 0.5 * (acts - acts.mean(0)).square().sum()


def test_the_sparse_decode_equals_the_dense_one() -> None:
    W_dec, values = torch.randn(64, 16), torch.rand(5, 4)
    latents = torch.stack([torch.randperm(64)[:4] for _ in range(5)])
    norms = W_dec.norm(dim=-1)
    dense = torch.zeros(5, 64).scatter(1, latents, values) / norms @ W_dec
    torch.testing.assert_close(lean_topk.decode(W_dec, norms, latents, values), dense)


def cached(folder: Path, batches: Iterable[dict[int, torch.Tensor]], layers: list[int], layer: int) -> np.memmap:
    """`batches` written batch by batch, as collect_activations streams them, and `layer` read back memory-mapped."""
    writer = ActivationWriter(folder, "train", layers)
    for batch in batches:
        writer.add(batch)
    write_manifest(folder, {"model": "m"}, {"train": writer.close()}, layers)
    return ActivationCache.open(folder, {"model": "m"}, fix="recollect").layer("train", layer)


def assert_same_sae(a, b) -> None:
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)


def test_a_memory_mapped_cache_trains_the_same_sae_as_activations_in_memory(tmp_path: Path) -> None:
    acts = planted()
    cache = cached(tmp_path, ({3: part} for part in acts.split(100)), [3], 3)
    assert isinstance(cache, np.memmap)
    cfg = config("lean", dead_window_tokens=96, lr_warmup=0.1, lr_decay=0.2)
    assert_same_sae(train_sae(cache, cfg, 64), train_sae(acts, cfg, 64))


def test_an_sae_trained_on_the_cache_equals_one_trained_on_activations_computed_in_memory(tmp_path: Path) -> None:
    """A real (tiny) model's forward: its activations streamed to disk and read back memory-mapped train the same
    SAE, to the bit, as the same forward's activations held in memory: the cache changes no number."""
    model, tokenizer = make_model("gemma3", n_layers=4), make_tokenizer()
    texts = make_texts([5 + i % 20 for i in range(300)])
    options = {"max_tokens": 32, "batch_size": 32}
    cache = cached(tmp_path, activation_batches(model, tokenizer, texts, [1, 2], **options), [1, 2], 2)
    in_memory = collect_activations(model, tokenizer, texts, [2], **options)[2]
    assert isinstance(cache, np.memmap) and cache.shape == tuple(in_memory.shape)
    cfg = SAETrainingConfig(architecture="topk", k=8, training_samples=4096, batch_size=256, lr=3e-3, seed=1)
    assert_same_sae(train_sae(cache, cfg, width=64), train_sae(in_memory, cfg, width=64))


def test_a_schedule_without_full_rate_steps_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"lr_warmup \(0.5\) \+ lr_decay \(0.5\) must stay below 1"):
        SAETrainingConfig(**config("lean").model_dump() | {"lr_warmup": 0.5, "lr_decay": 0.5})


def test_the_lean_trainer_refuses_jumprelu_naming_the_key() -> None:
    with pytest.raises(ValidationError, match="trainer 'lean' trains TopK SAEs only.*trainer: sae_lens"):
        SAETrainingConfig(architecture="jumprelu", k=4, training_samples=10, batch_size=2, lr=1e-3, seed=0,
                          trainer="lean")


@pytest.mark.parametrize("trainer", ["lean", "sae_lens"])
def test_the_dead_history_counts_the_latents_silent_for_longer_than_the_window(trainer: str) -> None:
    """With a learning rate too small to move the weights, which latents fire on each training batch is known
    from the trained SAE alone: the history's counts must equal a hand count over those batches."""
    acts, window = planted(), 4
    cfg = config(trainer, lr=1e-9, dead_window_tokens=32 * window, training_samples=32 * 41)
    history = lean_topk.DeadHistory(every=3)
    sae = train_sae(acts, cfg, 64, history=history)
    batches = lean_topk.shuffled_batches(acts.numpy(), cfg.batch_size, cfg.seed)
    since_fired, expected = np.zeros(64, dtype=int), {}
    for step in range(41):
        expected[step] = int((since_fired > window).sum())
        fired = (encode(sae, next(batches)) > 0).any(dim=0).numpy()
        since_fired = np.where(fired, 0, since_fired + 1)
    assert history.steps == [*range(0, 41, 3), 40]  # the grid, and the last step
    assert history.dead == [expected[step] for step in history.steps]
    assert max(history.dead) > 0  # the planted data leaves latents silent: the check is not of zeros


def test_a_data_init_starts_each_latent_at_its_own_training_row() -> None:
    """With a learning rate too small to move the weights, each decoder direction is still a distinct training
    row minus the mean, and the encoder its transpose."""
    acts = planted() + 0.01 * torch.randn(1200, 16, generator=torch.Generator().manual_seed(0))  # no equal rows
    sae = train_sae(acts, config("lean", lr=1e-9, decoder_init="data"), 64)
    directions = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    centred = acts - acts.mean(dim=0)
    cosine = directions @ (centred / centred.norm(dim=-1, keepdim=True)).T
    best = cosine.max(dim=1)
    torch.testing.assert_close(best.values, torch.ones(64), atol=1e-4, rtol=0)
    assert len(set(best.indices.tolist())) == 64  # one row per latent
    torch.testing.assert_close(sae.W_enc / sae.W_enc.norm(dim=0), directions.T, atol=1e-4, rtol=0)


def test_a_data_init_needs_a_row_per_latent() -> None:
    with pytest.raises(ValueError, match="decoder_init 'data' draws one training row per latent: 1200 rows for "
                                         "2048 latents"):
        train_sae(planted(), config("lean", decoder_init="data"), 2048)
