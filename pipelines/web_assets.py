"""`make install` runs this: fetch the pinned web assets (features/reporting/assets.py) and point this
checkout's `dvc plots show` at a page that inlines them (`.dvc/config.local`: this machine's setting, not
committed).

    python -m pipelines.web_assets [--repo .]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from pipelines import run_cli

log = logging.getLogger("saefs.web_assets")


def configure_dvc_plots(repo: Path) -> Path:
    """Write the offline plots template and set `plots.html_template` in `repo`'s local DVC config."""
    from features.reporting.assets import dvc_plots_template, web_dir
    from features.stores.files import atomic_path

    template = web_dir() / "dvc_plots.html"
    with atomic_path(template) as tmp:
        tmp.write_text(dvc_plots_template(), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", str(template)],
                   cwd=repo, check=True, capture_output=True)
    return template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC project whose plots page to set")

    def action(args: argparse.Namespace) -> None:
        from features.reporting.assets import install

        for folder in install():
            log.info("installed %s", folder)
        log.info("dvc plots show renders offline with %s", configure_dvc_plots(args.repo))

    return run_cli(parser, argv, action)


if __name__ == "__main__":
    raise SystemExit(main())
