"""Debian's fortune cookies in Spanish and Italian, offensive and not: the multilingual offensive-text labels.

The packages below (Debian bookworm, pinned with their SHA-256) are fetched with `apt-get download` and
unpacked with `dpkg-deb -x` into the environment (`make install`, no root). A fortune file holds entries
separated by lines with a single `%`; a `.dat` index beside it (strfile's header, five big-endian
uint32s) flags ROT13-encoded files (STR_ROTATED, the Spanish offensive ones). The label is 1 for the files
Debian files under `off/`: the curators' "offensive" section (crude, sexist, obscene or anticlerical
jokes), not a toxicity annotation.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from features.errors import SaefsError

GAMES = Path("usr/share/games/fortunes")  # where dpkg-deb puts the files under the unpacked root
# language -> label -> its folder under GAMES (the Debian layout)
LAYOUT = {"es": {0: "es", 1: "off/es/off"}, "it": {0: "it", 1: "off/it"}}
STR_ROTATED = 0x4
SEPARATOR = re.compile(r"^%[ \t]*$", re.MULTILINE)
# a text holds no C0 control besides tab and newline; bell and escape are fortune's own jokes (a beep, a
# colour), dropped from the text rather than counted as damage
NOT_TEXT = re.compile(r"[\x00-\x06\x08\x0b-\x1a\x1c-\x1f\x7f]")
TERMINAL = str.maketrans("", "", "\x07\x1b")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str  # of the .deb that Debian's archive serves

    @property
    def deb(self) -> str:
        return f"{self.name}_{self.version}_all.deb"


PACKAGES = (
    Package("fortunes-es", "1.36", "54636edc1a4384093b68d1666c7e702ce42d1fcc8b5ab402d9646c328dcca899"),
    Package("fortunes-es-off", "1.36", "2f95408f949f2c0c43a657e2673dceb3b7df0c1f30372440ac85184bad6d9cf3"),
    Package("fortunes-it", "1.99-4.1", "675df6ecb00c3b67d06b39ab223ff17f1ef1d0ec82a7e40f989356a2eb61a97e"),
    Package("fortunes-it-off", "1.99-4.1", "f0864cd91e758d1aa6a65a231d69e9730af1d87e87b590107a5788da9416ade6"),
)


class FortuneError(SaefsError):
    """Fortune files that are missing or cannot be read; the message names the files and the fix."""


def install_root() -> Path:
    """Where `make install` unpacks the packages: inside the environment, as the web assets are."""
    return Path(sys.prefix) / "share" / "saefs" / "fortunes"


def language_folders(lang: str, root: Path | None = None) -> dict[int, Path]:
    """label -> the folder of `lang`'s fortune files under `root` (laid out as Debian unpacks them)."""
    if lang not in LAYOUT:
        raise FortuneError(f"fortune:{lang}: no such language; Debian's packages hold {sorted(LAYOUT)}")
    base = (root or install_root()) / GAMES
    folders = {label: base / sub for label, sub in LAYOUT[lang].items()}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        fix = ("run `make install` (it downloads and unpacks " + ", ".join(p.deb for p in PACKAGES) + ")"
               if root is None else f"unpack the Debian packages there (dpkg-deb -x <deb> {root})")
        raise FortuneError(f"fortune:{lang}: {', '.join(missing)} not found; {fix}")
    return folders


def fortune_files(folder: Path) -> list[Path]:
    """The fortune files of a folder: regular files, not the `.dat` indexes, nor the `.u8` links to the same."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat")


def rotated(path: Path) -> bool:
    """Whether strfile's index beside `path` flags it ROT13-encoded (no index: plain text)."""
    index = path.with_name(path.name + ".dat")
    header = index.read_bytes()[:20] if index.is_file() else b""
    return len(header) == 20 and bool(struct.unpack(">5I", header)[4] & STR_ROTATED)


def read_entries(path: Path) -> tuple[list[str], list[int]]:
    """A fortune file's entries (stripped, decoded from ROT13 where flagged), and the line numbers of the
    entries that are not text (NUL or control bytes: an index, an archive or a binary file read as text)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # older fortune files are Latin-1
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n")
    bounds = [0, *(end for match in SEPARATOR.finditer(text) for end in match.span()), len(text)]
    entries, bad = [], []
    for start, end in zip(bounds[::2], bounds[1::2], strict=True):
        chunk = text[start:end]
        entry = chunk.strip()
        if NOT_TEXT.search(entry):
            bad.append(text.count("\n", 0, start + len(chunk) - len(chunk.lstrip())) + 1)
        elif entry.translate(TERMINAL).strip():
            entries.append(entry.translate(TERMINAL).strip())
    if rotated(path):
        entries = [codecs.decode(entry, "rot13") for entry in entries]
    return entries, bad


def install(root: Path | None = None, cache: Path | None = None) -> list[Path]:
    """Download the pinned packages with `apt-get download` (no root needed), check their SHA-256 and unpack
    them with `dpkg-deb -x` into `root`; a package already unpacked is skipped. The unpacked stamps."""
    root = root or install_root()
    cache = cache or root.parent / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    done = []
    for package in PACKAGES:
        stamp = root / f".{package.deb}.unpacked"
        if not stamp.is_file():
            deb = _download(package, cache)
            # unpack beside the root and move in, so an interrupted unpack leaves nothing half there
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                _run(["dpkg-deb", "-x", str(deb), tmp], package)
                shutil.copytree(tmp, root, symlinks=True, dirs_exist_ok=True)
            stamp.write_text(package.sha256 + "\n")
        done.append(stamp)
    return done


def _download(package: Package, cache: Path) -> Path:
    deb = cache / package.deb
    if not deb.is_file():
        _run(["apt-get", "download", f"{package.name}={package.version}"], package, cwd=cache)
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != package.sha256:
        deb.unlink()
        raise FortuneError(f"{deb}: SHA-256 {digest}, expected {package.sha256} ({package.name} {package.version} "
                           "from Debian bookworm); the download was removed, run `make install` again")
    return deb


def _run(command: list[str], package: Package, cwd: Path | None = None) -> None:
    if shutil.which(command[0]) is None:
        raise FortuneError(f"{command[0]} not found: fetching {package.name} {package.version} needs Debian's "
                           "apt-get and dpkg-deb (Debian or Ubuntu); elsewhere unpack its .deb into "
                           f"{install_root()} by hand")
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise FortuneError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()[-500:]}; "
                           "check that Debian bookworm's archive is in the apt sources (apt-get update)")
