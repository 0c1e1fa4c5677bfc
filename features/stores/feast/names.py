"""View names: `gemma3_270m__l9__sae4k__sum__raw`, `...__sum__bin1`, `...__sum__binge0p5`, `...__l9__hidden__last`,
`paligemma2_3b__vision__mean`."""

from __future__ import annotations

from features.core.binarize import BinarizeOp, threshold_tag
from features.core.naming import codes_name, hidden_name


def view_name(model: str, layer: int, width: str, pooling: str, threshold: float | None = None,
              op: BinarizeOp = ">") -> str:
    """`gemma3_270m__l9__sae4k__sum__raw`, `...__sum__bin1`, `...__sum__binge0p5`."""
    return f"{model}__{codes_name(layer, width, pooling)}__{threshold_tag(threshold, op)}"


def hidden_view_name(model: str, layer: int, pooling: str) -> str:
    """`gemma3_270m__l9__hidden__last`."""
    return dense_view_name(model, hidden_name(layer, pooling))


def dense_view_name(model: str, array: str) -> str:
    """The view of a model's dense array (its extract shards' name): `paligemma2_3b__vision__mean`."""
    return f"{model}__{array}"

