"""features.core.binarize: which codes pass a threshold, under either op."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from features.core.binarize import binarize_codes, quantile_of, threshold_tag
from features.errors import SaefsError


def test_binarize_strict_and_at_least() -> None:
    codes = csr_matrix(np.array([[0.5, 1.0, 2.0, 0.0]], dtype=np.float32))
    strict, at_least = binarize_codes(codes, 1.0), binarize_codes(codes, 1.0, ">=")
    assert strict.indices.tolist() == [2] and at_least.indices.tolist() == [1, 2]
    assert set(strict.data) == set(at_least.data) == {1.0}
    assert binarize_codes(codes, 0.0).indices.tolist() == [0, 1, 2]  # > 0: every active latent
    with pytest.raises(SaefsError, match="binarize op"):
        binarize_codes(codes, 1.0, "<")  # type: ignore[arg-type]


@pytest.mark.parametrize(("threshold", "op", "tag"), [
    (None, ">", "raw"), (1.0, ">", "bin1"), (0.5, ">=", "binge0p5"), (-0.25, ">", "binm0p25"), ("q50", ">", "binq50"),
    ("q9", ">=", "bingeq9")])
def test_threshold_tags(threshold: float | None, op: str, tag: str) -> None:
    assert threshold_tag(threshold, op) == tag  # type: ignore[arg-type]


def test_a_quantile_spec_names_its_fraction_and_anything_else_is_refused_naming_the_form() -> None:
    assert quantile_of("q50") == 0.5 and quantile_of("q9") == 0.09
    assert quantile_of(1.0) is None and quantile_of(None) is None
    for bad in ("q0", "q100", "median", "q5.5", "Q50"):
        with pytest.raises(SaefsError, match=r"a number, or q<NN> with NN in 1\.\.99"):
            quantile_of(bad)
