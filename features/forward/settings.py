"""The extraction settings that decide a text's features: the batch run (params.yaml's extract group extends them)
and the scoring service read the same object, so a served text is featurized as its stored rows were."""

from __future__ import annotations

from pydantic import Field

from features.core.config import Strict


class ExtractSettings(Strict):
    max_tokens: int = Field(ge=2, description="tokens per text, BOS included; longer texts are cut and counted")
    batch_size: int = Field(gt=0)
    include_bos: bool
    paper_compat: bool = Field(description="the paper code's choices: hidden_states[L] and BOS pooled")

    @property
    def pools_bos(self) -> bool:
        """Whether BOS enters pooled values: asked for, or implied by the paper code's choices."""
        return self.include_bos or self.paper_compat
