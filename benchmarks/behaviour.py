"""Benchmark behaviour labels: batched scoring (prompts once per item, items batched) against one item per forward.

    python benchmarks/behaviour.py --model gemma3_270m [--items 40] [--batch-tokens 1024]

Needs `dvc repro prepare_model` (the model), and `dvc repro prepare_data` for a judgement task (its texts).
For each behaviour task in params.yaml, the first `--items` prompts the stage would score (a multiple-choice
task's items; a judgement task's question about each judged text) are scored by the per-item path (the
scoring before batching: one forward per item, every option a row of prompt + option, on PyTorch's own fp32
product as before oneDNN) and by `score_prompts` (what the stage runs, on the product the stages chose on this
machine: features.sources.lm.load_causal_lm), on the same prompts in one run; prints
items/s of both, their ratio, the largest difference of option log-probabilities and whether the answers agree,
with the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import pipelines  # noqa: F401  (offline environment)
from features.forward.behaviour import context_length, judgement_prompt, score_prompts
from features.sources.items import first_items, load_item_rows, mcq_prompt, parse_items
from features.sources.lm import load_prepared, right_pad, with_bos
from pipelines import paths
from pipelines.behaviour_labels import judged_texts
from pipelines.params import ItemTask, load_params


def task_prompts(task: str, spec, n: int) -> tuple[list[str], list[list[str]]]:
    """The first `n` prompts the stage scores for `task`, and each one's options."""
    if isinstance(spec, ItemTask):
        items, _ = parse_items(load_item_rows(spec.source, spec.format, spec.split), spec.format, task)
        items = first_items(items, task, spec.max_items)[:n]
        return [mcq_prompt(item) for item in items], [list(item.options) for item in items]
    texts = judged_texts(task, spec)["text"].tolist()[:n]
    return [judgement_prompt(spec.question, text, spec.answers) for text in texts], [list(spec.answers)] * len(texts)


def per_item(model, tokenizer, prompts: list[str], options: list[list[str]],
             max_tokens: int) -> list[list[float] | None]:
    """The scoring before batching: one forward per item, each option a row holding the whole prompt."""
    scores: list[list[float] | None] = []
    for prompt, choices in zip(prompts, options, strict=True):
        prompt_ids = with_bos(tokenizer(prompt, add_special_tokens=True)["input_ids"], tokenizer.bos_token_id)
        option_ids = [list(tokenizer(" " + o, add_special_tokens=False)["input_ids"]) for o in choices]
        longest = max(len(ids) for ids in option_ids)
        if len(prompt_ids) + longest > min(max_tokens, context_length(model) or max_tokens) or not all(option_ids):
            scores.append(None)
            continue
        input_ids, attention_mask = right_pad([prompt_ids + ids for ids in option_ids], model.device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                           logits_to_keep=longest + 1).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores.append([float(sum(logprobs[row, j, token] for j, token in enumerate(ids)))
                       for row, ids in enumerate(option_ids)])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    args = parser.parse_args()
    params = load_params()
    b = params.behaviour_labels
    model, tokenizer = load_prepared(paths.model_dir(args.model))
    plain, _ = load_prepared(paths.model_dir(args.model), onednn=False)  # the scoring before, on PyTorch's product
    total_old = total_new = 0.0
    n_total = 0
    for task, spec in b.tasks.items():
        prompts, options = task_prompts(task, spec, args.items)
        started = time.perf_counter()
        old = per_item(plain, tokenizer, prompts, options, b.max_tokens)
        old_s = time.perf_counter() - started
        started = time.perf_counter()
        new = score_prompts(model, tokenizer, prompts, options, b.max_tokens, progress=False,
                            batch_tokens=args.batch_tokens)
        new_s = time.perf_counter() - started
        kept = [scores for scores in old if scores is not None]
        assert len(kept) == len(new.option_logprobs), "both paths must keep the same items"
        diff = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in zip(kept, new.option_logprobs, strict=True))
        agree = np.mean([int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(kept, new.option_logprobs,
                                                                                    strict=True)])
        print(f"{args.model} {task}: {len(prompts)} items; per-item {len(prompts) / old_s:6.2f} items/s, batched "
              f"{len(prompts) / new_s:6.2f} items/s ({old_s / new_s:.1f}x); max |diff| of option log-probs "
              f"{diff:.2e}; answers agree {agree:.0%}; load average {os.getloadavg()[0]:.1f}", flush=True)
        total_old, total_new, n_total = total_old + old_s, total_new + new_s, n_total + len(prompts)
    print(f"all tasks: per-item {n_total / total_old:.2f} items/s, batched {n_total / total_new:.2f} items/s "
          f"({total_old / total_new:.1f}x)")


if __name__ == "__main__":
    main()
