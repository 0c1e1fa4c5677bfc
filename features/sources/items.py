"""Multiple-choice items: parsed from their source into (context, question, options, answer).

Item formats are a registry keyed by name (one parser per source layout):

  letter_lines   sae-probes 44_phys_tf: "stem\\n\\nA.opt\\nB.opt", target = index of the right option
  option_pipes   sae-probes 86_social_iqa: "... Context: c| Question: q| Option A: a| ... The correct
                 answer is ", target = 1-based position
  inline_letters sae-probes 37_arith_mc: "Calculate x =\\nA.1 B.2 C.3 D.4", target = letter
  piqa, boolq, pubmed_qa   the paper's Hugging Face rows (goal/sol1/sol2; question/passage/answer,
                 options no/yes; bigbio QA question/context/choices/answer)

An item that cannot be used (unparsable text or answer, fewer than two options, an empty option, an
answer that is not one of its options) raises `ItemError` with a `reason`; callers count these skips by
reason. A source without the columns its format reads is a configuration error (`SaefsError`), never a skip.
Every item is shown to a model in the paper's zero-shot prompt (`mcq_prompt`, PAPER.md §6.1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.core.prepare import text_id
from features.errors import SaefsError
from features.sources.datasets import load_source, source_rows


class ItemError(SaefsError):
    """An item that cannot be scored; `reason` is the short key under which it is counted."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Item:
    question: str
    options: tuple[str, ...]
    answer: int  # index of the right option
    context: str | None = None

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise ItemError("fewer_than_two_options", f"item {self.question[:60]!r} has {len(self.options)} "
                            "option(s); a multiple-choice item needs at least two")
        empty = [i for i, option in enumerate(self.options) if not option.strip()]
        if empty:
            raise ItemError("empty_option", f"item {self.question[:60]!r}: options {empty} are empty; "
                            "fix the source row or drop it")
        if not 0 <= self.answer < len(self.options):
            raise ItemError("answer_out_of_range", f"item {self.question[:60]!r}: answer {self.answer} is not "
                            f"one of its {len(self.options)} options")


# --- formats: one source row -> Item ------------------------------------------------------------

def _unparsable(fmt: str, text: str) -> ItemError:
    return ItemError("unparsable", f"{fmt}: cannot read options from {text[:80]!r}; check the item format")


def _answer(fmt: str, raw: Any) -> int:
    """An item's integer answer; a blank or non-numeric one is the item's fault, so a counted skip."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ItemError("unparsable_answer", f"{fmt}: answer {raw!r} is not a number; check the label column") \
            from None


def _letter_index(raw: Any, n: int) -> int:
    letter = str(raw).strip().upper()
    return ord(letter) - ord("A") if len(letter) == 1 and letter.isalpha() else n  # n: out of range


def _letter_lines(row: Mapping[str, Any]) -> Item:
    stem, sep, rest = str(row["text"]).rpartition("\n\nA.")
    if not sep:
        raise _unparsable("letter_lines", str(row["text"]))
    options = re.split(r"\n[B-Z]\.", rest)
    return Item(stem.strip(), tuple(o.strip() for o in options), _answer("letter_lines", row["raw_label"]))


def _option_pipes(row: Mapping[str, Any]) -> Item:
    text = str(row["text"]).strip()
    body = text.removesuffix("The correct answer is").strip()
    parts = body.split("| ")
    if body == text or len(parts) < 3 or "Context: " not in parts[0] or not parts[1].startswith("Question: "):
        raise _unparsable("option_pipes", text)
    options = [p.split(": ", 1)[1] if ": " in p else "" for p in parts[2:]]
    options[-1] = options[-1].removesuffix(".")  # the template's full stop before "The correct answer is"
    return Item(parts[1].removeprefix("Question: ").strip(), tuple(o.strip() for o in options),
                _answer("option_pipes", row["raw_label"]) - 1, context=parts[0].split("Context: ", 1)[1].strip())


def _inline_letters(row: Mapping[str, Any]) -> Item:
    stem, sep, line = str(row["text"]).rpartition("\n")
    options = re.split(r"(?:^|\s+)[A-Z]\.", line)
    if not sep or options[0].strip():
        raise _unparsable("inline_letters", str(row["text"]))
    return Item(stem.strip(), tuple(o.strip() for o in options[1:]), _letter_index(row["raw_label"], len(options)))


def _piqa(row: Mapping[str, Any]) -> Item:
    return Item(str(row["goal"]), (str(row["sol1"]), str(row["sol2"])), _answer("piqa", row["label"]))


def _boolq(row: Mapping[str, Any]) -> Item:
    return Item(str(row["question"]), ("no", "yes"), int(bool(row["answer"])), context=str(row["passage"]))


def _strings(value: Any) -> list[str]:
    """A field holding a string or a list of them (a list column reads back from parquet as an array)."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _pubmed_qa(row: Mapping[str, Any]) -> Item:
    choices, answers = _strings(row["choices"]), _strings(row["answer"])
    answer = choices.index(answers[0]) if answers and answers[0] in choices else len(choices)  # else: out of range
    return Item(str(row["question"]), tuple(choices), answer, context=" ".join(_strings(row["context"])))


ITEM_FORMATS: dict[str, Callable[[Mapping[str, Any]], Item]] = {
    "letter_lines": _letter_lines, "option_pipes": _option_pipes, "inline_letters": _inline_letters,
    "piqa": _piqa, "boolq": _boolq, "pubmed_qa": _pubmed_qa,
}
# The columns each format reads: a source without them is misconfigured, not a pile of bad items.
ITEM_COLUMNS: dict[str, tuple[str, ...]] = {
    "letter_lines": ("text", "raw_label"), "option_pipes": ("text", "raw_label"),
    "inline_letters": ("text", "raw_label"), "piqa": ("goal", "sol1", "sol2", "label"),
    "boolq": ("question", "passage", "answer"), "pubmed_qa": ("question", "context", "choices", "answer"),
}
# Formats that read sae-probes' `prompt`/`target` (as load_source's text/raw_label); the others whole HF rows.
TEXT_FORMATS = ("letter_lines", "option_pipes", "inline_letters")


def check_item_columns(fmt: str, columns: Sequence[str], task: str = "items") -> None:
    """Refuse rows that lack a column `fmt` reads, naming the task, the columns and the fix."""
    if fmt not in ITEM_FORMATS:
        raise SaefsError(f"unknown item format {fmt!r}: expected one of {sorted(ITEM_FORMATS)}")
    missing = [c for c in ITEM_COLUMNS[fmt] if c not in columns]
    if missing:
        raise SaefsError(f"{task}: item format {fmt!r} reads columns {missing}, which the source lacks (it has "
                         f"{list(columns)}); set the task's `format:` to the one its source follows")


def parse_item(fmt: str, row: Mapping[str, Any]) -> Item:
    """One row as an Item; an item text or answer that does not fit the format raises ItemError."""
    check_item_columns(fmt, list(row))
    return ITEM_FORMATS[fmt](row)


def load_item_rows(source: str, fmt: str, split: str = "train") -> pd.DataFrame:
    """An item source's raw rows: sae-probes rows as `text`/`raw_label`, hub or file rows with all their columns."""
    if fmt in TEXT_FORMATS:
        return load_source(source, split=split)
    return source_rows(source, split)


def parse_items(rows: pd.DataFrame, fmt: str, task: str = "items") -> tuple[list[Item], dict[str, int]]:
    """Every usable item of `rows`, and the skipped ones counted by reason."""
    check_item_columns(fmt, list(rows.columns), task)
    items, skipped = [], {}
    for row in rows.to_dict("records"):
        try:
            items.append(parse_item(fmt, row))
        except ItemError as err:
            skipped[err.reason] = skipped.get(err.reason, 0) + 1
    return items, skipped


def first_items(items: Sequence[Item], task: str, n: int | None) -> list[Item]:
    """Up to `n` items in a stable pseudo-random order (by the id of their prompt), independent of row order."""
    ranked = sorted(items, key=lambda item: text_id(task, mcq_prompt(item)))
    return ranked if n is None else ranked[:n]


def mcq_prompt(item: Item) -> str:
    """The paper's zero-shot multiple-choice prompt (PAPER.md §6.1), context first when there is one."""
    context = f"Context: {item.context}\n\n" if item.context else ""
    options = "\n".join(f"{i}. {option}" for i, option in enumerate(item.options, 1))
    return f"{context}Question: {item.question}\n\nOptions:\n{options}\n\nAnswer:"
