"""Tiny random vision-language models with their processors, saved as a user's folder would be (save_pretrained):
a PaliGemma (SigLIP tower, Gemma 2 language model) and a LLaVA (CLIP tower, Llama). No VLM installs offline."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    Gemma2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipVisionConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from tests.features.tiny import HIDDEN, VOCAB_SIZE, make_tokenizer

IMAGE_SIDE, PATCH = 32, 8
PATCHES = (IMAGE_SIDE // PATCH) ** 2  # 16 image tokens per image
TEXT_LAYERS = 3  # and fewer vision layers: the decoder blocks are the one stack of this length
_TEXT = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": TEXT_LAYERS, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 16}
_VISION = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "image_size": IMAGE_SIDE,
           "patch_size": PATCH}
VLM_KINDS = ("paligemma", "llava")


def save_vlm(kind: str, folder: Path, *, image_token_id: int | None = None, image_seq_length: int = PATCHES,
             seed: int = 0) -> Path:
    """A random VLM of `kind` and its processor in `folder`. `image_token_id` overrides the config's (a config
    that disagrees with its processor); `image_seq_length` the PaliGemma processor's image tokens."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    if kind == "paligemma":
        processor = SiglipImageProcessorPil(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
        processor.image_seq_length = image_seq_length
        full = PaliGemmaProcessor(image_processor=processor, tokenizer=tokenizer)  # adds <image> to the tokenizer
        config = PaliGemmaConfig(vision_config=SiglipVisionConfig(num_hidden_layers=1, **_VISION),
                                 text_config=Gemma2Config(vocab_size=VOCAB_SIZE, sliding_window=4, **_TEXT),
                                 image_token_id=image_token_id or full.image_token_id, projection_dim=HIDDEN)
        model = PaliGemmaForConditionalGeneration(config)
    elif kind == "llava":
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
        processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIDE},
                                          crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
        full = LlavaProcessor(image_processor=processor, tokenizer=tokenizer, patch_size=PATCH,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
        config = LlavaConfig(vision_config=CLIPVisionConfig(num_hidden_layers=2, **_VISION),
                             text_config=LlamaConfig(vocab_size=VOCAB_SIZE + 1, **_TEXT),  # <image> is a real id
                             image_token_id=image_token_id or full.image_token_id, vision_feature_layer=-1)
        model = LlavaForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown VLM kind {kind!r}: one of {VLM_KINDS}")
    model.eval().save_pretrained(folder)
    full.save_pretrained(folder)
    return folder
