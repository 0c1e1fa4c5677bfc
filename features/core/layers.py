"""Layer addresses: TransformerLens hook names and where they sit in HF `hidden_states`.

`blocks.{L}.hook_resid_post` is the residual stream after decoder block L (0-based), the
convention of SAELens, SAEBench and Gemma Scope. In HF terms it is `hidden_states[L + 1]`
(`hidden_states[0]` is the embedding output). The paper's code (MOSAIC) read
`hidden_states[L]`, i.e. the input of block L, one block early; `paper_compat=True` keeps that
behaviour reproducible, never silently.
"""

from __future__ import annotations

import re

from features.errors import SaefsError

_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")
HOOK_FORM = "blocks.<L>.hook_resid_post"


def hook_name(layer: int) -> str:
    """The hook name of the residual stream after block `layer`."""
    if layer < 0:
        raise SaefsError(f"layer must be >= 0, got {layer}")
    return f"blocks.{layer}.hook_resid_post"


def parse_hook(name: str) -> int:
    """The block index of a resid_post hook name: 'blocks.12.hook_resid_post' -> 12."""
    match = _RESID_POST.fullmatch(name.strip())
    if match is None:
        raise SaefsError(f"cannot read a layer from hook name {name!r}: expected the form {HOOK_FORM!r}")
    return int(match.group(1))


def hidden_state_index(layer: int, paper_compat: bool) -> int:
    """Index into HF `hidden_states` that holds the activations an SAE for `layer` reads.

    Exact for layers below the last one: HF applies the final norm to `hidden_states[-1]`.
    """
    if layer < 0:
        raise SaefsError(f"layer must be >= 0, got {layer}")
    return layer if paper_compat else layer + 1
