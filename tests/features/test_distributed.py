"""Turns of the data-parallel extraction: which rows each worker takes, and merged SAE quality."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from features.forward.distributed import World, merge_meters, rounds
from features.sources.sae import QualityMeter


def test_rounds_give_each_worker_whole_blocks_in_order_after_the_resumed_rows() -> None:
    assert list(rounds(30, 100, 30, World(0, 2))) == [[(30, 60), (60, 90)], [(90, 100), None]]
    assert list(rounds(0, 100, 30, World())) == [[(0, 30)], [(30, 60)], [(60, 90)], [(90, 100)]]
    assert list(rounds(100, 100, 30, World(1, 2))) == []  # all rows were already stored


def test_merged_meters_equal_one_meter_over_all_tokens() -> None:
    class Identity:  # decode: codes are the reconstruction
        def decode(self, codes: torch.Tensor) -> torch.Tensor:
            return codes

    acts = torch.randn(40, 6)
    codes = torch.relu(acts + 0.1 * torch.randn(40, 6))
    whole, first, second = (QualityMeter(6, 6) for _ in range(3))
    whole.update(Identity(), acts, codes)
    first.update(Identity(), acts[:25], codes[:25])
    second.update(Identity(), acts[25:], codes[25:])
    merged = merge_meters([{"l0": first}, {"l0": second}])["l0"]
    assert merged.n_tokens == 40
    assert asdict(merged.result()) == pytest.approx(asdict(whole.result()), rel=1e-12)
