from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.sources.datasets import DataSourceError, load_source
from tests.helpers import hub_parquet_export


def test_sae_probes_dataset_loads_with_its_default_fields() -> None:
    df = load_source("sae_probes:96_spam_is")
    assert list(df.columns) == ["text", "raw_label"]
    assert len(df) == 1494 and set(df["raw_label"]) == {0, 1}


def test_sae_probes_out_of_distribution_set() -> None:
    df = load_source("sae_probes:OOD/66_living-room")
    assert len(df) == 300 and set(df["raw_label"]) == {"bigram", "not_bigram"}


def test_unknown_sae_probes_dataset_lists_known_ones() -> None:
    with pytest.raises(DataSourceError, match=r"sae_probes:nope: no such dataset; known: .*hate"):
        load_source("sae_probes:nope")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_file_source_reads_each_format(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame({"body": ["a b", "c d", "é"], "y": ["pos", "neg", "pos"], "language": ["en", "fr", "fr"]})
    path = tmp_path / f"data{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True, force_ascii=False)}[suffix]()
    df = load_source(f"file:{path}", text_field="body", label_field="y", lang_field="language")
    assert df.to_dict("list") == {"text": ["a b", "c d", "é"], "raw_label": ["pos", "neg", "pos"],
                                  "lang": ["en", "fr", "fr"]}


def test_file_source_missing_columns_names_them_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"content": ["x"], "label": [1]}).to_csv(path, index=False)
    expected = r"columns \['text'\] not found \(available: \['content', 'label'\]\).*text_field"
    with pytest.raises(DataSourceError, match=expected):
        load_source(f"file:{path}")


def test_file_source_undecodable_bytes_name_the_offset_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataSourceError, match=r"offset 14 are not valid utf-8.*encoding"):
        load_source(f"file:{path}")
    assert load_source(f"file:{path}", encoding="latin-1")["text"].tolist() == ["café"]


def test_file_source_nul_in_a_text_is_refused_naming_the_line_not_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_bytes(b"text,label\nfine,0\nbad \x00 text,1\nalso fine,0\n")
    with pytest.raises(DataSourceError, match=r"file:.*nul.csv: NUL characters \(\\x00\) on line 3;.*tr -d"):
        load_source(f"file:{path}")


def test_file_source_malformed_csv_names_the_file_the_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes("text,label\ncafé,1\n".encode("latin-1") + b"a,b,c,1\nok,0\n")
    expected = r"file:.*bad.csv: not a well-formed CSV: .*Expected 2 fields in line 3, saw 4.*double quotes"
    with pytest.raises(DataSourceError, match=expected) as err:
        load_source(f"file:{path}", encoding="latin-1")  # as the undecodable-bytes error advises
    assert isinstance(err.value.__cause__, pd.errors.ParserError)


def test_file_source_empty_csv_semicolons_and_bad_json_lines_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataSourceError, match=r"empty.csv: the file is empty; a CSV needs a header row"):
        load_source(f"file:{tmp_path / 'empty.csv'}")
    (tmp_path / "semi.csv").write_text("text;label\nhello;1\n")
    with pytest.raises(DataSourceError, match=r"looks separated by ';': save the file comma-separated"):
        load_source(f"file:{tmp_path / 'semi.csv'}")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", label: 0}\n')
    with pytest.raises(DataSourceError, match=r"bad.jsonl: line 2 is not valid JSON Lines .*one JSON object per line"):
        load_source(f"file:{tmp_path / 'bad.jsonl'}")


def test_file_source_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="no such file"):
        load_source(f"file:{tmp_path / 'none.csv'}")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataSourceError, match="unsupported file type '.xlsx'"):
        load_source(f"file:{tmp_path / 'd.xlsx'}")


def test_hf_source_reads_a_dataset_saved_to_disk(tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["q1", "q2"], "label": ["Harmless", "Harmful"]}),
        "test": datasets.Dataset.from_dict({"question": ["q3"], "label": ["Harmful"]}),
    })
    dd.save_to_disk(tmp_path / "election")
    df = load_source(f"hf:{tmp_path / 'election'}", text_field="question", split="test")
    assert df.to_dict("list") == {"text": ["q3"], "raw_label": ["Harmful"]}


def test_hf_source_offline_hub_miss_explains_the_way_out() -> None:
    with pytest.raises(DataSourceError, match=r"hf:nobody/nothing.*unreachable offline.*save_to_disk") as err:
        load_source("hf:nobody/nothing")
    assert isinstance(err.value.__cause__, ConnectionError)


def test_hf_source_missing_split_of_a_saved_dataset_names_the_splits(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": [0]})}).save_to_disk(
        tmp_path / "saved")
    with pytest.raises(DataSourceError, match=r"no split 'test' \(it has \['train'\]\); set `split:`") as err:
        load_source(f"hf:{tmp_path / 'saved'}", split="test")
    assert "offline" not in str(err.value)


def test_hf_source_error_that_is_not_offline_keeps_its_cause(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "local" / "train.csv", index=False)
    with pytest.raises(DataSourceError, match=r"hf:.*local \(split 'test'\).*Unknown split.*split:") as err:
        load_source(f"hf:{tmp_path / 'local'}", split="test")
    assert "offline" not in str(err.value) and isinstance(err.value.__cause__, ValueError)


def test_an_unlabelled_corpus_needs_no_label_column(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    pd.DataFrame({"text": ["a", "b"]}).to_json(path, orient="records", lines=True)
    assert load_source(f"file:{path}", with_labels=False).columns.tolist() == ["text"]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that huggingface_hub reads, offline (as every test runs)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_a_parquet_conversion_in_the_hub_cache_loads_offline(hub_cache: Path) -> None:
    rows = pd.DataFrame({"question": ["q1", "q2", "q3"], "label": ["Harmless", "Harmful", "Harmful"]})
    hub_parquet_export(hub_cache, "owner/set", {"default/test": rows, "default/train": rows.iloc[:1]})
    df = load_source("hf_parquet:owner/set", text_field="question", split="test")
    assert df.to_dict("list") == {"text": ["q1", "q2", "q3"], "raw_label": ["Harmless", "Harmful", "Harmful"]}
    assert len(load_source("hf_parquet:owner/set:default", text_field="question")) == 1  # split train


def test_a_parquet_conversion_names_its_configs_and_splits_when_asked_for_another(hub_cache: Path) -> None:
    rows = pd.DataFrame({"text": ["a"], "label": [0]})
    hub_parquet_export(hub_cache, "owner/set", {"first/train": rows, "second/train": rows})
    with pytest.raises(DataSourceError, match=r"several configs \['first', 'second'\].*hf_parquet:owner/set:<config>"):
        load_source("hf_parquet:owner/set")
    with pytest.raises(DataSourceError, match=r"no split 'test' of config 'first' \(it holds \['first/train', "
                                              r"'second/train'\].*set `split:`"):
        load_source("hf_parquet:owner/set:first", split="test")


def test_a_parquet_conversion_missing_from_the_cache_offline_says_how_to_fill_it(hub_cache: Path) -> None:
    with pytest.raises(DataSourceError, match=r"hf_parquet:owner/absent \(split 'train'\): not in the Hugging Face "
                                              r"cache.*hf download owner/absent --repo-type dataset --revision "
                                              r"refs/convert/parquet"):
        load_source("hf_parquet:owner/absent")


def test_a_script_based_dataset_is_refused_by_name_with_the_parquet_way(tmp_path: Path) -> None:
    """The pinned datasets raises a RuntimeError for a loading script (PIQA, PubMedQA): named, not a traceback."""
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "piqa.py").write_text("import datasets\n")
    with pytest.raises(DataSourceError, match=r"hf:.*piqa: a script-based dataset.*no longer runs.*"
                                              r"`source: hf_parquet:.*piqa`") as err:
        load_source(f"hf:{tmp_path / 'piqa'}")
    assert "offline" not in str(err.value)


def test_package_source_reads_a_data_file_an_installed_package_ships() -> None:
    frame = load_source("package:bastioncorpus/corpus/injections.jsonl", lang_field="lang")
    assert len(frame) == 181 and set(frame["raw_label"]) == {"benign", "malicious"}
    assert set(frame["lang"]) == {"en", "it", "de", "fr", "es"}
    with pytest.raises(DataSourceError, match="has no file 'corpus/missing.jsonl'"):
        load_source("package:bastioncorpus/corpus/missing.jsonl")
    with pytest.raises(DataSourceError, match="package 'no_such_pkg' is not installed"):
        load_source("package:no_such_pkg/data.csv")
    with pytest.raises(DataSourceError, match=r"name a file inside an installed package, package:<package>/<path>"):
        load_source("package:bastioncorpus")
