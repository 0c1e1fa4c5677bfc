"""`make install` runs this: download Debian's Spanish and Italian fortunes (offensive and not, pinned versions
and SHA-256, features/sources/fortunes.py) with `apt-get download` and unpack them with `dpkg-deb -x` into the
environment, where the `fortune:` dataset source reads them. No root needed; a second run fetches nothing.

    python -m pipelines.fortunes [--root DIR]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines import run_cli

log = logging.getLogger("saefs.fortunes")


def main(argv: list[str] | None = None) -> int:
    from features.sources import fortunes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=fortunes.install_root(), help="where to unpack the packages")

    def action(args: argparse.Namespace) -> None:
        for stamp in fortunes.install(args.root):
            log.info("%s unpacked", stamp.name.removeprefix(".").removesuffix(".unpacked"))
        log.info("fortune files under %s", args.root / fortunes.GAMES)

    return run_cli(parser, argv, action)


if __name__ == "__main__":
    raise SystemExit(main())
