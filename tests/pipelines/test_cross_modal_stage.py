"""extract_images -> feast_apply -> cross_modal on a tiny PaliGemma read from a folder, path: SAEs and two image
sets (sklearn digits and a user's class folders): the image features registered as Feast views beside the text
models', every configured cell probed from them with the baselines and paired tests, the predictions, the costs and
the MLflow run; the params group is optional and checked by name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from features.core.cross_modal import VISION, sae_cell
from features.errors import SaefsError
from features.reporting import report
from features.stores.feast.catalog import CATALOG_FILE, read_catalog, write_catalog
from features.stores.feast.names import dense_view_name, view_name
from features.stores.shards import read_csr
from pipelines import cross_modal, extract_images, feast_apply, fingerprint_sources, paths
from pipelines.params import ParamsError, parse_params
from tests.features.test_images import class_folder
from tests.features.tiny import HIDDEN, make_jumprelu_sae
from tests.features.tiny_vlm import PATCHES, save_vlm
from tests.helpers import embedded_params, write_params
from tests.pipelines.test_feature_stages import copy_repo

LAYERS, WIDTHS, POOLINGS, THRESHOLDS = [0, 1], ["64", "96"], ["sum", "top2"], [None, 1.0]


def cross_modal_group(root: Path) -> dict:
    for layer in LAYERS:
        for width in WIDTHS:
            make_jumprelu_sae(HIDDEN, int(width), seed=layer).save_model(str(root / "saes" / f"l{layer}_w{width}"))
    return {"models": {"tiny": {"source": f"path:{save_vlm('paligemma', root / 'vlm')}", "layers": LAYERS,
                                "widths": WIDTHS, "sae": f"path:{root}/saes/l{{layer}}_w{{width}}"}},
            "datasets": {"digits": {"source": "sklearn:digits", "max_rows": 120},
                         "pets": {"source": f"folder:{class_folder(root / 'pets', {'cat': 15, 'dog': 15})}"}},
            "poolings": POOLINGS, "binarize": THRESHOLDS, "C_grid": [0.1, 1.0], "cv_folds": 2, "resamples": 2,
            "batch_size": 16, "device": "cpu", "n_jobs": 1}


@pytest.fixture
def tracked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An MLflow store of this test's own, by absolute URI (MLflow caches stores by URI across tests: a relative
    one would be another test's file), and the process's tracking URI put back afterwards."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_image_features_go_through_feast_views_into_every_configured_probe_with_baselines_and_paired_tests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracked: str) -> None:
    params = embedded_params(cross_modal=cross_modal_group(tmp_path))
    params["promote"]["tracking_uri"] = tracked
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    copy_repo(tmp_path)
    assert extract_images.main(["tiny"]) == 0
    for model in params["sae"]:  # the text models' build_features, with no views: the store holds the images'
        write_catalog(paths.feast_sources_dir(model) / CATALOG_FILE, [])
    views = read_catalog(paths.feast_sources_dir("tiny") / CATALOG_FILE)
    assert len(views) == len(LAYERS) * len(WIDTHS) * len(POOLINGS) * len(THRESHOLDS) + len(LAYERS) + 1
    codes, ids = read_csr(paths.features_dir("tiny", "pets"), "l1__sae96__top2")
    assert codes.shape == (30, 96) and set(ids) == set(pd.read_parquet(paths.image_rows("tiny", "pets"))["text_id"])
    feast_apply.run("feature_repo")
    applied = json.loads(paths.feast_applied().read_text())["feature_views"]
    assert {view.name for view in views} == set(applied)
    assert {view_name("tiny", 0, "64", "sum", 1.0), dense_view_name("tiny", VISION)} <= set(applied)
    assert cross_modal.main(["tiny"]) == 0
    results = json.loads(paths.cross_modal_metrics("tiny").read_text())
    assert set(results["datasets"]) == {"digits", "pets"}
    for name, dataset in results["datasets"].items():
        assert dataset["image_tokens_per_image"] == [PATCHES]
        cells = {(row["layer"], row["width"], row["pooling"], row["binarize"]) for row in dataset["sae"]}
        assert cells == {(layer, width, pooling, t) for layer in LAYERS for width in WIDTHS for pooling in POOLINGS
                         for t in THRESHOLDS}, name
        for row in [dataset["vision"], *dataset["residual"], *dataset["sae"]]:
            assert 0 <= row["macro_f1_low"] <= row["macro_f1"] <= row["macro_f1_high"] <= 1 and row["resamples"] == 2
        assert [row["layer"] for row in dataset["residual"]] == LAYERS
        for row in dataset["sae"]:
            for baseline in ("vision", "residual"):
                assert row[f"sae_minus_{baseline}_p"] <= row[f"sae_minus_{baseline}_p_holm"] <= 1
        assert set(dataset["sae_quality"]) == {f"l{layer}__sae{width}" for layer in LAYERS for width in WIDTHS}
    assert results["datasets"]["pets"]["classes"] == 2 and results["datasets"]["digits"]["classes"] == 10
    predictions = pd.read_parquet(paths.cross_modal_predictions("tiny"))
    fits = {f"{d}:{c}" for d in ("digits", "pets") for c in ("vision__mean", "l0__hidden__mean", "l1__hidden__mean",
                                                               *(sae_cell(layer, w, p, t) for layer in LAYERS
                                                                 for w in WIDTHS for p in POOLINGS
                                                                 for t in THRESHOLDS))}
    assert set(predictions["fit"]) == fits
    shown = report.cross_modal_table({"tiny": results})  # what the report's section reads of it
    assert shown["dataset"].tolist() == ["digits", "pets"] and shown["best SAE"].str.startswith("l").all()
    assert "of 2 image sets" in report.cross_modal_reading({"tiny": results})
    table = pd.read_csv(paths.cross_modal_table("tiny"))
    assert len(table) == len(fits) and "sae_minus_vision_p_holm" in table
    cost = json.loads(paths.stage_cost("extract_images", "tiny").read_text())
    images = sum(dataset["images"] for dataset in results["datasets"].values())
    assert cost["work"]["images"] == images and cost["work"]["tokens"] == PATCHES * images
    assert json.loads(paths.stage_cost("cross_modal", "tiny").read_text())["work"]["fits"] == 2 * len(fits)

    import mlflow

    runs = mlflow.search_runs(experiment_names=["saefs/cross_modal"])  # the stage left its store as MLflow's
    assert mlflow.get_tracking_uri() == tracked
    assert "cross_modal:tiny" in set(runs["tags.mlflow.runName"]) and len(runs) == 1 + len(fits)
    served = runs.set_index("tags.mlflow.runName")["tags.feature_service"]
    assert served["pets:" + sae_cell(1, "96", "top2", 1.0)] == view_name("tiny", 1, "96", "top2", 1.0)
    assert served[f"digits:{VISION}"] == dense_view_name("tiny", VISION)


def test_a_cross_modal_typo_is_named_and_no_group_is_no_run() -> None:
    raw = embedded_params()
    assert parse_params(raw).cross_modal is None
    with pytest.raises(ParamsError, match="model 'tiny' has no cross-modal run"):
        parse_params(raw).vlm("tiny")
    group = {"models": {"tiny": {"source": "path:x", "sae": "path:s/{layer}", "layers": [1], "widths": ["64"],
                                 "layer": 2}},
             "datasets": {"d": {"source": "sklearn:digits", "lable_field": "y"}}, "poolings": ["sum"],
             "binarize": [None], "C_grid": [1.0], "cv_folds": 2, "resamples": 1, "batch_size": 4, "device": "cpu",
             "n_jobs": 1}
    with pytest.raises(ParamsError) as caught:
        parse_params(embedded_params(cross_modal=group))
    message = str(caught.value)
    assert "cross_modal.models.tiny.layer: unknown key (allowed here: source, sae, layers, widths)" in message
    assert "cross_modal.datasets.d.lable_field: unknown key" in message
    assert "cross_modal.resamples: Input should be greater than or equal to 2" in message
    group |= {"models": {"tiny": {"source": "pypi:x", "sae": "train", "layers": [1], "widths": ["64"]}},
              "datasets": {"d": {"source": "images:x"}}, "resamples": 2}
    with pytest.raises(ParamsError) as caught:
        parse_params(embedded_params(cross_modal=group))
    message = str(caught.value)
    assert "cross_modal.models.tiny.source" in message and "['hf', 'path']" in message
    assert "cross_modal.models.tiny.sae" in message and "cross_modal.datasets.d.source" in message
    group |= {"models": {"gemma3_270m": {"source": "path:x", "sae": "path:s/{layer}", "layers": [1], "widths": ["64"]}},
              "datasets": {"d": {"source": "sklearn:digits"}}}
    with pytest.raises(ParamsError, match=r"cross_modal.models \['gemma3_270m'\] are also keys of models"):
        parse_params(embedded_params(cross_modal=group))


def test_fingerprints_hash_the_vlm_sae_and_image_folders(tmp_path: Path) -> None:
    group = cross_modal_group(tmp_path)
    params = parse_params(embedded_params(cross_modal=group))
    before = fingerprint_sources.fingerprints(params)[paths.cross_modal_fingerprint("tiny")]
    assert before["model"]["sha256"] and set(before["saes"]) == {f"l{la}__{w}" for la in LAYERS for w in WIDTHS}
    assert before["datasets"]["digits"]["sha256"] is None  # a packaged set: its spec and the pinned version name it
    next((tmp_path / "pets" / "cat").iterdir()).write_bytes(b"another image")
    after = fingerprint_sources.fingerprints(params)[paths.cross_modal_fingerprint("tiny")]
    assert after["datasets"]["pets"]["sha256"] != before["datasets"]["pets"]["sha256"]
    assert after["model"] == before["model"] and after["saes"] == before["saes"]


def test_probing_before_the_images_are_extracted_names_the_stage_to_run(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_params(tmp_path, embedded_params(cross_modal=cross_modal_group(tmp_path)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SaefsError, match=r"metrics/extract_images/tiny\.json not found: run `dvc repro "
                                         r"extract_images@tiny` first"):
        cross_modal.run("tiny")
