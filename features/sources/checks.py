"""What of a source can be verified before a run, and without the hub where it must be.

Each check returns `Finding`s: `ok`, `failed` (the source is wrong: the detail names the fix) or `unchecked` (it
needs the Hugging Face hub, or a local copy of what it names, and neither is here). A check reads a source
through the same loader a stage would, so what it passes is what the stage will read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from features.errors import SaefsError
from features.sources.datasets import HubUnreachable, load_source
from features.sources.models import PACKAGED_MODELS

Status = Literal["ok", "failed", "unchecked"]
UNREACHABLE = "not in the Hugging Face cache, and the hub cannot be reached from here"


@dataclass(frozen=True)
class Finding:
    subject: str  # the params key checked, e.g. `datasets.piqa` or `sae.gemma2_2b`
    what: str  # the source or id it names
    status: Status
    detail: str


def check_model(subject: str, source: str, deepest_layer: int | None) -> Finding:
    """A model source resolves, and (where its config can be read) has the layers the profile reads."""
    kind, _, location = source.partition(":")
    if kind == "pypi":
        if location not in PACKAGED_MODELS:
            return Finding(subject, source, "failed", f"no packaged model {location!r}; packaged: "
                           f"{sorted(PACKAGED_MODELS)}")
        return Finding(subject, source, "ok", "packaged with the install")
    if kind == "path":
        config = Path(location) / "config.json"
        if not config.is_file():
            return Finding(subject, source, "failed", f"{config} not found: a path: model is a Hugging Face folder")
        return _layers_finding(subject, source, json.loads(config.read_text()), deepest_layer)
    if kind == "hf":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

        repo, _, revision = location.partition("@")
        try:
            config = hf_hub_download(repo, "config.json", revision=revision or None)
        except LocalEntryNotFoundError:
            return _known_model_finding(subject, source, repo, deepest_layer)
        except RepositoryNotFoundError:
            return Finding(subject, source, "failed", f"the hub has no model {repo!r} (or it is gated: log in)")
        return _layers_finding(subject, source, json.loads(Path(config).read_text()), deepest_layer)
    return Finding(subject, source, "failed", f"unknown model source kind {kind!r}")


def _known_model_finding(subject: str, source: str, repo: str, deepest_layer: int | None) -> Finding:
    """Without the hub's config: TransformerLens' own table of the models it knows (Gemma 2 among them)."""
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, convert_hf_model_config

    unread = Finding(subject, source, "unchecked", f"its config.json: {UNREACHABLE}")
    if repo not in OFFICIAL_MODEL_NAMES:
        return unread
    try:
        known = convert_hf_model_config(repo)
    except Exception:  # noqa: BLE001  (a model TransformerLens has no table for is read from the hub, failing here)
        return unread
    finding = _layers_finding(subject, source, {"num_hidden_layers": known["n_layers"],
                                                "model_type": known.get("original_architecture", "?")}, deepest_layer)
    return Finding(subject, source, finding.status, f"{finding.detail} (TransformerLens' table: the hub's config.json "
                   "was not read)")


def _layers_finding(subject: str, source: str, config: dict[str, Any], deepest_layer: int | None) -> Finding:
    depth = config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers")
    if depth is None:
        return Finding(subject, source, "failed", "its config names no num_hidden_layers: not a decoder LM")
    if deepest_layer is not None and deepest_layer >= depth:
        return Finding(subject, source, "failed", f"layer {deepest_layer} is read, but the model has {depth} "
                       f"blocks (layers 0-{depth - 1})")
    return Finding(subject, source, "ok", f"{config.get('model_type', '?')}, {depth} blocks")


def check_pretrained_saes(subject: str, specs: Sequence[str], model_source: str | None) -> list[Finding]:
    """Each `sae_lens:<release>/<id>` is in sae-lens' packaged catalogue, and its release is for this model (None:
    the SAEs are read zero-shot by another model, a VLM's language model, so that is not compared)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    catalogue = get_pretrained_saes_directory()
    findings = []
    for spec in specs:
        kind, _, argument = spec.partition(":")
        if kind == "path":
            found = any((Path(argument) / name).is_file() for name in ("cfg.json", "params.npz"))
            findings.append(Finding(subject, spec, "ok" if found else "failed",
                                    "a local SAE folder" if found else "no cfg.json or params.npz there"))
            continue
        release, _, sae_id = argument.partition("/")
        if release not in catalogue:
            near = sorted(name for name in catalogue if name.split("-")[:2] == release.split("-")[:2])
            findings.append(Finding(subject, spec, "failed", f"no release {release!r} in sae-lens' catalogue"
                                    f"{f' (near: {near[:6]})' if near else ''}"))
        elif sae_id not in catalogue[release].saes_map:
            findings.append(Finding(subject, spec, "failed", f"release {release!r} has no SAE {sae_id!r}: check "
                                    "the layer and width (see sae_lens' pretrained_saes.yaml)"))
        elif model_source is None:
            findings.append(Finding(subject, spec, "ok", f"in the catalogue, for {catalogue[release].model} (read "
                                    "zero-shot by another model)"))
        else:
            findings.append(_release_model_finding(subject, spec, catalogue[release].model, model_source))
    return findings


def _release_model_finding(subject: str, spec: str, release_model: str, model_source: str) -> Finding:
    """A release trained on another model reads another residual stream: compare by the hub id TransformerLens
    gives the release's model name (sae-lens names models as TransformerLens does)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    kind, _, location = model_source.partition(":")
    try:
        official = get_official_model_name(release_model)
    except ValueError:
        official = release_model
    if kind == "hf" and location.partition("@")[0].lower() != official.lower():
        return Finding(subject, spec, "failed", f"the release is for {official}, not {location}")
    return Finding(subject, spec, "ok", f"in the catalogue, for {official}")


def check_dataset(subject: str, source: str, labels: Iterable[Any] | None = None,
                  load: Callable[..., pd.DataFrame] = load_source, **fields: Any) -> Finding:
    """A dataset source loads through its loader (`load`: text sources', or `features.sources.images.load_images`)
    with these fields, and holds every configured label."""
    try:
        rows = load(source, **fields)
    except HubUnreachable:
        return Finding(subject, source, "unchecked", UNREACHABLE)
    except SaefsError as err:
        return Finding(subject, source, "failed", str(err))
    if labels is not None and "raw_label" in rows:
        missing = [label for label in labels if not (rows["raw_label"].astype(str) == str(label)).any()]
        if missing:
            held = sorted(rows["raw_label"].astype(str).unique())[:10]
            return Finding(subject, source, "failed", f"labels {missing} never occur (it holds {held})")
    return Finding(subject, source, "ok", f"{len(rows)} rows, columns {list(rows.columns)}")


def check_items(subject: str, source: str, fmt: str, split: str) -> Finding:
    """A multiple-choice source loads and holds the columns its format reads, and some items parse."""
    from features.sources.items import load_item_rows, parse_items

    try:
        items, skipped = parse_items(load_item_rows(source, fmt, split), fmt, subject)
    except HubUnreachable:
        return Finding(subject, source, "unchecked", UNREACHABLE)
    except SaefsError as err:
        return Finding(subject, source, "failed", str(err))
    if not items:
        return Finding(subject, source, "failed", f"no item of split {split!r} parses as {fmt!r} (skipped: "
                       f"{skipped})")
    return Finding(subject, source, "ok", f"{len(items)} items as {fmt!r}, {sum(skipped.values())} skipped")
