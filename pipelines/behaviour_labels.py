"""Stage behaviour_labels: one target model answers one task's multiple-choice items.

Items parsed from the source (unusable rows counted by reason), `max_items` of them in
a stable order, each option scored by the target's summed log-probability after the item's
zero-shot prompt (items longer than `max_tokens` skipped and counted). Writes the labels (1: the
target answered right) as a prepared dataset with the option scores beside them, and
metrics/behaviour_labels/<target>/<task>.json with items, skipped, accuracy.
"""

from __future__ import annotations

import logging
import sys
import time

from features.core.prepare import PrepareConfig
from features.errors import SaefsError
from features.forward.behaviour import behaviour_frame, label_items
from features.forward.throughput import forward_flops_per_token, throughput
from features.sources.items import first_items, load_item_rows, parse_items
from features.sources.lm import decoder_layers, load_prepared, resolve_device
from features.stores.files import write_json, write_parquet
from pipelines import cost, paths, stage_main
from pipelines.params import load_params

log = logging.getLogger("saefs.behaviour_labels")


def run(cell: str) -> None:
    target, _, task = cell.partition("/")
    params = load_params()
    cfg, prep = params.behaviour_labels, params.prepare_data
    if target not in cfg.targets or task not in cfg.tasks:
        raise SaefsError(f"{cell!r}: expected <target>/<task> with a target in {cfg.targets} and a task in "
                         f"{sorted(cfg.tasks)} (behaviour_labels in params.yaml)")
    spec = cfg.tasks[task]
    items, skipped = parse_items(load_item_rows(spec.source, spec.format, spec.split), spec.format,
                                 f"behaviour_labels.tasks.{task}")
    model, tokenizer = load_prepared(paths.model_dir(target), resolve_device(params.extract.device))
    started = time.perf_counter()
    labelled = label_items(model, tokenizer, first_items(items, task, spec.max_items), cfg.max_tokens, skipped)
    frame = behaviour_frame(task, labelled, PrepareConfig(name=task, labels=(0, 1), test_size=prep.test_size,
                                                          seed=prep.seed, event_timestamp=prep.event_timestamp))
    accuracy = float(frame["label"].mean())
    write_parquet(paths.behaviour_labels(target, task), frame)
    # prepare drops repeated prompts whose answers conflict (same text, both labels): counted apart
    report = {"items": len(frame), "skipped": sum(labelled.skipped.values()), "skipped_by_reason": labelled.skipped,
              "dropped_duplicates": len(labelled.items) - len(frame),
              "accuracy": accuracy, "chance": float((1 / frame["options"].map(len)).mean()),
              "one_class": bool(frame["label"].nunique() < 2), "seconds": round(time.perf_counter() - started, 1)}
    write_json(paths.behaviour_metrics(target, task), report)
    # decoder blocks for every token run, the output embedding for every position the head scored
    blocks, head = forward_flops_per_token(decoder_layers(model)), forward_flops_per_token([
        model.get_output_embeddings()])
    cost.work(items=len(labelled.items), tokens=labelled.tokens, head_positions=labelled.head_positions)
    cost.forward("behaviour", throughput(labelled.tokens, report["seconds"],
                                         blocks + head * labelled.head_positions // max(labelled.tokens, 1)))
    log.info("%s: %d items, accuracy %.3f (chance %.3f), skipped %s, %.0f s", cell, len(frame), accuracy,
             report["chance"], labelled.skipped or "none", report["seconds"])


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="target", help="<target>/<task>: a behaviour_labels target and task")


if __name__ == "__main__":
    sys.exit(main())
