"""features.core.design: the cells a probe grid fits, in full or one axis at a time around a center."""

from __future__ import annotations

import pytest

from features.core.design import AXES, Config, center_config, middle_layer, sweep, sweep_of
from features.errors import SaefsError

AXIS_VALUES = {"layer": [3, 5, 9, 12, 15], "width": ["4k", "16k"], "pooling": ["sum", "mean", "max", "last", "top5"],
               "binarize": [None, 0.0, 1.0, "q50", "q90"]}


def test_the_grid_is_the_cross_product() -> None:
    cells = sweep(*AXIS_VALUES.values())
    assert len(cells) == len(set(cells)) == 5 * 2 * 5 * 5


def test_the_marginal_design_covers_every_axis_value_once_and_each_sweep_shares_the_center() -> None:
    center = center_config(AXIS_VALUES["layer"], "4k", "sum", None)
    assert center == Config(9, "4k", "sum", None)
    cells = sweep(*AXIS_VALUES.values(), design="marginal", center=center)
    assert len(cells) == len(set(cells)) == 1 + sum(len(values) - 1 for values in AXIS_VALUES.values())
    for axis in AXES:
        along = sweep_of(cells, center, axis)
        assert center in along
        assert [getattr(cell, axis) for cell in along] == AXIS_VALUES[axis]


def test_middle_layers_and_a_center_off_the_axes_are_named() -> None:
    assert middle_layer([24, 6, 12, 18]) == 12 and middle_layer([7]) == 7
    with pytest.raises(SaefsError, match="at least one layer"):
        middle_layer([])
    with pytest.raises(SaefsError, match=r"\{'pooling': 'median'\} not among the configured values"):
        sweep(*AXIS_VALUES.values(), design="marginal", center=Config(9, "4k", "median", None))
    with pytest.raises(SaefsError, match="sweeps each axis around a center"):
        sweep(*AXIS_VALUES.values(), design="marginal")
    with pytest.raises(SaefsError, match="axis 'depth'"):
        sweep_of([], Config(9, "4k", "sum", None), "depth")
