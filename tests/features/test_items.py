"""Multiple-choice items: the sae-probes and paper formats, bad items counted by reason, the prompt."""

from __future__ import annotations

import pandas as pd
import pytest

from features.errors import SaefsError
from features.sources.items import Item, ItemError, first_items, mcq_prompt, parse_item, parse_items

PHYS = "how do you recite vows?\n\nA.memorize them.\nB.speak them out loud."
SIQA = ("The following is a multiple choice question. Context: Quinn took toys away from Jesse.| Question: How "
        "would Jesse feel?| Option A: happy about the toys| Option B: happy with Quinn| Option C: sad about "
        "the toys. The correct answer is ")
ARITH = "Calculate 3 - 64 =\nA.-60 B.61 C.-62 D.-61"


def test_the_sae_probes_formats_as_they_ship() -> None:
    phys = parse_item("letter_lines", {"text": PHYS, "raw_label": 1})
    assert phys == Item("how do you recite vows?", ("memorize them.", "speak them out loud."), 1)
    siqa = parse_item("option_pipes", {"text": SIQA, "raw_label": 3})
    assert siqa.context == "Quinn took toys away from Jesse." and siqa.question == "How would Jesse feel?"
    assert siqa.options == ("happy about the toys", "happy with Quinn", "sad about the toys") and siqa.answer == 2
    arith = parse_item("inline_letters", {"text": ARITH, "raw_label": "D"})
    assert arith == Item("Calculate 3 - 64 =", ("-60", "61", "-62", "-61"), 3)


def test_the_paper_formats_read_hugging_face_rows() -> None:
    piqa = parse_item("piqa", {"goal": "open a jar", "sol1": "twist the lid", "sol2": "shake it", "label": 0})
    assert piqa.options == ("twist the lid", "shake it") and piqa.answer == 0
    boolq = parse_item("boolq", {"question": "is the sky blue", "passage": "It is.", "answer": True})
    assert boolq.options == ("no", "yes") and boolq.answer == 1 and boolq.context == "It is."
    pubmed = parse_item("pubmed_qa", {"question": "q?", "context": ["a.", "b."], "choices": ["yes", "no", "maybe"],
                                      "answer": ["maybe"]})
    assert pubmed.answer == 2 and pubmed.context == "a. b."


@pytest.mark.parametrize(("text", "label", "reason"), [
    ("one option only\n\nA.just this", 0, "fewer_than_two_options"),
    ("an empty option\n\nA.fine\nB.  ", 0, "empty_option"),
    ("no options at all", 0, "unparsable"),
    ("answer beyond the options\n\nA.x\nB.y", 5, "answer_out_of_range"),
])
def test_bad_items_raise_with_a_reason_and_are_counted(text: str, label: int, reason: str) -> None:
    with pytest.raises(ItemError) as err:
        parse_item("letter_lines", {"text": text, "raw_label": label})
    assert err.value.reason == reason
    rows = pd.DataFrame({"text": [PHYS, text], "raw_label": [0, label]})
    items, skipped = parse_items(rows, "letter_lines")
    assert len(items) == 1 and skipped == {reason: 1}


def test_a_missing_column_is_a_configuration_error_not_skipped_items() -> None:
    rows = pd.DataFrame({"prompt": [PHYS], "target": [1]})  # sae-probes' own names, not load_source's
    expected = (r"behaviour_labels.tasks.phys: item format 'letter_lines' reads columns \['text', 'raw_label'\], "
                r"which the source lacks \(it has \['prompt', 'target'\]\); set the task's `format:`")
    with pytest.raises(SaefsError, match=expected) as err:
        parse_items(rows, "letter_lines", "behaviour_labels.tasks.phys")
    assert not isinstance(err.value, ItemError)
    with pytest.raises(SaefsError, match=r"'piqa' reads columns \['sol2'\]"):
        parse_item("piqa", {"goal": "open a jar", "sol1": "twist", "label": 0})


def test_an_answer_that_is_no_number_is_a_counted_skip_of_its_own() -> None:
    rows = pd.DataFrame({"text": [PHYS, PHYS], "raw_label": ["1", "b"]})
    items, skipped = parse_items(rows, "letter_lines")
    assert len(items) == 1 and skipped == {"unparsable_answer": 1}


def test_unknown_format_is_named() -> None:
    with pytest.raises(SaefsError, match="unknown item format 'nope'"):
        parse_item("nope", {})


def test_prompt_is_the_papers_zero_shot_format() -> None:
    item = Item("Is it?", ("no", "yes"), 1, context="Some text.")
    assert mcq_prompt(item) == "Context: Some text.\n\nQuestion: Is it?\n\nOptions:\n1. no\n2. yes\n\nAnswer:"


def test_first_items_do_not_depend_on_row_order() -> None:
    items = [Item(f"q{i}", ("a", "b"), i % 2) for i in range(20)]
    assert first_items(items, "t", 5) == first_items(items[::-1], "t", 5)
    assert len(first_items(items, "t", None)) == 20
