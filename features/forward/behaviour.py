"""Behaviour labels: what a target model does with a prompt, for source models' features to predict.

Two kinds. Correctness (the paper's): every option of a multiple-choice item (features.sources.items) is
scored by the summed log-probability of its continuation `" " + option` after the item's prompt (the
paper's zero-shot format, no chat template, even for instruction-tuned models); the model's answer is
the best-scoring option, the label whether it is the right one, and the prompt is what source models
featurize. Judgement: the target is asked a question about a text ("Is this text offensive?"), its two
answers (`no`, `yes`) scored the same way; the label is its judgement, and the text (not the question) is
what source models featurize.
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
from features.forward.throughput import forward_flops_per_token, throughput
from features.sources.items import Item, ItemError, mcq_prompt
from features.sources.lm import decoder_layers, head_logits, right_pad, with_bos

LABEL_NAMES = ("incorrect", "correct")  # label 1: the target answered right
BATCH_TOKENS = 1024  # padded prompt tokens per forward: bigger batches do not run faster on a 2-core CPU


# --- scoring ------------------------------------------------------------------------------------

def context_length(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config()
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


@dataclass(frozen=True)
class _Encoded:
    """An item's token ids: the prompt (BOS first) and each option's continuation `" " + option`."""

    prompt: list[int]
    options: list[list[int]]


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str, options: Sequence[str], limit: int) -> _Encoded:
    """Options are tokenized on their own, so every option follows the very same prompt tokens; an item whose
    prompt and longest option exceed `limit` tokens, or with an option of no token, is an ItemError."""
    prompt_ids = with_bos(tokenizer(prompt, add_special_tokens=True)["input_ids"], tokenizer.bos_token_id)
    option_ids = [list(tokenizer(" " + option, add_special_tokens=False)["input_ids"]) for option in options]
    if any(not ids for ids in option_ids):
        raise ItemError("empty_option", f"an option of {prompt[:60]!r} has no tokens")
    longest = max(len(ids) for ids in option_ids)
    if len(prompt_ids) + longest > limit:
        raise ItemError("too_long", f"prompt and option take {len(prompt_ids) + longest} tokens, more than "
                        f"{limit} (max_tokens or the model's context)")
    return _Encoded(prompt_ids, option_ids)


def _score_batch(model: PreTrainedModel, batch: Sequence[_Encoded]) -> tuple[list[list[float]], int, int]:
    """Summed log-probability of every option of every item, the prompts computed once, in two forwards.

    The prompts run left-padded (position ids count real tokens only) and keep their attention cache;
    the logits at each prompt's last position score every option's first token. Each option's other
    tokens then run as one row on a copy of its prompt's cache, its last token never (nothing is
    predicted after it). Only those positions go through the LM head: Gemma's 262k-word head would
    otherwise cost more than the decoder. Returns the scores, the real tokens run through the decoder and
    the positions run through the head (the work done).
    """
    from transformers import DynamicCache

    device = model.device
    width = max(len(item.prompt) for item in batch)
    prompts = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, item in enumerate(batch):
        prompts[row, width - len(item.prompt):] = torch.tensor(item.prompt)
        mask[row, width - len(item.prompt):] = 1
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        first = model(input_ids=prompts.to(device), attention_mask=mask.to(device),
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device), cache=cache,
                      use_cache=True, logits_to_keep=1).logits[:, -1].float().log_softmax(-1).cpu()
    scores = [[float(first[row, ids[0]]) for ids in item.options] for row, item in enumerate(batch)]
    rows = [(row, i, ids) for row, item in enumerate(batch) for i, ids in enumerate(item.options) if len(ids) > 1]
    tokens = sum(len(item.prompt) for item in batch)
    if not rows:
        return scores, tokens, len(batch)
    owner = torch.tensor([row for row, _, _ in rows])
    cache.reorder_cache(owner.to(device))  # one copy of its prompt's cache per continued option
    rest = [ids[:-1] for _, _, ids in rows]
    continued, continued_mask = right_pad(rest, device)
    positions = mask.sum(-1)[owner].unsqueeze(1) + torch.arange(continued.shape[1])
    with torch.inference_mode():
        hidden = model.base_model(input_ids=continued, attention_mask=torch.cat([mask[owner].to(device),
                                                                               continued_mask], 1),
                                  position_ids=positions.to(device), cache=cache, use_cache=True).last_hidden_state
        # only the positions that predict an option token: padding never reaches the head
        steps = [(r, step) for r, (_, _, ids) in enumerate(rows) for step in range(len(ids) - 1)]
        logprobs = head_logits(model, hidden[[r for r, _ in steps], [step for _, step in steps]]).log_softmax(-1).cpu()
    at = 0
    for row, i, ids in rows:
        scores[row][i] += float(logprobs[torch.arange(at, at + len(ids) - 1), ids[1:]].sum())
        at += len(ids) - 1
    return scores, tokens + len(steps), len(batch) + len(steps)


def scoring_rate(model: PreTrainedModel, tokens: int, head_positions: int, seconds: float) -> dict[str, float]:
    """The throughput of a scoring run (features.forward.throughput): the decoder blocks for every token run,
    the output embedding for every position the head scored."""
    blocks = forward_flops_per_token(decoder_layers(model))
    head = forward_flops_per_token([model.get_output_embeddings()])
    return throughput(tokens, seconds, blocks + head * head_positions // max(tokens, 1))


def score_options(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                  options: Sequence[str], max_tokens: int) -> list[float]:
    """Summed log-probability of each continuation `" " + option` after `prompt` (BOS prepended where the
    tokenizer does not add it, as extraction does)."""
    return _score_batch(model, [_encode(tokenizer, prompt, options, _limit(model, max_tokens))])[0][0]


def _limit(model: PreTrainedModel, max_tokens: int) -> int:
    return min(max_tokens, context_length(model) or max_tokens)


def _batches(encoded: Sequence[_Encoded], batch_tokens: int) -> list[list[int]]:
    """Positions of `encoded`, longest prompts first, in batches of at most `batch_tokens` padded prompt tokens."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].prompt))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(encoded[batches[-1][0]].prompt) * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass(frozen=True)
class Scored:
    """The option scores of the prompts that fit (`kept`: their positions), and the others counted by reason."""

    kept: list[int]
    option_logprobs: list[list[float]]
    skipped: dict[str, int]
    tokens: int = 0  # real tokens run through the decoder
    head_positions: int = 0  # positions run through the LM head


def score_prompts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  options: Sequence[Sequence[str]], max_tokens: int, skipped: Mapping[str, int] | None = None,
                  progress: bool = True, batch_tokens: int = BATCH_TOKENS, desc: str = "behaviour labels") -> Scored:
    """Score every prompt's options, several prompts per forward (`batch_tokens` padded prompt tokens at most,
    longest first); prompts too long for the model are counted under `too_long`, not scored."""
    counts = dict(skipped or {})
    limit = _limit(model, max_tokens)
    kept: list[int] = []
    encoded: list[_Encoded] = []
    for position, (prompt, choices) in enumerate(zip(prompts, options, strict=True)):
        try:
            encoded.append(_encode(tokenizer, prompt, choices, limit))
        except ItemError as err:
            counts[err.reason] = counts.get(err.reason, 0) + 1
            continue
        kept.append(position)
    scores: list[list[float]] = [[] for _ in kept]
    tokens = head_positions = 0
    with tqdm(total=len(kept), desc=desc, unit="prompt", disable=not progress) as bar:
        for batch in _batches(encoded, batch_tokens):
            batch_scores, batch_run, batch_head = _score_batch(model, [encoded[i] for i in batch])
            for i, item_scores in zip(batch, batch_scores, strict=True):
                scores[i] = item_scores
            tokens, head_positions = tokens + batch_run, head_positions + batch_head
            bar.update(len(batch))
    return Scored(kept, scores, counts, tokens, head_positions)


@dataclass(frozen=True)
class Labelled:
    """One target's answers to a task's items (kept items only) and the skipped items by reason."""

    prompts: list[str]
    items: list[Item]
    option_logprobs: list[list[float]]
    skipped: dict[str, int]
    tokens: int = 0  # real tokens run through the decoder
    head_positions: int = 0  # positions run through the LM head

    @property
    def answers(self) -> list[int]:
        return [int(np.argmax(scores)) for scores in self.option_logprobs]

    @property
    def correct(self) -> list[bool]:
        return [answer == item.answer for answer, item in zip(self.answers, self.items, strict=True)]


def label_items(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[Item],
                max_tokens: int, skipped: Mapping[str, int] | None = None, progress: bool = True,
                batch_tokens: int = BATCH_TOKENS) -> Labelled:
    """Score every item in its zero-shot prompt (`score_prompts`); items keep their order."""
    prompts = [mcq_prompt(item) for item in items]
    scored = score_prompts(model, tokenizer, prompts, [item.options for item in items], max_tokens, skipped,
                           progress, batch_tokens)
    return Labelled([prompts[i] for i in scored.kept], [items[i] for i in scored.kept], scored.option_logprobs,
                    scored.skipped, scored.tokens, scored.head_positions)


def labelled_frame(task: str, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str],
                   cfg: PrepareConfig, extras: pd.DataFrame) -> pd.DataFrame:
    """Behaviour labels as a prepared dataset, `extras` (one row per text, in `texts` order) beside.

    `text_id` depends on the task and the text only, so every target's labels and every source's features
    of a text share it. A target with one class (always right, or always the same answer) keeps every row
    in `train`: there is nothing to split by, and the transfer stage reports it instead of training.
    """
    cfg = cfg.model_copy(update={"labels": (0, 1), "label_names": tuple(label_names)})
    raw = pd.DataFrame({"text": list(texts), "raw_label": [int(label) for label in labels]})
    if raw["raw_label"].nunique() > 1:
        df, _ = prepare(raw, cfg)
    else:
        df = pd.DataFrame({"text_id": [text_id(cfg.name, t) for t in raw["text"]], "text": raw["text"],
                           "label": raw["raw_label"], "label_name": raw["raw_label"].map(dict(enumerate(label_names))),
                           "split": "train", "lang": cfg.lang, "event_timestamp": pd.Timestamp(cfg.event_timestamp)})
        df = df.drop_duplicates("text_id").sort_values("text_id", kind="stable").reset_index(drop=True)
        df = df[list(PREPARED_COLUMNS)].astype(PREPARED_COLUMNS)
    extras = extras.assign(text_id=[text_id(cfg.name, t) for t in texts]).drop_duplicates("text_id")
    return df.merge(extras, on="text_id", how="left", validate="one_to_one")


def behaviour_frame(task: str, labelled: Labelled, cfg: PrepareConfig) -> pd.DataFrame:
    """Correctness labels (text = the prompt, label 1 = answered right) with the option scores beside."""
    if not labelled.items:
        raise SaefsError(f"task {task!r}: no item left to label (skipped: {labelled.skipped})")
    extras = pd.DataFrame({
        "options": [list(item.options) for item in labelled.items],
        "correct_answer": [item.answer for item in labelled.items],
        "answer": labelled.answers,
        "option_logprobs": labelled.option_logprobs,
    })
    return labelled_frame(task, labelled.prompts, [int(c) for c in labelled.correct], LABEL_NAMES, cfg, extras)


# --- judgements: the target's yes/no answer about a text ---------------------------------------------

def judgement_prompt(question: str, text: str, answers: Sequence[str]) -> str:
    """The zero-shot question about a text (no chat template, as the multiple-choice prompt); `answers` are the
    negative and the positive answer, whose continuations are scored."""
    return f"Text: {text}\n\nQuestion: {question} Answer {answers[1]} or {answers[0]}.\n\nAnswer:"


def judgement_labels(margins: np.ndarray, decision: str) -> tuple[np.ndarray, float]:
    """Label 1 where the target's positive-minus-negative log-odds is above the threshold: 0 (`answer`: it gives
    the positive answer) or its median over the texts (`median`: the half it judges the more so, whatever its
    bias towards one answer). Returns the labels and the threshold."""
    if decision not in ("answer", "median"):
        raise SaefsError(f"judgement decision {decision!r}: expected 'answer' or 'median'")
    threshold = 0.0 if decision == "answer" else float(np.median(margins))
    return (np.asarray(margins) > threshold).astype(int), threshold


def judgement_frame(task: str, texts: pd.DataFrame, scored: Scored, decision: str, answers: Sequence[str],
                    cfg: PrepareConfig) -> tuple[pd.DataFrame, float]:
    """The target's judgements of the kept rows of `texts` (`text`, `dataset`, `source_text_id`, `source_label`;
    `scored` holds each kept text's [negative, positive] answer scores) as a prepared dataset (text = the judged
    text, which source models featurize; label names = `answers`), with its log-odds (`margin`), whether it gave
    the positive answer, and the dataset and label each text came from beside. Returns the frame and the
    decision threshold."""
    if not scored.kept:
        raise SaefsError(f"task {task!r}: no text left to judge (skipped: {scored.skipped})")
    kept = texts.iloc[scored.kept].reset_index(drop=True)
    margins = np.array([positive - negative for negative, positive in scored.option_logprobs])
    labels, threshold = judgement_labels(margins, decision)
    extras = kept[["dataset", "source_text_id", "source_label"]].assign(
        margin=margins, answered_positive=margins > 0, option_logprobs=scored.option_logprobs)
    return labelled_frame(task, kept["text"].tolist(), labels, answers, cfg, extras), threshold
