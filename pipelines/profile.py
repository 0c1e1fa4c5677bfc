"""Switch the active profile: validate profiles/<name>.yaml, then copy it onto params.yaml.

    python -m pipelines.profile paper      # Gemma 2 + Gemma Scope + HF datasets (GPU, hub)
    python -m pipelines.profile embedded   # the offline CPU default
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from features.stores.files import atomic_path
from pipelines.params import PARAMS_FILE, PROFILES, load_params

PROFILE_DIR = Path("profiles")


def use_profile(name: str, profile_dir: Path = PROFILE_DIR, target: Path = PARAMS_FILE) -> None:
    source = profile_dir / f"{name}.yaml"
    load_params(source)  # refuse to install a profile that does not validate
    with atomic_path(target) as tmp:
        tmp.write_text(source.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", choices=PROFILES)
    name = parser.parse_args(argv).profile
    use_profile(name)
    print(f"params.yaml now holds the {name} profile; run `dvc repro`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
