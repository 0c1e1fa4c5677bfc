"""Fingerprints of user files and folders: they change with one byte, and name a missing path."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.errors import SaefsError
from features.sources.fingerprint import content_hash, source_fingerprint


def test_a_file_or_folder_hash_changes_with_one_byte_or_one_name(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x00\x01")
    first = content_hash(folder)
    assert content_hash(folder) == first
    (folder / "model.safetensors").write_bytes(b"\x00\x02")
    assert content_hash(folder) != first
    (folder / "model.safetensors").write_bytes(b"\x00\x01")
    (folder / "config.json").rename(folder / "other.json")
    assert content_hash(folder) != first
    assert content_hash(folder / "other.json") != content_hash(folder)


def test_only_local_sources_are_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data.csv").write_text("text,label\na,0\n")
    assert source_fingerprint("file:data.csv")["sha256"] == content_hash("data.csv")
    assert source_fingerprint("sae_probes:96_spam_is") == {"source": "sae_probes:96_spam_is", "sha256": None}
    assert source_fingerprint("train")["sha256"] is None


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(SaefsError, match="missing.csv does not exist"):
        source_fingerprint(f"file:{tmp_path}/missing.csv")
