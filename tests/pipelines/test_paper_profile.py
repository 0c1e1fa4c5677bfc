"""The paper profile cannot run here (GPU, hub), but its configuration can be checked offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.profile import profile_params
from tests.helpers import REPO


@pytest.fixture(scope="module")
def paper():
    return profile_params("paper", REPO / "profiles")


def test_every_gemma_scope_sae_of_the_paper_profile_is_in_the_sae_lens_catalogue(paper) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    catalogue = get_pretrained_saes_directory()
    for model, cfg in paper.sae.items():
        hub_model = paper.models[model].source.removeprefix("hf:google/")
        for layer in cfg.layers:
            for width in cfg.widths:
                release, _, sae_id = cfg.spec(layer, width, Path("unused")).removeprefix("sae_lens:").partition("/")
                assert sae_id in catalogue[release].saes_map, f"{release}/{sae_id}"
                assert catalogue[release].model == hub_model


def test_paper_layers_and_widths(paper) -> None:
    assert paper.sae["gemma2_2b"].layers == [5, 12, 19]
    assert paper.sae["gemma2_9b_it"].layers == [9, 20, 31]
    assert paper.sae["gemma2_2b"].spec(12, "16k", Path("x")) == (
        "sae_lens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")


def test_paper_datasets_are_the_papers(paper) -> None:
    sources = {ds.source for ds in paper.datasets.values()}
    assert {"hf:Anthropic/election_questions", "hf:AIM-Harvard/reject_prompts",
            "hf:jackhhao/jailbreak-classification", "hf:textdetox/multilingual_toxicity_dataset"} <= sources
    assert {ds.lang for ds in paper.datasets.values()} >= {"en", "es", "de", "ru", "zh"}
