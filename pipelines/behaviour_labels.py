"""Stage behaviour_labels: one target model's behaviour on one task, as labels for source models to predict.

A multiple-choice task (`kind: correct`, the paper's): items parsed from the source (unusable rows counted
by reason), `max_items` of them in a stable order, each option scored by the target's summed
log-probability after the item's zero-shot prompt; the label is whether the target answered right, the
text the prompt. A judgement task (`kind: judgement`): the target is asked `question` about `max_items`
texts of the task's prepared datasets, its two `answers` scored the same way; the label is its judgement by
`decision` (it gives the positive answer, or leans to it more than on half the texts), the text the judged
text.
Prompts longer than `max_tokens` are skipped and counted. Writes the labels as a prepared dataset with the
scores beside, and metrics/behaviour_labels/<target>/<task>.json: items, skipped, and the target's accuracy
(correct) or how often it gives the positive answer, the label's balance and how its judgement ranks the datasets' own
labels (judgement).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

from features.core.metrics import classification_metrics
from features.core.prepare import PrepareConfig, text_id
from features.errors import SaefsError
from features.forward.behaviour import (
    behaviour_frame,
    judgement_frame,
    judgement_prompt,
    label_items,
    score_prompts,
    scoring_rate,
)
from features.sources.items import first_items, load_item_rows, parse_items
from features.sources.lm import load_prepared, resolve_device
from features.stores.files import write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import ItemTask, JudgementTask, load_params

log = logging.getLogger("saefs.behaviour_labels")


def run(cell: str) -> None:
    target, _, task = cell.partition("/")
    params = load_params()
    cfg, prep = params.behaviour_labels, params.prepare_data
    if target not in cfg.targets or task not in cfg.tasks:
        raise SaefsError(f"{cell!r}: expected <target>/<task> with a target in {cfg.targets} and a task in "
                         f"{sorted(cfg.tasks)} (behaviour_labels in params.yaml)")
    spec = cfg.tasks[task]
    split = PrepareConfig(name=task, labels=(0, 1), test_size=prep.test_size, seed=prep.seed,
                          event_timestamp=prep.event_timestamp)
    # a judgement's texts are read before the model loads: a missing prepared file fails in seconds
    texts = judged_texts(task, spec) if isinstance(spec, JudgementTask) else None
    model, tokenizer = load_prepared(paths.model_dir(target), resolve_device(params.extract.device))
    started = time.perf_counter()
    if isinstance(spec, ItemTask):
        frame, report, work = correctness(task, spec, model, tokenizer, cfg.max_tokens, split)
    else:
        frame, report, work = judgement(task, spec, texts, model, tokenizer, cfg.max_tokens, split)
    seconds = time.perf_counter() - started
    write_parquet(paths.behaviour_labels(target, task), frame)
    write_json(paths.behaviour_metrics(target, task), report | {"seconds": round(seconds, 1)})
    cost.work(**work)
    cost.forward("behaviour", scoring_rate(model, work["tokens"], work["head_positions"], seconds))


def correctness(task: str, spec: ItemTask, model: Any, tokenizer: Any, max_tokens: int,
                split: PrepareConfig) -> tuple[pd.DataFrame, dict[str, Any], dict[str, int]]:
    """Label 1: the target answered the item right. The frame, the metrics and the work done."""
    items, skipped = parse_items(load_item_rows(spec.source, spec.format, spec.split), spec.format,
                                 f"behaviour_labels.tasks.{task}")
    labelled = label_items(model, tokenizer, first_items(items, task, spec.max_items), max_tokens, skipped)
    frame = behaviour_frame(task, labelled, split)
    accuracy = float(frame["label"].mean())
    # prepare drops repeated prompts whose answers conflict (same text, both labels): counted apart
    report = {"kind": "correct", "items": len(frame), "skipped": sum(labelled.skipped.values()),
              "skipped_by_reason": labelled.skipped, "dropped_duplicates": len(labelled.items) - len(frame),
              "accuracy": accuracy, "chance": float((1 / frame["options"].map(len)).mean()),
              "one_class": bool(frame["label"].nunique() < 2)}
    log.info("%s: %d items, accuracy %.3f (chance %.3f), skipped %s", task, len(frame), accuracy, report["chance"],
             labelled.skipped or "none")
    return frame, report, {"items": len(labelled.items), "tokens": labelled.tokens,
                           "head_positions": labelled.head_positions}


def judged_texts(task: str, spec: JudgementTask) -> pd.DataFrame:
    """The texts the target judges: the task's prepared datasets, each text once (the first dataset keeps it),
    `max_items` of them in a stable pseudo-random order (by the task's text id), independent of row order."""
    frames = []
    for dataset in spec.datasets:
        path = paths.prepared(dataset)
        if not path.exists():
            raise SaefsError(f"behaviour_labels.tasks.{task} judges the texts of {path}, which is missing: run "
                             "`dvc repro prepare_data`")
        frames.append(pd.read_parquet(path, columns=["text_id", "text", "label"]).assign(dataset=dataset))
    texts = pd.concat(frames, ignore_index=True).drop_duplicates("text")
    texts = texts.rename(columns={"text_id": "source_text_id", "label": "source_label"})
    order = np.argsort([text_id(task, text) for text in texts["text"]], kind="stable")
    return texts.iloc[order[:spec.max_items]].reset_index(drop=True)


def judgement(task: str, spec: JudgementTask, texts: pd.DataFrame, model: Any, tokenizer: Any, max_tokens: int,
              split: PrepareConfig) -> tuple[pd.DataFrame, dict[str, Any], dict[str, int]]:
    """Label 1: the target judges the text so (by `spec.decision`). The frame, the metrics and the work done."""
    scored = score_prompts(model, tokenizer, [judgement_prompt(spec.question, t, spec.answers) for t in texts["text"]],
                           [spec.answers] * len(texts), max_tokens, desc=f"judging {task}")
    frame, threshold = judgement_frame(task, texts, scored, spec.decision, spec.answers, split)
    report = judgement_report(frame, scored.skipped, spec.decision, threshold)
    log.info("%s: %d texts, answers %r to %.1f%%, label 1 on %.1f%% (%s, threshold %.3f), AUROC of its judgement "
             "against the datasets' labels %s, skipped %s", task, report["items"], spec.answers[1],
             100 * report["answered_positive"], 100 * report["positive_share"], spec.decision, threshold,
             report["auroc_vs_dataset_labels"], scored.skipped or "none")
    return frame, report, {"items": len(scored.kept), "tokens": scored.tokens,
                           "head_positions": scored.head_positions}


def judgement_report(frame: pd.DataFrame, skipped: dict[str, int], decision: str,
                     threshold: float) -> dict[str, Any]:
    """How many texts, how balanced the label, and whether the judgement follows the datasets' own labels
    (AUROC of the log-odds against them: 0.5 unrelated, below 0.5 reversed)."""
    positive = float(frame["label"].mean())
    agreement = classification_metrics(frame["source_label"], frame["label"], frame["margin"])["roc_auc"]
    return {"kind": "judgement", "items": len(frame), "skipped": sum(skipped.values()), "skipped_by_reason": skipped,
            "decision": decision, "threshold": round(threshold, 4),
            "answered_positive": float(frame["answered_positive"].mean()),
            "positive_share": positive, "minority_share": min(positive, 1 - positive),
            "one_class": bool(frame["label"].nunique() < 2), "auroc_vs_dataset_labels": agreement,
            "positive_share_by_dataset": frame.groupby("dataset")["label"].mean().round(4).to_dict()}


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="target", help="<target>/<task>: a behaviour_labels target and task")


if __name__ == "__main__":
    sys.exit(main())
