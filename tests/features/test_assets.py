"""The pinned web assets: checked against their integrity before anything is written, found where pages look."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from features.errors import SaefsError
from features.reporting.assets import PACKAGES, VEGA, MissingAssets, Package, asset, dvc_plots_template, install


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_a_package_is_unpacked_once_and_only_when_its_integrity_matches(tmp_path: Path) -> None:
    data = tarball({"build/lib.min.js": b"var lib = 1;", "README.md": b"not kept"})
    package = Package("lib", "1.0.0", integrity(data), ("build/lib.min.js",))
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return data

    assert install((package,), tmp_path, fetch) == [tmp_path / "lib" / "1.0.0"]
    assert asset(package, "build/lib.min.js", tmp_path).read_bytes() == b"var lib = 1;"
    assert not (tmp_path / "lib" / "1.0.0" / "README.md").exists()
    assert install((package,), tmp_path, fetch) == [] and fetched == ["https://registry.npmjs.org/lib/-/lib-1.0.0.tgz"]

    tampered = Package("other", "2.0.0", integrity(data), ("build/lib.min.js",))
    with pytest.raises(SaefsError, match=r"other-2\.0\.0\.tgz does not match its pinned integrity sha512-"):
        install((tampered,), tmp_path, lambda url: tarball({"build/lib.min.js": b"var evil = 1;"}))
    assert not (tmp_path / "other").exists()


def test_a_missing_asset_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MissingAssets, match=r"vega\.min\.js is missing: run `make install`"):
        asset(VEGA, VEGA.files[0], tmp_path)


def test_every_pinned_package_is_installed_and_the_plots_page_loads_nothing_from_the_network() -> None:
    for package in PACKAGES:  # `make install` fetched them
        for file in package.files:
            assert asset(package, file).stat().st_size > 500
    page = dvc_plots_template()
    assert "{plot_divs}" in page and "{scripts}" not in page  # dvc_render fills the one, its CDN scripts the other
    assert "cdn.jsdelivr" not in page and page.count("<script>") == 3
