"""The VLM forward on digits: only the image-token positions of the layer's resid_post are encoded and pooled, the
vision tower's mean output is the dense baseline, and a VLM or SAE that does not fit is a clear error; then the
cross-modal probe grid on those features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from features.core.binarize import binarize_codes
from features.core.cross_modal import ProbeSettings, prepare_images, probe_dataset, sae_cell, with_holm
from features.core.prepare import SplitConfig
from features.core.transfer import codes_frame, hidden_frame
from features.errors import SaefsError
from features.forward.vision import ImageFeatures, extract_images
from features.sources.images import decode, load_images
from features.sources.sae import encode
from features.sources.vlm import load_vlm
from tests.features.tiny import HIDDEN, make_jumprelu_sae
from tests.features.tiny_vlm import PATCHES, VLM_KINDS, save_vlm

SPLIT = SplitConfig(test_size=0.2, seed=42, event_timestamp="2025-01-01T00:00:00Z")
LAYERS, SAE_LAYER, D_SAE = [0, 1], 1, 64  # below the last block, whose HF hidden state is after the final norm


@pytest.fixture(scope="module")
def digits():
    return prepare_images(load_images("sklearn:digits"), "digits", SPLIT, max_rows=120)


def run_vlm(folder: Path, images: list[bytes], saes=None, **options) -> tuple[object, object, ImageFeatures]:
    model, processor = load_vlm(f"path:{folder}", "cpu")
    saes = {SAE_LAYER: {"64": make_jumprelu_sae(HIDDEN, D_SAE)}} if saes is None else saes
    return model, processor, extract_images(model, processor, images, LAYERS, saes, ["sum", "top2"], batch_size=7,
                                            name="tiny", progress=False, **options)


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_only_the_image_token_positions_of_resid_post_are_encoded_and_pooled(kind: str, tmp_path: Path,
                                                                             digits) -> None:
    images = digits["image"].tolist()[:10]
    model, processor, out = run_vlm(save_vlm(kind, tmp_path / kind), images)
    assert (out.image_tokens == PATCHES).all()
    sae = make_jumprelu_sae(HIDDEN, D_SAE)
    inputs = processor(images=[decode(b) for b in images], text=[processor.image_token] * len(images),
                       return_tensors="pt")
    with torch.inference_mode():
        states = model(**{k: v for k, v in inputs.items() if k != "labels"}, output_hidden_states=True).hidden_states
        tower = model.get_image_features(pixel_values=inputs["pixel_values"]).last_hidden_state[:, -PATCHES:]
    image = inputs["input_ids"] == model.config.image_token_id
    assert image.sum() == PATCHES * len(images) and (~image).any()  # BOS (and more) sit beside the image tokens
    resid_post = states[SAE_LAYER + 1]  # blocks.1.hook_resid_post
    expected = torch.stack([resid_post[i][image[i]].mean(0) for i in range(len(images))]).numpy()
    np.testing.assert_allclose(out.hidden[SAE_LAYER, "mean"], expected, rtol=1e-4, atol=1e-5)
    everything = resid_post.mean(1).numpy()  # pooling every position would differ
    assert not np.allclose(out.hidden[SAE_LAYER, "mean"], everything, atol=1e-3)
    summed = torch.stack([encode(sae, resid_post[i][image[i]]).sum(0) for i in range(len(images))]).numpy()
    np.testing.assert_allclose(out.codes[SAE_LAYER, "64", "sum"].toarray(), summed, rtol=1e-4, atol=1e-4)
    top2 = out.codes[SAE_LAYER, "64", "top2"].toarray()
    assert top2.max() <= PATCHES and top2.sum(1).max() <= 2 * PATCHES  # counts over the 16 image tokens
    np.testing.assert_allclose(out.vision, tower.mean(1).numpy(), rtol=1e-4, atol=1e-5)
    assert out.quality[SAE_LAYER, "64"].l0 > 0 and set(out.codes) == {(1, "64", "sum"), (1, "64", "top2")}


def test_a_config_whose_image_token_never_appears_in_the_inputs_is_named(tmp_path: Path, digits) -> None:
    folder = save_vlm("paligemma", tmp_path / "vlm", image_token_id=7)
    with pytest.raises(SaefsError, match=r"tiny: the processor's inputs hold no image token \(the config's "
                                         r"image_token_id is 7; the prompt became ids \[300, 300"):
        run_vlm(folder, digits["image"].tolist()[:3])


def test_image_tokens_that_do_not_match_the_towers_patches_are_named(tmp_path: Path, digits) -> None:
    folder = save_vlm("paligemma", tmp_path / "vlm", image_seq_length=9)
    with pytest.raises(SaefsError, match=r"tiny: \[9\] image-token positions per image, but the vision tower gives "
                                         r"\[16\] patch features"):
        run_vlm(folder, digits["image"].tolist()[:3])


def test_an_sae_whose_d_in_is_not_the_language_models_width_is_refused(tmp_path: Path, digits) -> None:
    folder = save_vlm("paligemma", tmp_path / "vlm")
    with pytest.raises(SaefsError, match="SAE d_in 48 does not match model width 32 at blocks.1.hook_resid_post"):
        run_vlm(folder, digits["image"].tolist()[:3], saes={SAE_LAYER: {"64": make_jumprelu_sae(48, D_SAE)}})


def test_a_source_that_is_no_vlm_is_named(tmp_path: Path) -> None:
    with pytest.raises(SaefsError, match="'gpt2' is not a vision-language model source"):
        load_vlm("gpt2", "cpu")
    with pytest.raises(SaefsError, match=f"path:{tmp_path}: cannot load an image-text-to-text model"):
        load_vlm(f"path:{tmp_path}", "cpu")


def test_digits_through_a_tiny_paligemma_into_probes_with_every_cell_and_paired_tests(tmp_path: Path,
                                                                                       digits) -> None:
    *_, out = run_vlm(save_vlm("paligemma", tmp_path / "vlm"), digits["image"].tolist())
    # the columns of the Feast views extract_images writes (binary views: the codes binarized already)
    codes = {(layer, width, pooling, t): (codes_frame(m if t is None else binarize_codes(m, t)), m.shape[1])
             for (layer, width, pooling), m in out.codes.items() for t in (None, 1.0)}
    residual = {layer: hidden_frame(out.hidden[layer, "mean"]) for layer in LAYERS}
    settings = ProbeSettings(C_grid=[0.1, 1.0], cv_folds=2, resamples=2, seed=42)
    rows, predictions = probe_dataset("digits", digits, codes, residual, hidden_frame(out.vision), settings)
    cells = {row["cell"]: row for row in with_holm(rows)}
    sae = [sae_cell(1, "64", pooling, t) for pooling in ("sum", "top2") for t in (None, 1.0)]
    assert set(cells) == {"vision__mean", "l0__hidden__mean", "l1__hidden__mean", *sae}
    for name in sae:
        row = cells[name]
        assert 0 <= row["macro_f1_low"] <= row["macro_f1"] <= row["macro_f1_high"] <= 1 and row["resamples"] == 2
        for baseline in ("vision", "residual"):
            assert row[f"sae_minus_{baseline}_low"] <= row[f"sae_minus_{baseline}"] <= row[f"sae_minus_{baseline}_high"]
            assert row[f"sae_minus_{baseline}_p"] <= row[f"sae_minus_{baseline}_p_holm"] <= 1
    assert set(predictions["fit"]) == {f"digits:{cell}" for cell in cells}
    tested = predictions[(predictions["resample"] == 0) & (predictions["split"] == "test")]
    assert set(tested["text_id"]) == set(digits.loc[digits["split"] == "test", "text_id"])
