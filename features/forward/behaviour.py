"""Behaviour labels: did a target model answer a multiple-choice item right?

Every option of an item (features.sources.items) is scored by the summed log-probability of its
continuation `" " + option` after the item's prompt (the paper's zero-shot format, no chat
template, even for instruction-tuned models). The model's answer is the best-scoring option; the
label is whether it is the right one. The prompt is what source models later featurize.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from features.core.prepare import PrepareConfig, prepare, text_id
from features.core.schema import PREPARED_COLUMNS
from features.errors import SaefsError
from features.sources.items import Item, ItemError, mcq_prompt
from features.sources.lm import right_pad, with_bos

LABEL_NAMES = ("incorrect", "correct")  # label 1: the target answered right


# --- scoring ------------------------------------------------------------------------------------

def context_length(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config()
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def score_options(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                  options: Sequence[str], max_tokens: int) -> list[float]:
    """Summed log-probability of each continuation `" " + option` after `prompt`, in one forward pass.

    The prompt starts with BOS (prepended where the tokenizer does not add it, as extraction does);
    options are tokenized on their own and appended, so every option follows the very same prompt
    tokens. Only the positions that predict option tokens go through the LM head (`logits_to_keep`):
    Gemma's 262k-word head would otherwise cost more than the whole decoder.
    """
    prompt_ids = with_bos(tokenizer(prompt, add_special_tokens=True)["input_ids"], tokenizer.bos_token_id)
    option_ids = [list(tokenizer(" " + option, add_special_tokens=False)["input_ids"]) for option in options]
    if any(not ids for ids in option_ids):
        raise ItemError("empty_option", f"an option of {prompt[:60]!r} has no tokens")
    limit = min(max_tokens, context_length(model) or max_tokens)
    longest = max(len(ids) for ids in option_ids)
    if len(prompt_ids) + longest > limit:
        raise ItemError("too_long", f"prompt and option take {len(prompt_ids) + longest} tokens, more than "
                        f"{limit} (max_tokens or the model's context)")
    input_ids, attention_mask = right_pad([prompt_ids + ids for ids in option_ids], model.device)
    with torch.inference_mode():
        # Right padding: the last `longest + 1` positions start at the one that predicts the first option token.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=longest + 1).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [float(sum(logprobs[row, j, token] for j, token in enumerate(ids))) for row, ids in enumerate(option_ids)]


@dataclass(frozen=True)
class Labelled:
    """One target's answers to a task's items (kept items only) and the skipped items by reason."""

    prompts: list[str]
    items: list[Item]
    option_logprobs: list[list[float]]
    skipped: dict[str, int]

    @property
    def answers(self) -> list[int]:
        return [int(np.argmax(scores)) for scores in self.option_logprobs]

    @property
    def correct(self) -> list[bool]:
        return [answer == item.answer for answer, item in zip(self.answers, self.items, strict=True)]


def label_items(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item],
                max_tokens: int, skipped: Mapping[str, int] | None = None, progress: bool = True) -> Labelled:
    """Score every item; items too long for the model are counted under `too_long`, not scored."""
    out = Labelled([], [], [], dict(skipped or {}))
    for item in tqdm(items, desc="behaviour labels", unit="item", disable=not progress):
        prompt = mcq_prompt(item)
        try:
            scores = score_options(model, tokenizer, prompt, item.options, max_tokens)
        except ItemError as err:
            out.skipped[err.reason] = out.skipped.get(err.reason, 0) + 1
            continue
        out.prompts.append(prompt)
        out.items.append(item)
        out.option_logprobs.append(scores)
    return out


def behaviour_frame(task: str, labelled: Labelled, cfg: PrepareConfig) -> pd.DataFrame:
    """The labels as a prepared dataset (text = the prompt, label 1 = answered right) with the scores beside.

    `text_id` depends on the task and the prompt only, so every target's labels and every source's
    features of an item share it. A target with one class (always right, or always wrong) keeps every
    row in `train`: there is nothing to split by, and the transfer stage reports it instead of training.
    """
    if not labelled.items:
        raise SaefsError(f"task {task!r}: no item left to label (skipped: {labelled.skipped})")
    cfg = cfg.model_copy(update={"labels": (0, 1), "label_names": LABEL_NAMES})
    raw = pd.DataFrame({"text": labelled.prompts, "raw_label": [int(c) for c in labelled.correct]})
    if raw["raw_label"].nunique() > 1:
        df, _ = prepare(raw, cfg)
    else:
        df = pd.DataFrame({"text_id": [text_id(cfg.name, t) for t in raw["text"]], "text": raw["text"],
                           "label": raw["raw_label"], "label_name": raw["raw_label"].map(dict(enumerate(LABEL_NAMES))),
                           "split": "train", "lang": cfg.lang, "event_timestamp": pd.Timestamp(cfg.event_timestamp)})
        df = df.drop_duplicates("text_id").sort_values("text_id", kind="stable").reset_index(drop=True)
        df = df[list(PREPARED_COLUMNS)].astype(PREPARED_COLUMNS)
    extras = pd.DataFrame({
        "text_id": [text_id(cfg.name, t) for t in labelled.prompts],
        "options": [list(item.options) for item in labelled.items],
        "correct_answer": [item.answer for item in labelled.items],
        "answer": labelled.answers,
        "option_logprobs": labelled.option_logprobs,
    }).drop_duplicates("text_id")
    return df.merge(extras, on="text_id", how="left", validate="one_to_one")
