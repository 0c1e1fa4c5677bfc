"""Width names parse to the sizes the releases mean, checked against sae-lens' packaged catalogue."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from features.core.naming import parse_width
from features.errors import SaefsError


def catalogue_widths() -> set[str]:
    """Every `width_<n><k|m>` the SAE ids of sae-lens' pretrained catalogue name (Gemma Scope, Llama Scope, ...)."""
    spec = importlib.util.find_spec("sae_lens")
    text = (Path(spec.origin).parent / "pretrained_saes.yaml").read_text()
    return set(re.findall(r"width_(\d+[km])\b", text))


def test_every_width_of_the_catalogue_is_the_power_of_two_its_name_rounds() -> None:
    widths = catalogue_widths()
    assert {"16k", "65k", "131k", "262k", "1m"} <= widths
    for name in widths:
        size, unit = parse_width(name), {"k": 1000, "m": 1000**2}[name[-1]]
        assert size & (size - 1) == 0 and size // unit == int(name[:-1]), name


@pytest.mark.parametrize(("name", "size"), [("4096", 4096), ("64", 64), ("4k", 4096), ("16k", 16_384),
                                            ("65k", 65_536), ("131k", 131_072), ("524k", 524_288),
                                            ("1m", 1_048_576)])
def test_width_names_parse_to_the_sizes_the_releases_mean(name: str, size: int) -> None:
    assert parse_width(name) == size


def test_a_width_that_names_no_release_size_says_what_to_write_instead() -> None:
    with pytest.raises(SaefsError, match=r"SAE width '64k' names no power of two .* write the number of latents "
                       r"instead, e.g. '65536'"):
        parse_width("64k")
    with pytest.raises(SaefsError, match=r"SAE width '16K' is not like '4096', '16k' or '1m'"):
        parse_width("16K")
