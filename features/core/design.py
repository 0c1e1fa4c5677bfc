"""Which SAE cells a probe grid fits: every combination, or one axis at a time around a center.

The paper's three analyses ask which layer, which width and pooling, and which binarization threshold. A full
grid fits their cross product (5 layers x 2 widths x 6 poolings x 5 thresholds: 300 probes per dataset and
model); the marginal design fits each axis's values with the other axes held at the center (15), every one on
the same texts, so that the values of an axis compare paired. It answers "which value of this axis, at the
center of the others"; an interaction between axes (a threshold that only pays at another pooling) is outside
what it can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from features.core.binarize import Threshold
from features.errors import SaefsError

Design = Literal["grid", "marginal"]
AXES = ("layer", "width", "pooling", "binarize")


@dataclass(frozen=True)
class Config:
    """One SAE cell: the layer read, the SAE width, the pooling, the threshold (None: continuous codes)."""

    layer: int
    width: str
    pooling: str
    binarize: Threshold | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def middle_layer(layers: Sequence[int]) -> int:
    """The center of a layer sweep: the middle of the sorted layers (the lower middle for an even count)."""
    if not layers:
        raise SaefsError("a layer sweep needs at least one layer")
    ordered = sorted(layers)
    return ordered[(len(ordered) - 1) // 2]


def center_config(layers: Sequence[int], width: str, pooling: str, binarize: Threshold | None) -> Config:
    return Config(middle_layer(layers), width, pooling, binarize)


def sweep(layers: Sequence[int], widths: Sequence[str], poolings: Sequence[str],
          thresholds: Sequence[Threshold | None], design: Design = "grid",
          center: Config | None = None) -> list[Config]:
    """The cells of `design`, in axis order, each once. `marginal` needs `center`, whose values must be among
    the axes' (it is the one cell every sweep shares)."""
    values = {"layer": list(layers), "width": list(widths), "pooling": list(poolings), "binarize": list(thresholds)}
    if design == "grid":
        return [Config(layer, width, pooling, threshold) for layer in layers for width in widths
                for pooling in poolings for threshold in thresholds]
    if design != "marginal":
        raise SaefsError(f"design {design!r} is not one of ['grid', 'marginal']")
    if center is None:
        raise SaefsError("the marginal design sweeps each axis around a center: give one")
    outside = {axis: getattr(center, axis) for axis in AXES if getattr(center, axis) not in values[axis]}
    if outside:
        raise SaefsError(f"center {center.as_dict()}: {outside} not among the configured values {values}")
    cells: list[Config] = []
    for axis in AXES:
        for value in values[axis]:
            cell = Config(**(center.as_dict() | {axis: value}))
            if cell not in cells:
                cells.append(cell)
    return cells


def sweep_of(cells: Sequence[Config], center: Config, axis: str) -> list[Config]:
    """The cells of `cells` that vary `axis` only, the others at `center` (the center included)."""
    if axis not in AXES:
        raise SaefsError(f"axis {axis!r} is not one of {list(AXES)}")
    fixed = [a for a in AXES if a != axis]
    return [cell for cell in cells if all(getattr(cell, a) == getattr(center, a) for a in fixed)]
