from __future__ import annotations

import pytest

from pipelines.params import ParamsError, load_params, parse_params
from tests.helpers import embedded_params


def test_unknown_top_level_key_is_named() -> None:
    raw = embedded_params(prepare_dat={"seed": 1})
    with pytest.raises(ParamsError, match=r"prepare_dat: unknown key \(allowed here: profile, models, datasets"):
        parse_params(raw)


def test_misspelt_nested_key_names_its_path_and_the_allowed_keys() -> None:
    raw = embedded_params()
    raw["datasets"]["spam"]["max_rowz"] = 10
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert "datasets.spam.max_rowz: unknown key" in str(err.value)
    assert "max_rows" in str(err.value) and "label_field" in str(err.value)


def test_wrong_type_names_the_key_and_the_value() -> None:
    raw = embedded_params()
    raw["datasets"]["toxic"]["max_rows"] = "lots"
    with pytest.raises(ParamsError, match=r"datasets\.toxic\.max_rows: .*integer.*'lots'"):
        parse_params(raw)


def test_unknown_profile_lists_the_allowed_ones() -> None:
    allowed = "'embedded', 'study', 'paper', 'paper_exact' or 'cluster'"
    with pytest.raises(ParamsError, match=rf"profile: Input should be {allowed}"):
        parse_params(embedded_params(profile="laptop"))


@pytest.mark.parametrize("source", ["sae_probes", "s3:bucket/x.csv", "file:"])
def test_bad_dataset_source(source: str) -> None:
    raw = embedded_params()
    raw["datasets"]["spam"]["source"] = source
    kinds = r"\['sae_probes', 'file', 'hf', 'hf_parquet', 'fortune', 'package'\]"
    with pytest.raises(ParamsError, match=r"datasets\.spam\.source: .*kind one of " + kinds):
        parse_params(raw)


def test_bad_model_source() -> None:
    raw = embedded_params(models={"m": {"source": "ollama:gemma"}})
    with pytest.raises(ParamsError, match=r"models\.m\.source: .*\['pypi', 'hf', 'path'\]"):
        parse_params(raw)


def test_label_names_must_match_labels() -> None:
    raw = embedded_params()
    raw["datasets"]["spam"]["label_names"] = ["ham"]
    with pytest.raises(ParamsError, match=r"datasets\.spam: .*label_names has 1 entries but labels has 2"):
        parse_params(raw)


def test_names_are_slugs() -> None:
    raw = embedded_params()
    raw["datasets"]["Bad Name"] = raw["datasets"].pop("spam")
    with pytest.raises(ParamsError, match=r"datasets\.Bad Name"):
        parse_params(raw)


def test_unknown_item_lists_the_configured_ones() -> None:
    params = parse_params(embedded_params())
    with pytest.raises(ParamsError, match=r"dataset 'nope' is not configured; .*'hate_hate'"):
        params.dataset("nope")


def test_missing_params_file(tmp_path) -> None:
    with pytest.raises(ParamsError, match="not found: run stages from the repository root"):
        load_params(tmp_path / "params.yaml")


def test_probes_must_use_views_that_are_built() -> None:
    raw = embedded_params()
    raw["train_probes"]["poolings"] = ["sum", "top50"]
    raw["train_probes"]["binarize"] = [None, 2.0]
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert "(top level): Value error, train_probes asks for views that are not built: " in str(err.value)
    assert "'poolings': ['top50'], 'binarize': [2.0]" in str(err.value) and "got" not in str(err.value)


def test_a_judgement_task_needs_the_views_transfer_reads_its_texts_from() -> None:
    raw = embedded_params()
    raw["build_features"]["binarize"] = [1.0]
    raw["train_probes"]["binarize"] = [1.0]
    with pytest.raises(ParamsError, match=r"behaviour_labels.tasks.offensive_judgement: transfer reads a judged "
                       r"text's features from the feature store, so build_features.binarize needs null "
                       r"\(has \[1.0\]\)"):
        parse_params(raw)
    raw = embedded_params()
    raw["build_features"]["hidden"] = ["mean"]
    raw["train_probes"]["hidden"] = ["mean"]
    raw["lodo"]["hidden"] = "mean"
    with pytest.raises(ParamsError, match=r"build_features.hidden needs transfer.hidden 'last' \(has \['mean'\]\)"):
        parse_params(raw)


def test_a_marginal_design_needs_a_center_among_the_axes_and_at_every_model() -> None:
    raw = embedded_params()
    raw["train_probes"]["design"] = "marginal"
    with pytest.raises(ParamsError, match=r"design: marginal sweeps each axis around `center`"):
        parse_params(raw)
    raw["train_probes"]["center"] = {"width": "4k", "pooling": "mean", "binarize": None}
    with pytest.raises(ParamsError, match=r"its pooling and binarize must be among poolings \['sum', 'top20'\]"):
        parse_params(raw)
    raw["train_probes"]["center"] = {"width": "16k", "pooling": "sum", "binarize": None}
    with pytest.raises(ParamsError, match=r"center.width '16k' is not among the widths of sae.gemma3_270m"):
        parse_params(raw)


def test_a_quantile_threshold_needs_the_raw_view_and_its_form() -> None:
    raw = embedded_params()
    raw["train_probes"]["binarize"] = [None, "q50"]
    assert parse_params(raw).train_probes.binarize == [None, "q50"]
    raw["build_features"]["binarize"] = [1.0]
    raw["train_probes"]["binarize"] = [1.0, "q50"]
    with pytest.raises(ParamsError, match=r"'binarize': \['q50'\].*a q<NN> threshold reads the raw view"):
        parse_params(raw)
    raw["train_probes"]["binarize"] = ["median"]
    with pytest.raises(ParamsError, match=r"train_probes.binarize.0.*q<NN> with NN in 1..99"):
        parse_params(raw)


def test_by_width_names_a_width_no_model_has() -> None:
    raw = embedded_params()
    raw["train_sae"]["by_width"] = {"16k": {"training_samples": 600_000}}
    with pytest.raises(ParamsError, match=r"train_sae.by_width: \['16k'\] is no width of any model's SAEs "
                       r"\(sae.<model>.widths: \['4k'\]\)"):
        parse_params(raw)


def test_by_width_sets_its_widths_settings_only() -> None:
    raw = embedded_params()
    raw["train_sae"] |= {"training_samples": 200_000, "batch_size": 1024,
                         "by_width": {"4k": {"training_samples": 1_000_000}, "16k": {"batch_size": 256}}}
    raw["sae"]["gemma3_270m"]["widths"] = ["4k", "16k"]
    trained = parse_params(raw).train_sae
    assert (trained.for_sae("4k").training_samples, trained.for_sae("4k").batch_size) == (1_000_000, 1024)
    assert (trained.for_sae("16k").training_samples, trained.for_sae("16k").batch_size) == (200_000, 256)
    assert trained.for_sae("4k").k == trained.k


def test_an_saes_own_training_settings_apply_to_it_alone_over_its_widths() -> None:
    raw = embedded_params()
    raw["train_sae"] |= {"lr": 0.002, "batch_size": 1024, "by_width": {"16k": {"batch_size": 256}}}
    raw["sae"]["gemma3_270m"] |= {"layers": [5, 9], "widths": ["4k", "16k"],
                                  "training": {"l5__sae16k": {"lr": 0.004}}}
    params = parse_params(raw)
    own = params.sae_training("gemma3_270m", 5, "16k")
    assert (own.lr, own.batch_size) == (0.004, 256)  # its own learning rate, its width's batch
    assert [params.sae_training("gemma3_270m", layer, width).lr
            for layer, width in [(5, "4k"), (9, "16k"), (9, "4k")]] == [0.002] * 3
    assert params.sae_training("smollm2_135m_it", 12, "4k").lr == 0.002


def test_an_saes_own_training_settings_name_one_of_its_saes_and_a_trained_one() -> None:
    raw = embedded_params()
    raw["sae"]["gemma3_270m"]["training"] = {"l4__sae4k": {"lr": 0.004}}
    with pytest.raises(ParamsError, match=r"sae.gemma3_270m: .*training: \['l4__sae4k'\] names no SAE of these "
                       r"layers and widths: \['l5__sae4k', 'l9__sae4k'\]"):
        parse_params(raw)
    raw["sae"]["gemma3_270m"] |= {"training": {"l5__sae4k": {"lr": 0.004}}, "source": "path:saes/{layer}"}
    with pytest.raises(ParamsError, match=r"training sets SAEs of source 'path:saes/\{layer\}', which are loaded"):
        parse_params(raw)


def test_by_width_refuses_a_setting_a_width_cannot_set() -> None:
    raw = embedded_params()
    raw["train_sae"]["by_width"] = {"4k": {"k": 16}}
    allowed = r"\(allowed here: training_samples, batch_size, lr, decoder_init\)"
    with pytest.raises(ParamsError, match=r"train_sae.by_width.4k.k: unknown key " + allowed):
        parse_params(raw)
