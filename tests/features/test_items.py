"""Multiple-choice items: the sae-probes and paper formats, bad items counted by reason, the prompt."""

from __future__ import annotations

import pandas as pd
import pytest

from features.errors import SaefsError
from features.sources.items import Item, ItemError, first_items, load_item_rows, mcq_prompt, parse_item, parse_items
from tests.helpers import hub_parquet_export

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


def test_the_papers_script_based_sets_load_from_their_parquet_conversions(tmp_path, monkeypatch) -> None:
    """PIQA and PubMedQA (bigbio QA schema) as the hub converts them, read offline from the hub cache: list columns
    come back from parquet as arrays, which the formats must read as the lists they are."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    piqa = pd.DataFrame({"goal": ["open a jar", "dry a shirt"], "sol1": ["twist the lid", "wet it"],
                         "sol2": ["shake it", "hang it"], "label": [0, 1]})
    hub_parquet_export(tmp_path, "ybisk/piqa", {"plain_text/validation": piqa, "plain_text/train": piqa[:1]})
    pubmed = pd.DataFrame({"id": ["1", "2"], "question_id": ["1", "2"], "document_id": ["d1", "d2"],
                           "question": ["does it work?", "is it safe?"], "type": ["yesno", "yesno"],
                           "choices": [["yes", "no", "maybe"]] * 2, "context": ["it did.", "unclear."],
                           "answer": [["yes"], ["maybe"]]})
    hub_parquet_export(tmp_path, "bigbio/pubmed_qa", {"pubmed_qa_labeled_fold0_bigbio_qa/test": pubmed,
                                                      "pubmed_qa_labeled_fold0_source/test": pubmed[["id"]]})
    items, skipped = parse_items(load_item_rows("hf_parquet:ybisk/piqa", "piqa", "validation"), "piqa")
    assert [(item.question, item.answer) for item in items] == [("open a jar", 0), ("dry a shirt", 1)] and not skipped
    piqa.to_parquet(tmp_path / "piqa.parquet")  # the way where the hub has no conversion: rows exported to a file
    assert parse_items(load_item_rows(f"file:{tmp_path / 'piqa.parquet'}", "piqa"), "piqa")[0] == items
    rows = load_item_rows("hf_parquet:bigbio/pubmed_qa:pubmed_qa_labeled_fold0_bigbio_qa", "pubmed_qa", "test")
    items, skipped = parse_items(rows, "pubmed_qa")
    assert [(item.options, item.answer, item.context) for item in items] == [
        (("yes", "no", "maybe"), 0, "it did."), (("yes", "no", "maybe"), 2, "unclear.")] and not skipped


def test_whole_rows_come_only_from_a_hub_source() -> None:
    with pytest.raises(SaefsError, match=r"'sae_probes:44_phys_tf': whole rows come from a Hugging Face dataset or "
                                         r"a file; use one of \['hf:', 'hf_parquet:', 'file:'\]"):
        load_item_rows("sae_probes:44_phys_tf", "piqa")
