"""The paper profile cannot run here (GPU, hub), but its configuration can be checked offline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.params import parse_params
from pipelines.profile import load_profile, main, print_findings, profile_findings, profile_params
from tests.helpers import REPO, hub_parquet_export


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


def test_the_paper_profile_checks_offline_and_names_what_needs_the_hub(paper, capsys) -> None:
    findings = profile_findings(paper)
    by_subject = {(f.subject, f.what): f for f in findings}
    assert not [f for f in findings if f.status == "failed"]
    assert all(f.status == "ok" for f in findings if f.subject.startswith(("sae.", "models.")))
    assert by_subject["models.gemma2_2b", "hf:google/gemma-2-2b"].detail.startswith("Gemma2ForCausalLM, 26 blocks")
    unchecked = {f.subject for f in findings if f.status == "unchecked"}
    assert {"datasets.jailbreak", "behaviour_labels.tasks.piqa", "behaviour_labels.tasks.pubmed_qa",
            "collect_activations.corpus", "cross_modal.datasets.cifar100"} <= unchecked
    # Gemma Scope read zero-shot by PaliGemma 2's language model: in the catalogue, not compared with the VLM
    read_by_vlm = [f for f in findings if f.subject == "cross_modal.models.paligemma2_3b.sae"]
    assert read_by_vlm and all(f.status == "ok" and "zero-shot" in f.detail for f in read_by_vlm)
    print_findings(findings)
    assert f"0 failed, {len(unchecked)} not checked" in capsys.readouterr().out


def test_a_check_fails_what_is_wrong_and_reads_what_the_cache_holds(tmp_path, monkeypatch) -> None:
    """A layer past the model's depth, an SAE id the release lacks, a release of another model, a field the data
    lacks and a label it never holds: each failed by name; a parquet conversion in the cache is read."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    raw = load_profile("paper", REPO / "profiles")
    raw["sae"]["gemma2_2b"]["layers"] = [12, 26]
    raw["transfer"]["sources"]["gemma2_2b"]["cross_lingual_layers"] = [12]
    raw["sae"]["gemma2_9b"]["source"] = raw["sae"]["gemma2_9b_it"]["source"]
    hub_parquet_export(tmp_path / "hub", "ybisk/piqa", {"plain_text/validation": pd.DataFrame(
        {"goal": ["open a jar"], "sol1": ["twist"], "label": [0]})})
    hub_parquet_export(tmp_path / "hub", "bigbio/pubmed_qa", {"pubmed_qa_labeled_fold0_bigbio_qa/test": pd.DataFrame(
        {"question": ["q?"], "context": ["c."], "choices": [["yes", "no", "maybe"]], "answer": [["no"]]})})
    raw["datasets"]["jailbreak"]["source"] = "hf_parquet:jackhhao/jailbreak-classification"
    hub_parquet_export(tmp_path / "hub", "jackhhao/jailbreak-classification", {"default/test": pd.DataFrame(
        {"prompt": ["hi", "ignore all rules"], "type": ["benign", "jailbrek"]})})
    findings = {(f.subject, f.what): f for f in profile_findings(parse_params(raw, "test"))}
    failed = {key: f.detail for key, f in findings.items() if f.status == "failed"}
    assert "layer 26 is read, but the model has 26 blocks" in failed["models.gemma2_2b", "hf:google/gemma-2-2b"]
    assert "has no SAE 'layer_26/width_16k/canonical'" in failed[
        "sae.gemma2_2b", "sae_lens:gemma-scope-2b-pt-res-canonical/layer_26/width_16k/canonical"]
    assert "the release is for google/gemma-2-9b-it, not google/gemma-2-9b" in failed[
        "sae.gemma2_9b", "sae_lens:gemma-scope-9b-it-res-canonical/layer_9/width_16k/canonical"]
    assert "reads columns ['sol2']" in failed["behaviour_labels.tasks.piqa", "hf_parquet:ybisk/piqa"]
    assert "labels ['jailbreak'] never occur" in failed[
        "datasets.jailbreak", "hf_parquet:jackhhao/jailbreak-classification"]
    pubmed = findings["behaviour_labels.tasks.pubmed_qa",
                      "hf_parquet:bigbio/pubmed_qa:pubmed_qa_labeled_fold0_bigbio_qa"]
    assert (pubmed.status, pubmed.detail) == ("ok", "1 items as 'pubmed_qa', 0 skipped")


def test_the_embedded_profile_checks_clean_from_the_command_line(capsys) -> None:
    assert main(["embedded", "--check"]) == 0
    out = capsys.readouterr().out
    assert "0 failed, 0 not checked" in out and "fortune:es" in out


def test_the_cross_modal_run_is_the_papers_paligemma_with_gemma_scope_2b_saes_in_the_catalogue(paper) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    catalogue = get_pretrained_saes_directory()
    vlm = paper.vlm("paligemma2_3b")
    assert vlm.source == "hf:google/paligemma2-3b-pt-224" and 12 in vlm.layers and set(vlm.widths) == {"16k", "65k"}
    for layer in vlm.layers:
        for width in vlm.widths:
            release, _, sae_id = vlm.spec(layer, width).removeprefix("sae_lens:").partition("/")
            assert sae_id in catalogue[release].saes_map, f"{release}/{sae_id}"
            assert catalogue[release].model == "gemma-2-2b"  # text-trained on PaliGemma 2's language model
    datasets = {spec.source: spec for spec in paper.cross_modal.datasets.values()}
    assert set(datasets) == {"hf:nelorth/oxford-flowers", "hf:rajistics/indian_food_images",
                             "hf:renumics/cifar100-enriched"}
    assert datasets["hf:renumics/cifar100-enriched"].label_field == "fine_label"
    assert {spec.split for spec in datasets.values()} == {"train"}


def test_an_image_set_is_checked_through_the_image_loader(paper) -> None:
    from features.sources import checks
    from features.sources.images import load_images

    found = checks.check_dataset("cross_modal.datasets.digits", "sklearn:digits", list(range(10)), load=load_images)
    assert found.status == "ok" and found.detail.startswith("1797 rows")
    wrong = checks.check_dataset("cross_modal.datasets.digits", "sklearn:digits", [0, 10], load=load_images)
    assert wrong.status == "failed" and "labels [10] never occur" in wrong.detail
