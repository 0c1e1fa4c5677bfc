"""Debian's fortunes as a dataset source: parsing, labels, ROT13, a damaged file's counted error, a missing
install, the install's checksum, and the fingerprint DVC sees."""

from __future__ import annotations

import pytest

from features.sources import fortunes
from features.sources.datasets import DataSourceError, load_source
from features.sources.fingerprint import source_fingerprint
from tests.helpers import plant_fortunes

CLEAN = ["Hola\nmundo.\n\t\t-- Anónimo", "Adiós.", "Repetido.", "Repetido.", "En los dos."]
OFFENSIVE = ["Un chiste grosero.", "En los dos.", "\x07¡Bip!"]


def test_entries_are_parsed_labelled_decoded_and_deduplicated(tmp_path) -> None:
    plant_fortunes(tmp_path, "es", CLEAN, OFFENSIVE, rotate=True)
    rows = load_source(f"fortune:es:{tmp_path}")
    assert sorted(zip(rows["text"], rows["raw_label"], strict=True)) == sorted([
        ("Hola\nmundo.\n\t\t-- Anónimo", 0), ("Adiós.", 0), ("Repetido.", 0),
        ("Un chiste grosero.", 1), ("¡Bip!", 1)])  # ROT13 undone; a text filed under both labels dropped
    assert set(rows["lang"]) == {"es"}


def test_a_file_that_is_no_fortune_text_is_a_counted_error_naming_it(tmp_path) -> None:
    plant_fortunes(tmp_path, "it", ["Ciao.", "Buongiorno."], ["Parolaccia."])
    damaged = tmp_path / fortunes.GAMES / "it" / "archive"
    damaged.write_bytes(b"\x1f\x8b\x08\x00binary\n%\nfine text\n%\n\x00\x00\x00\x04\n")
    with pytest.raises(DataSourceError, match=r"fortune:it:.*: 1 fortune files cannot be parsed, 2 of 6 entries hold "
                       r"NUL or control bytes: .*/it/archive \(2 of 3 entries, first at line 1\)\. .*remove them"):
        load_source(f"fortune:it:{tmp_path}")
    assert fortunes.read_entries(damaged) == (["fine text"], [1, 5])


def test_a_missing_install_or_language_names_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fortunes, "install_root", lambda: tmp_path)
    with pytest.raises(DataSourceError, match=r"fortune:es: .*/usr/share/games/fortunes/es.* not found; run `make "
                       r"install` \(it downloads and unpacks fortunes-es_1.36_all.deb"):
        load_source("fortune:es")
    with pytest.raises(DataSourceError, match=r"fortune:fr: no such language; Debian's packages hold \['es', 'it'\]"):
        load_source("fortune:fr")


def test_the_fingerprint_follows_the_files(tmp_path) -> None:
    plant_fortunes(tmp_path, "es", CLEAN, OFFENSIVE)
    before = source_fingerprint(f"fortune:es:{tmp_path}")
    (tmp_path / fortunes.GAMES / "off/es/off/jokes").write_text("Otro chiste.\n%\n")
    assert before["sha256"] != source_fingerprint(f"fortune:es:{tmp_path}")["sha256"]


def test_install_refuses_a_download_with_another_checksum_and_skips_what_is_unpacked(tmp_path, monkeypatch) -> None:
    def no_command(command, package, cwd=None):
        raise AssertionError(f"ran {command}")

    monkeypatch.setattr(fortunes, "_run", no_command)
    cache = tmp_path / "debs"
    cache.mkdir()
    (cache / fortunes.PACKAGES[0].deb).write_bytes(b"not the package")
    with pytest.raises(fortunes.FortuneError, match=r"fortunes-es_1.36_all.deb: SHA-256 [0-9a-f]{64}, expected "
                       r"54636edc.*run `make install` again"):
        fortunes.install(tmp_path / "root", cache)
    assert not (cache / fortunes.PACKAGES[0].deb).exists()
    (tmp_path / "root").mkdir()
    for package in fortunes.PACKAGES:
        (tmp_path / "root" / f".{package.deb}.unpacked").write_text(package.sha256)
    assert len(fortunes.install(tmp_path / "root", cache)) == len(fortunes.PACKAGES)
