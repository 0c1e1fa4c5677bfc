"""The transfer stage's cells: one-class targets reported, not trained on; a planted signal transfers; every
fit keeps its per-text predictions on resampled splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import SaefsError
from pipelines import transfer
from pipelines.params import CrossLingualTask, parse_params
from tests.features.test_probes import WIDTH, synthetic_frame
from tests.helpers import embedded_params


@pytest.fixture
def params():
    raw = embedded_params()
    raw["transfer"] |= {"C_grid": [0.1, 1.0], "cv_folds": 3, "resamples": 3}
    return parse_params(raw)


def labels_of(y: np.ndarray) -> pd.DataFrame:
    split = np.where(np.arange(len(y)) < int(0.75 * len(y)), "train", "test")
    return pd.DataFrame({"text_id": [f"t{i}" for i in range(len(y))], "label": y, "split": split,
                         "text": [f"item {i} class {c}" for i, c in enumerate(y)]})


def test_a_target_that_is_always_right_is_reported_not_trained_on(params, monkeypatch) -> None:
    def no_fit(*args, **kwargs):
        raise AssertionError("a one-class target must not be trained on")

    monkeypatch.setattr(transfer, "make_probe", no_fit)
    monkeypatch.setattr(transfer, "make_tfidf_baseline", no_fit)
    codes, _ = synthetic_frame(40)
    row, rows = transfer.cross_model_cell("phys_tf", "a", "b", labels_of(np.ones(40, dtype=int)), codes,
                                          pd.DataFrame(), WIDTH, params)
    assert row["status"].startswith("skipped: one class") and "macro_f1" not in row and rows == []
    assert row["n_train"] == 30 and row["n_test"] == 10


def test_a_planted_signal_transfers_above_every_floor(params) -> None:
    codes, y = synthetic_frame(200)
    hidden = pd.DataFrame({"hidden": list(np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32))})
    labels = labels_of(y)
    row, rows = transfer.cross_model_cell("phys_tf", "a", "b", labels, codes, hidden, WIDTH, params)
    assert row["status"] == "ok" and row["macro_f1"] > 0.8 > row["hidden_f1"] and row["resamples"] == 3
    assert row["macro_f1_low"] < row["macro_f1"] < row["macro_f1_high"] and row["majority_f1"] < 0.5
    assert row["roc_auc"] > 0.9 and 0 <= row["recall_at_1fpr"] <= row["recall_at_5fpr"] <= 1
    predictions = pd.concat(rows)
    assert set(predictions["fit"]) == {f"phys_tf:a->b:{probe}" for probe in ("sae", "hidden", "tfidf", "majority")}
    # resample 0 is the target's own split; every resample tests each text at most once per fit
    first = predictions[(predictions["resample"] == 0) & (predictions["split"] == "test")]
    assert set(first["text_id"]) == set(labels.loc[labels["split"] == "test", "text_id"])
    assert not predictions.duplicated(["fit", "resample", "split", "text_id"]).any()
    assert sorted(predictions["resample"].unique()) == [0, 1, 2]


def test_the_cells_of_one_target_share_the_fits_that_do_not_depend_on_the_source(params, monkeypatch) -> None:
    """Sources a and b -> target b: TF-IDF, majority and b's own hidden states (b's hidden-state probe in the cell
    b -> b) are fitted once for both cells, and each cell's row and prediction rows equal those it gets alone."""
    codes, y = synthetic_frame(120)
    rng = np.random.default_rng(1)
    hidden = {s: pd.DataFrame({"hidden": list(rng.normal(size=(120, 8)).astype(np.float32))}) for s in "ab"}
    labels = labels_of(y)
    alone = {s: transfer.cross_model_cell("judge", s, "b", labels, codes, hidden[s], WIDTH, params,
                                          target_hidden=hidden["b"]) for s in "ab"}
    calls = []
    real = transfer.fit_resamples
    monkeypatch.setattr(transfer, "fit_resamples", lambda *a, **k: calls.append(k["fit"]) or real(*a, **k))
    shared = {}
    together = {s: transfer.cross_model_cell("judge", s, "b", labels, codes, hidden[s], WIDTH, params,
                                             target_hidden=hidden["b"], shared=shared) for s in "ab"}
    assert calls == [f"judge:a->b:{p}" for p in ("sae", "hidden", "tfidf", "target_hidden", "majority")] + [
        "judge:b->b:sae"]
    for s in "ab":
        pd.testing.assert_series_equal(pd.Series(together[s][0]), pd.Series(alone[s][0]))
        pd.testing.assert_frame_equal(pd.concat(together[s][1], ignore_index=True),
                                      pd.concat(alone[s][1], ignore_index=True))


def test_a_class_too_rare_for_the_resamples_is_a_counted_skip_not_a_number(params) -> None:
    codes, _ = synthetic_frame(40)
    y = np.zeros(40, dtype=int)
    y[[0, 10, 20]] = 1  # enough for the target's own split, too few for a quarter of them in every other resample
    row, rows = transfer.cross_model_cell("phys_tf", "a", "b", labels_of(y), codes, pd.DataFrame(), WIDTH, params)
    assert row["status"].startswith("skipped: class 1 has 3 texts") and "macro_f1" not in row and rows == []


def language_frame(y: np.ndarray, langs: list[str]) -> pd.DataFrame:
    """Prepared rows of several languages: each language's first fifth of each class is its test split; the
    texts share no word across languages (as Spanish and Italian jokes share little with English tweets)."""
    texts = [f"{lang}word{c} {lang}filler{i % 7}" for i, (lang, c) in enumerate(zip(langs, y, strict=True))]
    frame = pd.DataFrame({"text_id": [f"t{i}" for i in range(len(y))], "label": y, "lang": langs, "text": texts})
    rank = frame.groupby(["lang", "label"]).cumcount()
    size = frame.groupby(["lang", "label"])["label"].transform("size")
    return frame.assign(split=np.where(rank < size // 5, "test", "train"))


def test_cross_lingual_cells_fill_the_language_matrix_with_every_probe_and_one_interval_method(params) -> None:
    codes, y = synthetic_frame(180)
    hidden = pd.DataFrame({"hidden": list(np.random.default_rng(0).normal(size=(180, 8)).astype(np.float32))})
    frame = language_frame(y, ["en"] * 80 + ["es"] * 50 + ["it"] * 50)
    rows, fits = transfer.cross_lingual_cells("offensive", "m", 3, frame, codes, hidden, WIDTH, params)
    rows = pd.DataFrame(rows)
    assert list(zip(rows["train_lang"], rows["test_lang"], strict=True)) == [
        (a, b) for a in ("en", "es", "it") for b in ("en", "es", "it")]
    assert (rows["status"] == "ok").all() and (rows["resamples"] == 3).all()  # every cell: the same 3 splits
    assert (rows["macro_f1"] > 0.8).all()  # the planted latents mean the same in every language
    cells = rows.set_index(["train_lang", "test_lang"])
    # TF-IDF learns words: it reads its own language and falls to chance on the others
    assert cells.loc[("en", "en"), "tfidf_f1"] > 0.9 and cells.loc[("en", "es"), "tfidf_f1"] < 0.6
    for probe in ("macro_f1", "hidden_f1", "tfidf_f1"):
        assert (rows[f"{probe}_low"] <= rows[probe]).all() and (rows[probe] <= rows[f"{probe}_high"]).all()
    predictions = pd.concat(fits)
    assert set(predictions["fit"]) >= {f"offensive:m:L3:en->es:{probe}" for probe in ("sae", "hidden", "tfidf",
                                                                                       "majority")}
    assert (rows["layer"] == 3).all()
    zero_shot = predictions.query("fit == 'offensive:m:L3:en->es:sae' and resample == 0")
    tested, trained = zero_shot.query("split == 'test'")["text_id"], zero_shot.query("split == 'val'")["text_id"]
    test_ids = frame.query("lang == 'es' and split == 'test'")["text_id"]
    assert sorted(tested) == sorted(test_ids) and set(trained) <= set(frame.query("lang == 'en'")["text_id"])
    nested = transfer.nested_metrics(rows.assign(task="t", model="m"), ["task", "model", "layer", "test_lang"])
    assert set(nested["t"]["m"]["3"]) == {"en", "es", "it"} and {
        "macro_f1", "macro_f1_low", "macro_f1_high", "roc_auc", "recall_at_1fpr"} <= set(nested["t"]["m"]["3"]["es"])


def test_a_train_language_is_fitted_once_per_split_for_its_whole_row(params, monkeypatch) -> None:
    """The cells of a train language train on the same texts in each split: one fit per (train language, probe,
    split) serves the row, and every cell's predictions and scores equal those of fitting the cell on its own."""
    codes, y = synthetic_frame(180)
    hidden = pd.DataFrame({"hidden": list(np.random.default_rng(0).normal(size=(180, 8)).astype(np.float32))})
    frame = language_frame(y, ["en"] * 80 + ["es"] * 50 + ["it"] * 50)
    calls = []
    real = transfer.fit_resamples
    monkeypatch.setattr(transfer, "fit_resamples", lambda *a, **k: calls.append(k["fit"]) or real(*a, **k))
    rows, fits = transfer.cross_lingual_cells("offensive", "m", 3, frame, codes, hidden, WIDTH, params)
    assert len(calls) == 3 * 4  # train languages x probes, each on the 3 resamples at once
    t = params.transfer
    for row in rows:  # each cell fitted on its own splits, as one cell's fits are
        cell = transfer.Cell(f"offensive:m:L3:{row['train_lang']}->{row['test_lang']}", frame, next(
            splits for a, b, splits in transfer.cross_lingual_resamples(frame["lang"], y, frame["split"] == "test", 3,
                                                                      params.prepare_data.seed)
            if (a, b) == (row["train_lang"], row["test_lang"])), t.cv_folds)
        sae = cell.fit("sae", lambda seed: transfer._sae_probe(params, WIDTH, seed, ">"), codes)
        cell.fit("hidden", lambda seed: transfer._dense_probe(params, seed), hidden)
        tfidf = cell.fit("tfidf", transfer.make_tfidf_baseline, frame[["text"]])
        assert row["macro_f1"] == sae["macro_f1"] and row["tfidf_f1_low"] == tfidf["macro_f1_low"]
        mine = pd.concat([f for f in fits if f["fit"].iloc[0].startswith(cell.name + ":")], ignore_index=True)
        alone = pd.concat(cell.rows, ignore_index=True)
        pd.testing.assert_frame_equal(mine[mine["fit"] != f"{cell.name}:majority"].reset_index(drop=True), alone)


def test_a_language_with_one_class_is_refused_with_its_counts(params, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"text": [f"tweet {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}).to_csv("en.csv")
    pd.DataFrame({"text": [f"chiste {i}" for i in range(30)], "label": [0] * 30}).to_csv("es.csv")
    spec = CrossLingualTask(languages={"en": {"source": "file:en.csv"}, "es": {"source": "file:es.csv"}},
                            labels=[0, 1], label_names=["not_offensive", "offensive"], max_rows=100)
    with pytest.raises(SaefsError, match=r"cross_lingual.offensive.languages.es \(file:es.csv\): .*one class only "
                       r"\('not_offensive'\): 30 rows of it, 0 of \['offensive'\]"):
        transfer.language_frames("offensive", spec, params)


def test_a_planted_behaviour_on_a_source_visible_token_is_predicted_from_real_sae_codes(params) -> None:
    """A target that behaves one way exactly when a text holds word w7: the source model (a tiny random Llama,
    whose residual stream keeps its tokens) sees the word, its SAE's pooled codes carry it, and the cell predicts
    the behaviour with macro F1 above 0.9. Continuous codes: a random SAE's activations rarely reach 1.0."""
    from features.core.transfer import codes_frame, hidden_frame
    from features.forward.extract import extract
    from tests.features.tiny import HIDDEN, make_jumprelu_sae, make_model, make_texts, make_tokenizer

    rng = np.random.default_rng(0)
    texts = [text.replace("w7 ", "w8 ") for text in make_texts([6] * 240, seed=1)]
    y = (np.arange(240) % 2).astype(int)
    texts = [f"{t} w7" if label else t for t, label in zip(texts, y, strict=True)]
    order = rng.permutation(240)
    texts, y = [texts[i] for i in order], y[order]
    model, tokenizer, sae = make_model("llama", n_layers=2), make_tokenizer(), make_jumprelu_sae(HIDDEN, 256)
    params = params.model_copy(update={"transfer": params.transfer.model_copy(update={"binarize": None})})
    out = extract(model, tokenizer, texts, [1], {1: {"256": sae}}, ["sum"], max_tokens=16, batch_size=32,
                  progress=False)
    labels = labels_of(y).assign(text=texts)
    codes, hidden = codes_frame(out.codes[1, "256", "sum"]), hidden_frame(out.hidden[1, "last"])
    row, _ = transfer.cross_model_cell("judge", "a", "b", labels, codes, hidden, 256, params, target_hidden=hidden)
    assert row["status"] == "ok" and row["macro_f1"] > 0.9 and row["minority_share"] == 0.5
    assert row["macro_f1_high"] - row["macro_f1_low"] < 0.2 and row["majority_f1"] < 0.5
    # the paired comparisons ran on the same splits: the target's own hidden state sees the word too
    assert row["target_hidden_f1"] > 0.9 and -1 < row["sae_minus_target_hidden"] < 1
    assert 0 <= row["sae_minus_tfidf_p"] <= 1 and row["sae_minus_target_hidden_low"] <= row["sae_minus_target_hidden"]


def test_holm_runs_over_every_paired_comparison_of_the_matrix() -> None:
    table = pd.DataFrame({"sae_minus_tfidf_p": [0.01, 0.04, np.nan], "sae_minus_target_hidden_p": [0.03, np.nan,
                                                                                                   np.nan]})
    out = transfer.with_holm(table)
    # three p-values in one family: 0.01 x 3, then max(0.03 x 2, 0.03), then max(0.04, 0.06)
    assert out["sae_minus_tfidf_p_holm"].tolist()[:2] == pytest.approx([0.03, 0.06])
    assert out["sae_minus_target_hidden_p_holm"].iloc[0] == pytest.approx(0.06)
    assert out["sae_minus_tfidf_p_holm"].isna().iloc[2] and out["sae_minus_target_hidden_p_holm"].isna().iloc[1]


def test_a_judgement_reads_each_text_of_its_datasets_once_in_a_stable_order(tmp_path, monkeypatch) -> None:
    from pipelines import behaviour_labels, paths
    from pipelines.params import JudgementTask

    monkeypatch.chdir(tmp_path)
    paths.prepared("a").parent.mkdir(parents=True)
    pd.DataFrame({"text_id": ["a1", "a2"], "text": ["shared", "only a"], "label": [1, 0]}).to_parquet(
        paths.prepared("a"))
    pd.DataFrame({"text_id": ["b1", "b2"], "text": ["only b", "shared"], "label": [0, 0]}).to_parquet(
        paths.prepared("b"))
    spec = JudgementTask(kind="judgement", datasets=["a", "b"], question="q?", answers=("no", "yes"), max_items=10,
                         decision="median")
    texts = behaviour_labels.judged_texts("judge", spec)
    assert sorted(texts["text"]) == ["only a", "only b", "shared"]
    assert texts.set_index("text").loc["shared", "dataset"] == "a"  # the first dataset keeps a shared text
    assert texts.equals(behaviour_labels.judged_texts("judge", spec))
    few = behaviour_labels.judged_texts("judge", spec.model_copy(update={"max_items": 2}))
    assert few["text"].tolist() == texts["text"].tolist()[:2]
    with pytest.raises(SaefsError, match=r"judges the texts of data/prepared/c.parquet, which is missing: run "
                       r"`dvc repro prepare_data`"):
        behaviour_labels.judged_texts("judge", spec.model_copy(update={"datasets": ["a", "c"]}))


def test_a_cross_lingual_task_binarizes_with_its_own_operator(params) -> None:
    """The paper's cross-lingual scripts keep a latent at exactly the threshold (>=), its classifiers do not (>):
    codes whose informative latents sit at 1.0 carry the class only under the task's '>='."""
    codes, y = synthetic_frame(180)
    codes["latent_values"] = [[1.0 if i < 3 else 0.5 for i in ids] for ids in codes["latent_ids"]]
    hidden = pd.DataFrame({"hidden": list(np.zeros((180, 2), dtype=np.float32))})
    frame = language_frame(y, ["en"] * 90 + ["es"] * 90)
    f1 = {}
    for op in (">", ">="):
        task = params.transfer.cross_lingual["offensive"].model_copy(update={"binarize_op": op})
        lingual = params.model_copy(update={"transfer": params.transfer.model_copy(
            update={"cross_lingual": {"offensive": task}})})
        rows = pd.DataFrame(transfer.cross_lingual_cells("offensive", "m", 3, frame, codes, hidden, WIDTH, lingual)[0])
        f1[op] = rows.set_index(["train_lang", "test_lang"]).loc[("en", "es"), "macro_f1"]
    assert f1[">="] > 0.8 and f1[">"] < 0.6


def test_the_cross_lingual_matrix_is_drawn_at_each_configured_layer_from_one_forward(tmp_path, monkeypatch) -> None:
    """A source with cross_lingual_layers [1, 2] gets one frame per layer from one extract call, each encoded by
    its own SAE; a layer without an SAE of the cell's width is refused by name."""
    import json

    from features.sources.sae import SAE_INDEX
    from pipelines import paths
    from tests.features.tiny import HIDDEN, make_jumprelu_sae, make_model, make_texts, make_tokenizer

    monkeypatch.chdir(tmp_path)
    raw = embedded_params()
    raw["sae"]["gemma3_270m"]["layers"] = [1, 2]
    raw["transfer"]["sources"] = {"gemma3_270m": {"layer": 1, "width": "4k", "cross_lingual_layers": [1, 2]}}
    raw["transfer"]["pair"] = ["gemma3_270m", "gemma3_270m"]
    raw["lodo"]["sources"] = {}
    params = parse_params(raw)
    specs = {}
    for layer in (1, 2):
        folder = paths.sae_dir("gemma3_270m") / f"l{layer}"
        make_jumprelu_sae(HIDDEN, 64, seed=layer).save_model(folder)
        specs[f"l{layer}__sae4k"] = f"path:{folder}"
    (paths.sae_dir("gemma3_270m") / SAE_INDEX).write_text(json.dumps(specs))
    calls = []
    monkeypatch.setattr(transfer, "load_prepared", lambda *a: (make_model("llama", n_layers=3), make_tokenizer()))
    real = transfer.extract
    monkeypatch.setattr(transfer, "extract", lambda *a, **k: calls.append(a[3]) or real(*a, **k, progress=False))
    featurize = transfer.Featurizer("gemma3_270m", params)
    by_layer = featurize(make_texts([5] * 6, seed=0), [1, 2])
    assert calls == [[1, 2]] and set(by_layer) == {1, 2} and featurize.width == 64
    (codes1, hidden1), (codes2, hidden2) = by_layer[1], by_layer[2]
    assert len(codes1) == len(codes2) == 6
    assert not np.allclose(np.stack(hidden1["hidden"]), np.stack(hidden2["hidden"]))
    raw["transfer"]["sources"]["gemma3_270m"]["cross_lingual_layers"] = [1, 5]
    with pytest.raises(Exception, match=r"transfer.sources.gemma3_270m: layer 5 / width 4k is not an SAE of"):
        parse_params(raw)
