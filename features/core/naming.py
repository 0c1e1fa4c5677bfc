"""Names of grid cells, used for shard arrays, SAE folders, metrics, Feast views and MLflow runs.

A glance at a name tells what it holds: `l9__sae4k__sum` is layer 9's 4k-latent SAE codes,
sum-pooled; `l9__hidden__last` is layer 9's last-token hidden state.
"""

from __future__ import annotations

import re

from features.errors import SaefsError

_WIDTH = re.compile(r"^(\d+)([km]?)$")
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def parse_width(width: str) -> int:
    """SAE width as Gemma Scope spells it: '4k' -> 4096, '16k' -> 16384, '1m' -> 1048576."""
    match = _WIDTH.match(width)
    if not match:
        raise SaefsError(f"SAE width {width!r} is not like '4096', '16k' or '1m'")
    return int(match.group(1)) * _UNITS[match.group(2)]


def sae_name(layer: int, width: str) -> str:
    return f"l{layer}__sae{width}"


def parse_sae_name(name: str) -> tuple[int, str]:
    """(layer, width) of an SAE name, `sae_name`'s inverse."""
    layer, width = name.removeprefix("l").split("__sae")
    return int(layer), width


def codes_name(layer: int, width: str, pooling: str) -> str:
    return f"{sae_name(layer, width)}__{pooling}"


def hidden_name(layer: int, pooling: str) -> str:
    return f"l{layer}__hidden__{pooling}"

