"""Residual-stream activations on disk: collected once per model, read memory-mapped by every SAE of it.

A cache folder holds one raw float32 file per (split, layer), `<split>/l<layer>.f32` ([tokens, d_model],
row-major), and `manifest.json`: the shapes and the fingerprint of what was collected (model, layers,
corpus, token budgets, truncation). Readers compare the fingerprint they expect with the stored one, so
a cache of another model, layer or corpus fails with both named instead of training a wrong SAE.
Raw files rather than .npy so that batches are appended as the forward produces them, with no token
count known in advance and nothing held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from features.errors import SaefsError
from features.stores.files import write_json

MANIFEST = "manifest.json"
DTYPE, DTYPE_TORCH = np.float32, torch.float32
HELDOUT, TRAIN = "heldout", "train"  # the splits: held-out corpus tokens measure SAEs, the others train them
HELDOUT_TEXTS = "heldout_texts.json"  # the held-out texts themselves, for measures that rerun the model


class CacheMismatch(SaefsError):
    """A cache collected for other settings (model, layers, corpus) than the reader's."""


def _layer_file(folder: Path, split: str, layer: int) -> Path:
    return folder / split / f"l{layer}.f32"


class ActivationWriter:
    """Appends per-batch activations [n, d_model] of each layer of one split; `close` records the shapes."""

    def __init__(self, folder: Path, split: str, layers: Sequence[int]) -> None:
        (folder / split).mkdir(parents=True, exist_ok=True)
        self._files: dict[int, BinaryIO] = {layer: _layer_file(folder, split, layer).open("wb") for layer in layers}
        self.tokens = 0
        self.d_model: int | None = None

    def add(self, residuals: Mapping[int, Tensor]) -> None:
        counts = {len(acts) for acts in residuals.values()}
        if set(residuals) != set(self._files) or len(counts) != 1:
            raise SaefsError(f"a batch must hold the same tokens of layers {sorted(self._files)}, "
                             f"got layers {sorted(residuals)} with {sorted(counts)} tokens")
        for layer, acts in residuals.items():
            self.d_model = acts.shape[1]
            self._files[layer].write(acts.detach().to("cpu", DTYPE_TORCH).contiguous().numpy().tobytes())
        self.tokens += counts.pop()

    def close(self) -> dict[str, int]:
        for handle in self._files.values():
            handle.close()
        if not self.tokens:
            raise SaefsError("no activations were written: the split has no counted tokens")
        return {"tokens": self.tokens, "d_model": int(self.d_model or 0)}


def write_manifest(folder: Path, fingerprint: Mapping[str, Any], splits: Mapping[str, Mapping[str, int]],
                   layers: Sequence[int], **extra: Any) -> None:
    write_json(folder / MANIFEST, {"fingerprint": dict(fingerprint), "layers": sorted(layers),
                                   "splits": {name: dict(shape) for name, shape in splits.items()}, **extra})


@dataclass(frozen=True)
class ActivationCache:
    """A written cache folder, checked against the fingerprint its reader expects."""

    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, folder: str | Path, expected: Mapping[str, Any], fix: str) -> ActivationCache:
        """The cache at `folder`; CacheMismatch naming each differing setting (and `fix`) when it was
        collected for anything else than `expected`."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise SaefsError(f"no activation cache at {folder} (no {MANIFEST}): {fix}") from None
        stored = manifest["fingerprint"]
        differing = sorted(key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key))
        if differing:
            detail = "; ".join(f"{key}: cache has {stored.get(key)!r}, expected {expected.get(key)!r}"
                               for key in differing)
            raise CacheMismatch(f"activation cache {folder} was collected for other settings ({detail}): {fix}")
        return cls(folder, manifest)

    def tokens(self, split: str) -> int:
        return int(self._split(split)["tokens"])

    def layer(self, split: str, layer: int) -> np.memmap:
        """Activations [tokens, d_model] of `layer` on `split`, memory-mapped read-only."""
        shape = self._split(split)
        if layer not in self.manifest["layers"]:
            raise SaefsError(f"activation cache {self.folder} has layers {self.manifest['layers']}, not {layer}")
        return np.memmap(_layer_file(self.folder, split, layer), dtype=DTYPE, mode="r",
                         shape=(shape["tokens"], shape["d_model"]))

    def _split(self, split: str) -> dict[str, int]:
        if split not in self.manifest["splits"]:
            raise SaefsError(f"activation cache {self.folder} has splits {sorted(self.manifest['splits'])}, "
                             f"not {split!r}")
        return self.manifest["splits"][split]
