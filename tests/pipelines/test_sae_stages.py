"""train_sae / extract / check_sae on a tiny model: the quality gate and resumable extraction."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from features.core.naming import codes_name
from features.core.sae_config import SAETrainingConfig
from features.core.sae_training import train_sae
from features.errors import SaefsError
from features.forward.extract import collect_activations, extract
from features.sources.sae import load_sae
from features.stores.activations import CacheMismatch
from features.stores.files import write_json
from features.stores.shards import ShardWriter, read_csr
from features.stores.validation import Failure, SaeQualityRules, validate_sae_quality
from pipelines import check_sae, fingerprint_sources, paths
from pipelines import collect_activations as collect_stage
from pipelines import extract as extract_stage
from pipelines import train_sae as train_sae_stage
from tests.features.tiny import HIDDEN, gemma_scope_params, make_model, make_texts, make_tokenizer
from tests.helpers import embedded_params, write_params


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = make_model("gemma3", n_layers=4), make_tokenizer()
    texts = make_texts([5 + i % 20 for i in range(300)])
    acts = collect_activations(model, tokenizer, texts, [0], max_tokens=32, batch_size=32, progress=False)
    cfg = SAETrainingConfig(architecture="topk", k=8, training_samples=20_000, batch_size=256, lr=3e-3, seed=0)
    sae = train_sae(acts[0], cfg, width=128)
    return model, tokenizer, texts, sae


def test_quality_gate_fails_for_an_sae_applied_to_another_layer(tiny) -> None:
    model, tokenizer, texts, sae = tiny
    out = extract(model, tokenizer, texts, [0, 3], {0: {"trained_here": sae}, 3: {"from_layer0": sae}}, ["sum"],
                  max_tokens=32, batch_size=32, progress=False)
    quality = pd.DataFrame([{"sae": f"l{layer}__{name}", **q.__dict__} for (layer, name), q in out.quality.items()])
    report = validate_sae_quality(quality, SaeQualityRules(min_fve=0.6, max_dead_fraction=0.9), "tiny/texts")
    assert not report.success
    assert [(f.column, f.unexpected_count) for f in report.failures] == [("fve", 1)]
    assert "l3__from_layer0 has" in report.message() and "l0__trained_here" not in report.failures[0].detail


def test_check_sae_stage_fails_with_the_sae_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = embedded_params()
    write_params(tmp_path, params)
    paths.extract_metrics("gemma3_270m", "spam").parent.mkdir(parents=True)
    for dataset in params["datasets"]:  # one check per model, over every dataset's tokens: spam's l9 fits badly
        paths.extract_metrics("gemma3_270m", dataset).write_text(json.dumps({"sae_quality": {
            "l5__sae4k": {"fve": 0.91, "l0": 32.0, "dead_fraction": 0.1, "tokens": 900},
            "l9__sae4k": {"fve": 0.12 if dataset == "spam" else 0.8, "l0": 32.0, "dead_fraction": 0.97, "tokens": 900},
        }}))
    paths.train_sae_metrics("gemma3_270m").parent.mkdir(parents=True)
    paths.train_sae_metrics("gemma3_270m").write_text(json.dumps({"source": "train", "saes": {
        "l5__sae4k": {"heldout": {"fve": 0.9, "l0": 32.0, "dead_fraction": 0.01, "dense_fraction": 0.0,
                                  "loss_recovered": 0.95}},
        "l9__sae4k": {"heldout": {"fve": 0.85, "l0": 32.0, "dead_fraction": 0.03, "dense_fraction": 0.2,
                                  "loss_recovered": 0.31}},  # dense latents, and it loses the model's loss
    }}))
    with pytest.raises(check_sae.SaeQualityFailed) as err:
        check_sae.run("gemma3_270m")
    message = str(err.value)
    # dead and dense fractions are judged on the held-out corpus only (a dataset's 900 tokens leave latents silent)
    assert "SAEs of 'gemma3_270m' failed 3 of 4 expectations" in message
    assert "l9__sae4k on spam has 0.120" in message and "l9__sae4k on held-out corpus has 0.310" in message
    assert "l9__sae4k on held-out corpus has 0.200" in message and "l5__sae4k" not in message
    assert "on toxic" not in message  # the datasets where it fits are not named
    results = json.loads((paths.sae_check_dir("gemma3_270m") / "results.json").read_text())
    assert results["success"] is False


def record_validation(dataset: str, failures: list[Failure]) -> None:
    """What validate_data leaves in data/validation/<dataset>/ (the stage needs labelled, split texts)."""
    write_json(paths.validation_dir(dataset) / "results.json",
               {"dataset": dataset, "success": not failures, "failures": [asdict(f) for f in failures]})


def _extract_scratch(tiny, tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    """A scratch project (run from tmp_path) with the tiny model, its layer-0 SAE and 100 texts."""
    model, tokenizer, texts, sae = tiny
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    from features.sources.models import prepare_model

    prepare_model("path:tiny", paths.model_dir("tiny"))
    sae.save_inference_model(paths.sae_dir("tiny") / "l0__sae128")
    index = {"l0__sae128": f"path:{paths.sae_dir('tiny')}/l0__sae128"}
    (paths.sae_dir("tiny") / "saes.json").write_text(json.dumps(index))
    rows = pd.DataFrame({"text_id": [f"t{i:03d}" for i in range(100)], "text": texts[:100]})
    paths.prepared("tiny_texts").parent.mkdir(parents=True)
    rows.to_parquet(paths.prepared("tiny_texts"))
    record_validation("tiny_texts", [])
    params = embedded_params(models={"tiny": {"source": "path:tiny"}},
                             sae={"tiny": {"layers": [0], "widths": ["128"], "source": "train"}},
                             datasets={"tiny_texts": {"source": "file:unused.csv", "labels": [0, 1]}})
    params["extract"] |= {"shard_rows": 30, "device": "cpu", "poolings": ["sum", "top3"]}
    params["train_probes"]["poolings"] = ["sum"]
    write_params(tmp_path, params)
    return rows, params


def test_extract_stage_resumes_after_a_crash(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer, _, sae = tiny
    monkeypatch.chdir(tmp_path)
    rows, params = _extract_scratch(tiny, tmp_path)
    real_write, calls = ShardWriter._write_shard, []

    def crash_on_third_shard(self, block):
        calls.append(len(block))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        real_write(self, block)

    monkeypatch.setattr(ShardWriter, "_write_shard", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_stage.run("tiny/tiny_texts")
    monkeypatch.setattr(ShardWriter, "_write_shard", real_write)
    extract_stage.run("tiny/tiny_texts")
    metrics = json.loads(paths.extract_metrics("tiny", "tiny_texts").read_text())
    assert metrics["texts_extracted_now"] == 40  # two shards of 30 survived the crash

    extract_stage.run("tiny/tiny_texts")  # DVC reran it, say, for a logging change: nothing to redo
    again = json.loads(paths.extract_metrics("tiny", "tiny_texts").read_text())
    assert again == metrics and again["sae_quality"]["l0__sae128"]["tokens"] > 0

    resumed, ids = read_csr(paths.features_dir("tiny", "tiny_texts"), codes_name(0, "128", "top3"))
    fresh = extract(model, tokenizer, rows["text"].tolist(), [0], {0: {"128": sae}}, ["top3"],
                    max_tokens=params["extract"]["max_tokens"], batch_size=32, progress=False)
    assert ids.tolist() == rows["text_id"].tolist()
    np.testing.assert_allclose(resumed.toarray(), fresh.codes[0, "128", "top3"].toarray())
    # The SAE quality covers all 100 texts, the 60 stored before the crash too, as an uninterrupted run's does.
    uninterrupted = asdict(fresh.quality[0, "128"]) | {"tokens": int(fresh.n_tokens.sum())}
    assert metrics["sae_quality"]["l0__sae128"] == pytest.approx(uninterrupted, rel=1e-6)


def test_two_extract_workers_write_the_shards_of_one(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, params = _extract_scratch(tiny, tmp_path)
    extract_stage.run("tiny/tiny_texts")
    single = paths.features_dir("tiny", "tiny_texts").rename(tmp_path / "single")
    one = json.loads(paths.extract_metrics("tiny", "tiny_texts").read_text())

    params["scale_out"]["extract_workers"] = 2  # torchrun, gloo: 4 blocks of 30 texts in 2 rounds
    write_params(tmp_path, params)
    extract_stage.run("tiny/tiny_texts")
    out_dir = paths.features_dir("tiny", "tiny_texts")
    assert (out_dir / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    for shard in sorted(single.glob("shard-*.npz")):
        with np.load(shard) as expected, np.load(out_dir / shard.name) as got:
            assert sorted(got.files) == sorted(expected.files)
            for key in expected.files:
                np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{shard.name} {key}")
    two = json.loads(paths.extract_metrics("tiny", "tiny_texts").read_text())
    assert two["texts_extracted_now"] == 100 and two["tokens"] == one["tokens"]
    quality, expected = two["sae_quality"]["l0__sae128"], one["sae_quality"]["l0__sae128"]
    assert quality["tokens"] == expected["tokens"]  # both workers' tokens were merged
    assert quality == pytest.approx(expected, rel=1e-6)


def test_extract_refuses_a_dataset_that_failed_validation(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    _extract_scratch(tiny, tmp_path)
    record_validation("tiny_texts", [Failure("every class has enough rows", "expect_column_values_to_be_between",
                                             "class_rows", 12, "class 1 has 12 rows, needs >= 20")])
    with pytest.raises(SaefsError, match=r"dataset 'tiny_texts' failed validation.*every class has enough rows "
                                         r"\(class 1 has 12 rows, needs >= 20\).*dvc repro validate_data@tiny_texts"):
        extract_stage.run("tiny/tiny_texts")
    assert not paths.features_dir("tiny", "tiny_texts").exists()
    (paths.validation_dir("tiny_texts") / "results.json").unlink()  # never validated: said, not refused
    with caplog.at_level(logging.WARNING, logger="saefs.extract"):
        extract_stage.run("tiny/tiny_texts")
    assert "dataset 'tiny_texts' has not been validated" in caplog.text


def test_a_layer_beyond_the_depth_is_refused_before_loading_the_model(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import features.sources.lm

    monkeypatch.chdir(tmp_path)
    _, params = _extract_scratch(tiny, tmp_path)
    params["sae"]["tiny"]["layers"] = [0, 7]
    write_params(tmp_path, params)

    def no_load(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(features.sources.lm, "load_prepared", no_load)
    monkeypatch.setattr(train_sae_stage, "load_prepared", no_load)
    depth = (r"params\.yaml sae\.tiny\.layers: layer 7 is beyond the depth of the model in data/models/tiny "
             r"\(4 blocks: 0\.\.3\)")
    with pytest.raises(SaefsError, match=depth):
        train_sae_stage.run("tiny")
    with pytest.raises(SaefsError, match=depth):
        extract_stage.run("tiny/tiny_texts")


def test_extract_starts_over_when_the_model_or_an_sae_changes(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output is persisted and the params stay the same: only the content of the model or SAE differs."""
    from features.sources.models import prepare_model

    _, tokenizer, _, _ = tiny
    monkeypatch.chdir(tmp_path)
    rows, params = _extract_scratch(tiny, tmp_path)
    extract_stage.run("tiny/tiny_texts")
    out_dir, sae_dir = paths.features_dir("tiny", "tiny_texts"), paths.sae_dir("tiny") / "l0__sae128"

    def stored_and_fresh(model, sae) -> tuple[np.ndarray, np.ndarray]:
        extract_stage.run("tiny/tiny_texts")
        assert json.loads(paths.extract_metrics("tiny", "tiny_texts").read_text())["texts_extracted_now"] == 100
        fresh = extract(model, tokenizer, rows["text"].tolist(), [0], {0: {"128": sae}}, ["sum"],
                        max_tokens=params["extract"]["max_tokens"], batch_size=32, progress=False)
        return read_csr(out_dir, codes_name(0, "128", "sum"))[0].toarray(), fresh.codes[0, "128", "sum"].toarray()

    retrained = make_model("gemma3", n_layers=4, seed=1)  # new weights behind the same path: source
    retrained.save_pretrained(tmp_path / "tiny")
    prepare_model("path:tiny", paths.model_dir("tiny"))
    stored, fresh = stored_and_fresh(retrained, load_sae(f"path:{sae_dir}"))
    np.testing.assert_allclose(stored, fresh, rtol=1e-5)

    shutil.rmtree(sae_dir)  # the same spec, now a Gemma Scope folder
    sae_dir.mkdir()
    np.savez(sae_dir / "params.npz", **gemma_scope_params(HIDDEN, 128))
    stored, fresh = stored_and_fresh(retrained, load_sae(f"path:{sae_dir}"))
    np.testing.assert_allclose(stored, fresh, rtol=1e-5)


def _sae_scratch(tiny, tmp_path: Path, **sae: Any) -> dict:
    """A scratch project with the tiny model and a file corpus of its 300 texts, for collect_activations and
    train_sae."""
    model, tokenizer, texts, _ = tiny
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    from features.sources.models import prepare_model

    prepare_model("path:tiny", paths.model_dir("tiny"))
    pd.DataFrame({"text": texts, "label": 0}).to_csv(tmp_path / "corpus.csv", index=False)
    params = embedded_params(
        models={"tiny": {"source": "path:tiny"}},
        sae={"tiny": {"layers": [0, 1], "widths": ["64"], "source": "train"} | sae},
        collect_activations={"corpus": ["file:corpus.csv"], "train_tokens": 2000, "heldout_tokens": 300,
                             "max_tokens": 16, "batch_size": 32, "seed": 0})
    params["train_sae"] |= {"training_samples": 2048, "batch_size": 256, "loss_texts": 4}
    params["extract"]["device"] = "cpu"
    params["transfer"]["cross_lingual"] = {}  # its fortunes live in an installed environment, not this scratch
    write_params(tmp_path, params)
    fingerprint_sources.run()
    return params


def test_train_sae_trains_from_the_cache_and_measures_each_sae(tiny, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _sae_scratch(tiny, tmp_path)
    collect_stage.run("tiny")
    manifest = json.loads((paths.activations_dir("tiny") / "manifest.json").read_text())
    assert manifest["layers"] == [0, 1] and manifest["splits"]["train"]["tokens"] >= 2000
    assert 300 <= manifest["splits"]["heldout"]["tokens"] < 330  # whole texts, up to the first that reaches it
    train_sae_stage.run("tiny")
    metrics = json.loads(paths.train_sae_metrics("tiny").read_text())["saes"]
    assert set(metrics) == {"l0__sae64", "l1__sae64"}
    for sae in metrics:  # its keys sorted, not in the order of sae-lens' set, which changes from process to process
        config = (paths.sae_dir("tiny") / sae / "cfg.json").read_text()
        assert config == json.dumps(json.loads(config), indent=2, sort_keys=True) + "\n"
        assert load_sae(f"path:{paths.sae_dir('tiny') / sae}").cfg.d_sae == 64  # and it loads
    heldout = metrics["l1__sae64"]["heldout"]
    assert heldout["tokens"] == manifest["splits"]["heldout"]["tokens"] and 0 < heldout["l0"] <= 32  # TopK, k 32
    assert {"fve", "dead_fraction", "dense_fraction", "loss_recovered", "loss_clean"} <= set(heldout)
    # the profile's n_jobs 2: both SAEs at once in worker processes, the stage's torch threads shared between them
    assert [metrics[sae]["sae_at_once"] for sae in sorted(metrics)] == [2, 2]
    assert {metrics[sae]["torch_threads"] for sae in metrics} == {max(1, torch.get_num_threads() // 2)}
    training = metrics["l1__sae64"]["training"]  # the trainer's dead window at every step of its 8 (2,048 / 256)
    assert training["dead_history"]["step"] == list(range(8)) and training["steps"] == 8
    assert training["dead_fraction_at_end"] == training["dead_history"]["dead"][-1] / 64


def test_each_width_trains_with_its_own_settings(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = _sae_scratch(tiny, tmp_path, layers=[0, 1], widths=["32", "64"],
                          training={"l1__sae32": {"lr": 0.01}})
    params["train_sae"]["by_width"] = {"64": {"training_samples": 4096, "batch_size": 128}}
    params["train_sae"]["n_jobs"] = 1  # one at a time, in this process, where the recording below is
    write_params(tmp_path, params)
    collect_stage.run("tiny")
    seen = []

    def recording(acts, cfg, width, device="cpu", history=None, label="training SAE"):
        seen.append((width, cfg.training_samples, cfg.batch_size, cfg.lr))
        return train_sae(acts, cfg, width, device, history, label)

    monkeypatch.setattr(train_sae_stage, "train_sae", recording)
    train_sae_stage.run("tiny")
    batch, lr = params["train_sae"]["batch_size"], params["train_sae"]["lr"]
    assert seen == [(32, 2048, batch, lr), (64, 4096, 128, lr), (32, 2048, batch, 0.01), (64, 4096, 128, lr)]


def test_a_cache_of_other_layers_is_refused_naming_what_differs(tiny, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = _sae_scratch(tiny, tmp_path, layers=[0])
    collect_stage.run("tiny")
    params["sae"]["tiny"]["layers"] = [0, 1]
    write_params(tmp_path, params)
    with pytest.raises(CacheMismatch, match=r"collected for other settings \(layers: cache has \[0\], expected "
                       r"\[0, 1\]\): run `dvc repro collect_activations@tiny` first"):
        train_sae_stage.run("tiny")
    assert not paths.sae_dir("tiny").exists()


def test_a_width_the_tokens_cannot_support_fails_before_training(tiny, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _sae_scratch(tiny, tmp_path, widths=["64", "512"])
    collect_stage.run("tiny")
    with pytest.raises(SaefsError, match=r"sae.tiny.widths: width 512 \(512 latents\) needs at least 5,120 training "
                       r"tokens .* raise collect_activations.train_tokens or choose a smaller width"):
        train_sae_stage.run("tiny")
    assert not paths.sae_dir("tiny").exists() and not paths.train_sae_metrics("tiny").exists()


def test_a_corpus_short_of_the_token_budget_is_refused_and_nothing_is_written(tiny, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = _sae_scratch(tiny, tmp_path)
    params["collect_activations"]["train_tokens"] = 1_000_000
    write_params(tmp_path, params)
    with pytest.raises(SaefsError, match=r"the corpus \['file:corpus.csv'\] at max_tokens=16 has [\d,]+ tokens, "
                       r"fewer than the 1,000,300 asked for \(300 \+ 1,000,000\): add sources or lower"):
        collect_stage.run("tiny")
    assert not paths.activations_dir("tiny").exists()
