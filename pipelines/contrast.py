"""`saefs contrast A B`: the latents that separate two sets of texts, with their cards.

A set is
  dataset:<name>[:label=<label>][:split=train|test]  a dataset's prepared texts (every split unless split= says),
                                                    of one class with label= (its name, raw value or position)
  file:<path>                                       a .txt file (one text per line), or a .csv, .jsonl or .parquet
                                                    file with a `text` column

A dataset's texts are read as `extract` pooled them (data/features/<model>/<dataset>, no forward pass); a
file's run once through the model and SAE with the `extract` params. Latents rank by how well their pooled
value separates A from B (features.core.contrast: AUROC, Mann-Whitney U, Benjamini-Hochberg q over the
latents that are on in some text), each shown with its card from latent_cards (label, density, top contexts).

    saefs contrast dataset:spam:label=spam dataset:spam:label=ham
    saefs contrast file:mine.txt dataset:toxic --model gemma3_270m --sae l9__sae4k --pooling max --top 20
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from scipy.sparse import csr_matrix

from features.core.contrast import contrast
from features.core.naming import codes_name, parse_sae_name, sae_name
from features.errors import SaefsError
from features.sources.datasets import SourceSpec, load_file
from features.stores.cards import UnknownLatent, card_summary, open_cards
from features.stores.shards import read_csr
from pipelines import paths, setup_logging
from pipelines.params import Params, ParamsError, load_params

log = logging.getLogger("saefs.contrast")
SETS = "dataset:<name>[:label=<label>][:split=train|test] or file:<path>"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Cell:
    """Which pooled codes are compared: a model's SAE, pooled one way."""

    model: str
    sae: str
    pooling: str

    @property
    def layer_width(self) -> tuple[int, str]:
        return parse_sae_name(self.sae)


def choose_cell(params: Params, model: str | None, sae: str | None, pooling: str | None) -> Cell:
    """The model (default: the first of `sae` in params), its SAE (default: its first) and pooling (default: the
    first of extract.poolings), each checked against params."""
    model = model or next(iter(params.sae))
    config = params.sae_of(model)
    saes = [sae_name(layer, width) for layer in config.layers for width in config.widths]
    if (sae := sae or saes[0]) not in saes:
        raise SaefsError(f"model {model!r} has no SAE {sae!r}: pass --sae one of {saes}")
    if (pooling := pooling or params.extract.poolings[0]) not in params.extract.poolings:
        raise SaefsError(f"pooling {pooling!r} is not extracted: pass --pooling one of {params.extract.poolings}")
    return Cell(model, sae, pooling)


def parse_set(spec: str) -> tuple[str, str, dict[str, str]]:
    """(kind, dataset name or path, filters) of a set spec; see the module doc."""
    kind, _, rest = spec.partition(":")
    if kind == "file" and rest:
        return kind, rest, {}
    if kind != "dataset" or not rest:
        raise SaefsError(f"set {spec!r} is not {SETS}")
    name, *parts = rest.split(":")
    filters = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in ("label", "split") or not value:
            raise SaefsError(f"set {spec!r}: {part!r} is not label=<label> or split=train|test ({SETS})")
        filters[key] = value
    if filters.get("split", "train") not in SPLITS:
        raise SaefsError(f"set {spec!r}: split={filters['split']} is not one of {list(SPLITS)}")
    return kind, name, filters


def dataset_codes(spec: str, name: str, filters: dict[str, str], cell: Cell, params: Params) -> csr_matrix:
    """The pooled codes `extract` wrote for the dataset's texts that pass `filters`."""
    try:
        config = params.dataset(name)
        codes, row_ids = read_csr(paths.features_dir(cell.model, name), codes_name(*cell.layer_width, cell.pooling))
    except ParamsError as err:
        raise SaefsError(f"set {spec!r}: {err}") from None
    except SaefsError as err:
        raise SaefsError(f"set {spec!r}: {err} (`dvc repro extract` extracts every model x dataset)") from None
    rows = pd.read_parquet(paths.prepared(name), columns=["text_id", "label", "split"]).set_index("text_id")
    rows = rows.reindex(row_ids)
    keep = np.ones(len(rows), dtype=bool)
    if "split" in filters:
        keep &= (rows["split"] == filters["split"]).to_numpy()
    if "label" in filters:
        names = list(config.class_names)
        keys = [names, [str(v) for v in config.labels], [str(i) for i in range(len(names))]]
        position = next((key.index(filters["label"]) for key in keys if filters["label"] in key), None)
        if position is None:
            raise SaefsError(f"set {spec!r}: dataset {name!r} has no label {filters['label']!r}; its labels: "
                             f"{names} (or their positions 0..{len(names) - 1})")
        keep &= (rows["label"] == position).to_numpy()
    return codes[np.flatnonzero(keep)]


def file_texts(spec: str, location: str) -> list[str]:
    """The texts of a file set: a .txt file's non-blank lines, or the `text` column of a csv, jsonl or parquet."""
    path = Path(location)
    if path.suffix.lower() != ".txt":
        return load_file(SourceSpec(location, with_labels=False))["text"].astype(str).tolist()
    if not path.is_file():
        raise SaefsError(f"set {spec!r}: no such file (paths are relative to where saefs runs)")
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise SaefsError(f"set {spec!r}: not UTF-8 text ({err}); save it as UTF-8") from None


def encode_files(texts: dict[str, list[str]], cell: Cell, params: Params) -> dict[str, csr_matrix]:
    """Each file set's pooled codes: one model and SAE load, one extract per set (the `extract` params)."""
    from features.forward.extract import extract
    from features.sources.lm import load_prepared, resolve_device
    from features.sources.sae import SAE_INDEX, load_sae

    index = paths.sae_dir(cell.model) / SAE_INDEX
    if not paths.model_dir(cell.model).is_dir() or not index.is_file():
        raise SaefsError(f"model {cell.model!r} or its SAEs are not built here: run `dvc repro train_sae` "
                         "(it prepares the model first)")
    device = resolve_device(params.extract.device)
    model, tokenizer = load_prepared(paths.model_dir(cell.model), device)
    sae = load_sae(json.loads(index.read_text())[cell.sae], device)
    (layer, width), ex = cell.layer_width, params.extract
    out = {}
    for spec, rows in texts.items():
        try:
            out[spec] = extract(model, tokenizer, rows, [layer], {layer: {width: sae}}, [cell.pooling],
                                max_tokens=ex.max_tokens, batch_size=ex.batch_size, include_bos=ex.pools_bos,
                                paper_compat=ex.paper_compat, progress=False).codes[layer, width, cell.pooling]
        except SaefsError as err:
            raise SaefsError(f"set {spec!r}: {err}") from None
    return out


def set_codes(specs: list[str], cell: Cell, params: Params) -> dict[str, csr_matrix]:
    """Each set's pooled codes: datasets' as extracted, files' through one forward; an empty set is refused."""
    parsed = {spec: parse_set(spec) for spec in specs}
    files = {spec: file_texts(spec, where) for spec, (kind, where, _) in parsed.items() if kind == "file"}
    codes = {spec: dataset_codes(spec, where, filters, cell, params)
             for spec, (kind, where, filters) in parsed.items() if kind == "dataset"}
    for spec in [spec for spec, texts in files.items() if not texts] + [s for s, c in codes.items() if not c.shape[0]]:
        raise SaefsError(f"set {spec!r} holds no texts: give a file with texts, or a label and split the dataset has")
    return codes | (encode_files(files, cell, params) if files else {})


def ranked(a: str, b: str, cell: Cell, params: Params, top: int, contexts: int) -> dict[str, Any]:
    """The `top` latents that best separate set A from set B, with their cards (when latent_cards built them)."""
    codes = set_codes([a, b], cell, params)
    table = contrast(codes[a], codes[b]).head(top)
    try:
        cards = open_cards(paths.cards_dir(cell.model), cell.sae)
    except UnknownLatent as err:
        log.warning("%s: the latents are shown without cards", err)
        cards = None
    rows = [row | (card_summary(cards.card(int(row["latent"])), contexts) if cards else {})
            for row in table.to_dict("records")]
    return {"model": cell.model, "sae": cell.sae, "pooling": cell.pooling,
            "sets": {"A": {"set": a, "texts": codes[a].shape[0]}, "B": {"set": b, "texts": codes[b].shape[0]}},
            "latents": rows}


def render(result: dict[str, Any]) -> str:
    """The ranking as text: one line per latent, its contexts indented below it."""
    a, b = result["sets"]["A"], result["sets"]["B"]
    lines = [f"A = {a['set']} ({a['texts']} texts), B = {b['set']} ({b['texts']} texts)",
             f"{result['model']} {result['sae']}, {result['pooling']}-pooled codes. AUROC: the chance a text of A "
             "has the larger value; q: Benjamini-Hochberg over the latents on in some text.",
             f"{'#':>3} {'latent':>7} {'higher':>6} {'AUROC':>6} {'on in A':>8} {'on in B':>8} {'q':>9}  label",
             ]
    for rank, row in enumerate(result["latents"], 1):
        label = f"{row['label']} (density {row['density']:.2%})" if "label" in row else "(no card)"
        lines.append(f"{rank:>3} {row['latent']:>7} {row['higher_in']:>6} {row['auroc']:>6.3f} {row['on_a']:>8.0%} "
                     f"{row['on_b']:>8.0%} {row['q']:>9.2g}  {label}")
        lines += [f"{'':>12}{context!r}" for context in row.get("contexts", [])]
    return "\n".join(lines)


def contrast_command(
        a: Annotated[str, typer.Argument(help=f"the first set: {SETS}")],
        b: Annotated[str, typer.Argument(help="the second set, written as the first")],
        model: Annotated[str | None, typer.Option(help="a key of `sae` in params.yaml; default: the first")] = None,
        sae: Annotated[str | None, typer.Option(help="the model's SAE, e.g. l9__sae4k; default: its first")] = None,
        pooling: Annotated[str | None, typer.Option(help="one of extract.poolings; default: the first")] = None,
        top: Annotated[int, typer.Option(min=1, help="latents shown")] = 10,
        contexts: Annotated[int, typer.Option(min=0, help="top contexts shown per latent")] = 2,
        as_json: Annotated[bool, typer.Option("--json", help="print the ranking as JSON")] = False) -> None:
    """Rank the latents that separate two sets of texts (datasets, classes or files), with their cards."""
    setup_logging()
    try:
        params = load_params()
        result = ranked(a, b, choose_cell(params, model, sae, pooling), params, top, contexts)
    except SaefsError as err:
        log.error("%s", err)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2) if as_json else render(result))
