"""The base of typed settings: the library's configs and the params.yaml groups that extend them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Frozen, and an unknown key is an error: a typo in params.yaml fails at once with the key's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
