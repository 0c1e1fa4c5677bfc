"""The corpus activation cache: appended per batch, read memory-mapped, refused when collected for other settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from features.errors import SaefsError
from features.stores.activations import ActivationCache, ActivationWriter, CacheMismatch, write_manifest

FINGERPRINT = {"model": {"weights_sha256": "ab12"}, "layers": [2, 5], "train_tokens": 100}


def written(folder: Path) -> tuple[ActivationCache, dict[int, torch.Tensor]]:
    acts = {2: torch.randn(70, 8), 5: torch.randn(70, 8)}
    writer = ActivationWriter(folder, "train", [2, 5])
    for start in (0, 30, 50):
        writer.add({layer: a[start : {0: 30, 30: 50, 50: 70}[start]] for layer, a in acts.items()})
    write_manifest(folder, FINGERPRINT, {"train": writer.close()}, [2, 5])
    return ActivationCache.open(folder, FINGERPRINT, fix="recollect"), acts


def test_batches_read_back_in_order_per_layer(tmp_path: Path) -> None:
    cache, acts = written(tmp_path)
    assert cache.tokens("train") == 70
    for layer in (2, 5):
        np.testing.assert_array_equal(cache.layer("train", layer), acts[layer].numpy())


def test_a_cache_of_another_model_names_each_differing_setting(tmp_path: Path) -> None:
    written(tmp_path)
    other = FINGERPRINT | {"model": {"weights_sha256": "ff00"}, "layers": [2]}
    with pytest.raises(CacheMismatch, match=r"layers: cache has \[2, 5\], expected \[2\]; model: cache has "
                       r"\{'weights_sha256': 'ab12'\}, expected \{'weights_sha256': 'ff00'\}\): recollect"):
        ActivationCache.open(tmp_path, other, fix="recollect")


def test_missing_caches_layers_and_splits_are_named(tmp_path: Path) -> None:
    with pytest.raises(SaefsError, match=r"no activation cache at .*\(no manifest.json\): recollect"):
        ActivationCache.open(tmp_path / "none", FINGERPRINT, fix="recollect")
    cache, _ = written(tmp_path)
    with pytest.raises(SaefsError, match=r"has layers \[2, 5\], not 3"):
        cache.layer("train", 3)
    with pytest.raises(SaefsError, match=r"has splits \['train'\], not 'heldout'"):
        cache.layer("heldout", 2)


def test_a_batch_missing_a_layer_is_refused(tmp_path: Path) -> None:
    writer = ActivationWriter(tmp_path, "train", [2, 5])
    with pytest.raises(SaefsError, match=r"same tokens of layers \[2, 5\], got layers \[2\]"):
        writer.add({2: torch.randn(3, 8)})
