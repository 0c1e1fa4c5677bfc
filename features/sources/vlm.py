"""Vision-language model sources: `hf:<id>[@revision]` (hub or cache) or `path:<folder>` (model and processor as
save_pretrained writes them), loaded through transformers' image-text-to-text auto classes (PaliGemma, LLaVA and
their kin). transformers is imported when a model loads: params validation reads VLM_SOURCE_KINDS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from features.errors import SaefsError
from features.sources.models import MODEL_SOURCE_KINDS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

# A VLM source is a model source (hub id or local folder) but for the packaged GGUF text models
VLM_SOURCE_KINDS = tuple(kind for kind in MODEL_SOURCE_KINDS if kind != "pypi")


def load_vlm(source: str, device: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A vision-language model and its processor, safetensors only, in eval mode on `device` (bf16 on a GPU, fp32
    on the CPU, as the text models)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from features.sources.lm import default_dtype

    kind, _, location = source.partition(":")
    if kind not in VLM_SOURCE_KINDS or not location:
        raise SaefsError(f"{source!r} is not a vision-language model source: expected 'hf:<id>[@revision]' or "
                         "'path:<folder>'")
    name, _, revision = location.partition("@") if kind == "hf" else (location, "", "")
    try:
        model = AutoModelForImageTextToText.from_pretrained(name, revision=revision or None, device_map=device,
                                                            dtype=default_dtype(device), use_safetensors=True)
        processor = AutoProcessor.from_pretrained(name, revision=revision or None)
    except (OSError, ValueError) as err:
        raise SaefsError(f"{source}: cannot load an image-text-to-text model and its processor ({err}); check the "
                         "id or folder (save_pretrained writes both) and, for the hub, HF_HUB_OFFLINE=0") from None
    return model.eval(), processor
