"""The web assets the project's pages load, pinned from the npm registry and kept in the environment.

`dvc plots show` and FastAPI's API docs load Vega and Swagger UI from public CDNs, so offline or in an
air-gapped deployment they render blank. `make install` fetches each package's tarball once, checks it
against the integrity hash pinned here (npm's own `dist.integrity`), and keeps the few files the pages
need under `<venv>/share/saefs/web/<package>/`. The pages then load them from there: the scoring service
serves them, the DVC plots template inlines them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from features.errors import SaefsError
from features.stores.files import atomic_path

REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball
    files: tuple[str, ...]  # paths inside the tarball's package/ folder

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name}-{self.version}.tgz"


# The versions dvc_render's HTML loads from its CDN (dvc_render/vega.py), so `dvc plots show` renders the same.
VEGA = Package("vega", "5.20.2",
               "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
               ("build/vega.min.js",))
VEGA_LITE = Package("vega-lite", "5.2.0",
                    "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
                    ("build/vega-lite.min.js",))
VEGA_EMBED = Package("vega-embed", "6.18.2",
                     "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
                     ("build/vega-embed.min.js",))
# FastAPI's get_swagger_ui_html loads swagger-ui-dist@5 from its CDN.
SWAGGER_UI = Package("swagger-ui-dist", "5.17.14",
                     "sha512-CVbSfaLpstV65OnSjbXfVd6Sta3q3F7Cj/yYuvHMp1P90LztOLs6PfUnKEVAeiIVQt9u2SaPwv0LiH/OyMjHRw==",
                     ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"))
PACKAGES = (VEGA, VEGA_LITE, VEGA_EMBED, SWAGGER_UI)


class MissingAssets(SaefsError):
    pass


def web_dir() -> Path:
    """Where the assets live: inside the environment, beside the packages that need them."""
    return Path(sys.prefix) / "share" / "saefs" / "web"


def asset(package: Package, file: str, root: Path | None = None) -> Path:
    """The installed path of one of `package`'s files; MissingAssets (naming the fix) where it is absent."""
    path = (root or web_dir()) / package.name / package.version / file
    if not path.is_file():
        raise MissingAssets(f"{path} is missing: run `make install` (it fetches {package.name}@{package.version} "
                            "from the npm registry once)")
    return path


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise SaefsError(f"{what} does not match its pinned integrity {integrity} (got {algorithm}-{digest}): "
                         "a corrupted download or a changed registry; nothing was installed")


def install(packages: tuple[Package, ...] = PACKAGES, root: Path | None = None,
            fetch: Callable[[str], bytes] | None = None) -> list[Path]:
    """Fetch, check and unpack each package not yet installed (atomically, a folder per version); returns the
    folders written."""
    root, fetch = root or web_dir(), fetch or _download
    written = []
    for package in packages:
        target = root / package.name / package.version
        if all((target / file).is_file() for file in package.files):
            continue
        data = fetch(package.url)
        check_integrity(data, package.integrity, package.url)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar, atomic_path(target) as tmp:
            for file in package.files:
                member = tar.extractfile(f"package/{file}")
                if member is None:
                    raise SaefsError(f"{package.url} has no package/{file}")
                (tmp / file).parent.mkdir(parents=True, exist_ok=True)
                (tmp / file).write_bytes(member.read())
        written.append(target)
    return written


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as err:
        raise SaefsError(f"could not fetch {url} ({err}): the npm registry must be reachable once, at install") from err


DVC_PLOTS_PAGE = """<!DOCTYPE html>
<html>
<head>
  {refresh_tag}
  <meta charset="utf-8">
  <title>DVC plots</title>
  <!-- Vega, Vega-Lite and Vega-Embed inlined (features/reporting/assets.py): the page renders offline -->
  %s
  <style>table { border-spacing: 15px; }</style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""


def dvc_plots_template(root: Path | None = None) -> str:
    """dvc_render's page with the Vega scripts inlined instead of loaded from a CDN ({scripts} left out)."""
    scripts = []
    for package in (VEGA, VEGA_LITE, VEGA_EMBED):
        source = asset(package, package.files[0], root).read_text(encoding="utf-8")
        scripts.append("<script>\n" + source.replace("</script", "<\\/script") + "\n</script>")
    return DVC_PLOTS_PAGE % "\n".join(scripts)
