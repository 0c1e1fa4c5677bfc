"""`saefs contrast A B` on a tiny model whose SAE has a latent planted on one token: a dataset's classes (read
from extract's shards) and two files (through a forward) differ by that token, and the planted latent ranks first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import csr_matrix
from typer.testing import CliRunner

from features.core.contrast import contrast
from features.core.prepare import text_id
from features.errors import SaefsError
from features.sources.sae import SAE_INDEX
from features.stores.activations import HELDOUT_TEXTS
from features.stores.files import write_json, write_parquet
from pipelines import contrast as contrast_cli
from pipelines import extract, latent_cards, paths, prepare_model, serve
from tests.features.test_shortcuts import plant
from tests.features.tiny import HIDDEN, make_jumprelu_sae, make_model, make_tokenizer
from tests.helpers import embedded_params, write_params

MODEL, DATASET, D_SAE, PLANTED, TOKEN = "tiny", "alpha", 16, 3, "w7"


def texts(n: int, seed: int, marked: bool) -> list[str]:
    """Random words; with `marked`, TOKEN among them."""
    rng = np.random.default_rng(seed)
    rows = [[f"w{w}" for w in rng.integers(30, 200, 6)] for _ in range(n)]
    for row in rows if marked else []:
        row.insert(int(rng.integers(0, 6)), TOKEN)
    return [" ".join(row) for row in rows]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """A scratch project after extract and latent_cards; class 'rude' of the dataset carries TOKEN, 'calm' not."""
    root = tmp_path_factory.mktemp("contrast")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        model, tokenizer = make_model("gemma3", n_layers=2), make_tokenizer()
        model.save_pretrained(root / "tiny")
        tokenizer.save_pretrained(root / "tiny")
        params = embedded_params(
            models={MODEL: {"source": "path:tiny"}},
            datasets={DATASET: {"source": "file:alpha.csv", "labels": [0, 1], "label_names": ["calm", "rude"]}},
            sae={MODEL: {"layers": [0], "widths": [str(D_SAE)], "source": "train"}},
            extract={"max_tokens": 12, "batch_size": 16, "poolings": ["sum", "max"], "include_bos": False,
                     "paper_compat": True, "shard_rows": 64, "device": "cpu"})
        params["train_probes"]["poolings"] = ["sum"]  # a subset of extract's, as params require
        write_params(root, params)
        prepare_model.run(MODEL)
        sae = make_jumprelu_sae(HIDDEN, D_SAE)
        plant(model, sae, PLANTED, tokenizer.convert_tokens_to_ids(TOKEN))  # the block input is the embedding
        sae.save_model(paths.sae_dir(MODEL) / f"l0__sae{D_SAE}")
        (paths.sae_dir(MODEL) / SAE_INDEX).write_text(
            json.dumps({f"l0__sae{D_SAE}": f"path:{paths.sae_dir(MODEL)}/l0__sae{D_SAE}"}))
        rows = texts(30, seed=0, marked=False) + texts(30, seed=1, marked=True)
        labels = [0] * 30 + [1] * 30
        write_parquet(paths.prepared(DATASET), pd.DataFrame({
            "text_id": [text_id(DATASET, t) for t in rows], "text": rows, "label": labels,
            "label_name": [["calm", "rude"][y] for y in labels], "split": (["train"] * 24 + ["test"] * 6) * 2,
            "lang": "en", "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")}))
        extract.run(f"{MODEL}/{DATASET}")
        write_json(paths.activations_dir(MODEL) / HELDOUT_TEXTS, texts(20, seed=2, marked=False))
        latent_cards.run(MODEL)
        yield root


def invoke(*args: str) -> Any:
    return CliRunner().invoke(serve.cli, ["contrast", *args])


def test_a_planted_latent_that_separates_two_sets_ranks_first() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((40, 30)) * (rng.random((40, 30)) < 0.2), rng.random((50, 30)) * (rng.random((50, 30)) < 0.2)
    a[:, 11] += 1 + rng.random(40)  # on in every text of A, at the rate of the others in B
    table = contrast(csr_matrix(a), csr_matrix(b))
    assert table.loc[0, "latent"] == 11 and table.loc[0, "higher_in"] == "A" and table.loc[0, "q"] < 1e-6
    assert table.loc[0, "auroc"] > 0.9 and table.loc[0, "on_a"] == 1.0
    flipped = contrast(csr_matrix(b), csr_matrix(a))
    assert flipped.loc[0, "latent"] == 11 and flipped.loc[0, "higher_in"] == "B"
    assert flipped.loc[0, "auroc"] == pytest.approx(1 - table.loc[0, "auroc"])
    assert (table["q"] >= table["p"]).all() and table["q"].iloc[1:].min() > 0.01  # the noise latents are not called
    with pytest.raises(SaefsError, match="needs texts in both sets"):
        contrast(csr_matrix(a), csr_matrix((0, 30)))


def test_the_classes_of_a_dataset_are_contrasted_from_its_extracted_codes(project, monkeypatch) -> None:
    monkeypatch.setattr(contrast_cli, "encode_files", None)  # a dataset needs no forward: calling it would fail
    result = invoke(f"dataset:{DATASET}:label=rude", f"dataset:{DATASET}:label=calm", "--json", "--top", "3")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["sets"]["A"]["texts"] == body["sets"]["B"]["texts"] == 30 and body["sae"] == f"l0__sae{D_SAE}"
    first = body["latents"][0]
    assert first["latent"] == PLANTED and first["higher_in"] == "A" and first["on_a"] == 1 and first["on_b"] == 0
    assert first["label"].startswith(repr(TOKEN)) and f"«{TOKEN}»" in first["contexts"][0]
    split = json.loads(invoke(f"dataset:{DATASET}:label=1:split=test", f"dataset:{DATASET}:label=0:split=test",
                              "--json").stdout)
    assert split["sets"]["A"]["texts"] == 6 and split["latents"][0]["latent"] == PLANTED


def test_two_files_are_encoded_and_contrasted_and_the_text_shows_the_cards(project) -> None:
    Path("marked.txt").write_text("\n".join(texts(12, seed=5, marked=True)) + "\n\n")
    pd.DataFrame({"text": texts(10, seed=6, marked=False)}).to_csv("plain.csv", index=False)
    result = invoke("file:marked.txt", "file:plain.csv", "--pooling", "max", "--contexts", "1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # stderr has the model's loading bar
    assert lines[0] == "A = file:marked.txt (12 texts), B = file:plain.csv (10 texts)"
    assert lines[3].split()[:3] == ["1", str(PLANTED), "A"] and repr(TOKEN) in lines[3]
    assert f"«{TOKEN}»" in lines[4]  # its top context, under it


@pytest.mark.parametrize(("args", "named"), [
    (["dataset:nope", "dataset:alpha"], "set 'dataset:nope': dataset 'nope' is not configured; params.yaml datasets"),
    (["file:missing.txt", "dataset:alpha"], "set 'file:missing.txt': no such file"),
    (["file:missing.csv", "dataset:alpha"], "file:missing.csv: no such file"),
    (["dataset:alpha:label=angry", "dataset:alpha"], "has no label 'angry'; its labels: ['calm', 'rude']"),
    (["dataset:alpha:lable=1", "dataset:alpha"], "'lable=1' is not label=<label> or split=train|test"),
    (["alpha", "dataset:alpha"], "set 'alpha' is not dataset:<name>"),
    (["file:blank.txt", "dataset:alpha"], "set 'file:blank.txt' holds no texts"),
    (["dataset:alpha", "dataset:alpha", "--model", "big"], "model 'big' has no SAEs configured"),
    (["dataset:alpha", "dataset:alpha", "--sae", "l9__sae4k"], "model 'tiny' has no SAE 'l9__sae4k': pass --sae"),
    (["dataset:alpha", "dataset:alpha", "--pooling", "top3"], "pooling 'top3' is not extracted"),
])
def test_bad_input_is_refused_naming_the_input_and_the_fix(project, caplog, args: list[str], named: str) -> None:
    Path("blank.txt").write_text("\n  \n")
    result = invoke(*args)
    assert result.exit_code == 2 and named in caplog.text, caplog.text
