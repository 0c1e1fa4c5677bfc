"""Names of grid cells, used for shard arrays, SAE folders, metrics, Feast views and MLflow runs.

A glance at a name tells what it holds: `l9__sae4k__sum` is layer 9's 4k-latent SAE codes,
sum-pooled; `l9__hidden__last` is layer 9's last-token hidden state.
"""

from __future__ import annotations

import math
import re

from features.errors import SaefsError

_WIDTH = re.compile(r"^(\d+)([km]?)$")
_UNITS = {"k": 1000, "m": 1000**2}


def parse_width(width: str) -> int:
    """SAE width as the releases spell it: a number of latents ('4096'), or a power of two named by its
    thousands or millions, rounded down: '4k' -> 4,096, '16k' -> 16,384, '65k' -> 65,536, '131k' -> 131,072,
    '1m' -> 1,048,576 (n x 1024 would give 66,560 for '65k')."""
    match = _WIDTH.match(width)
    if not match:
        raise SaefsError(f"SAE width {width!r} is not like '4096', '16k' or '1m'")
    count, unit = int(match.group(1)), match.group(2)
    if not unit:
        return count
    power = 2 ** round(math.log2(max(count, 1) * _UNITS[unit]))
    if power // _UNITS[unit] != count:
        raise SaefsError(f"SAE width {width!r} names no power of two (releases write 2^n by its {unit} rounded "
                         f"down: 4k, 16k, 65k, 131k, 1m); write the number of latents instead, e.g. "
                         f"'{count * 1024}'")
    return power


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

