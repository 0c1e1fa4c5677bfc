"""Option scoring against a hand computation, skips for long items, and the labels as a prepared dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from features.core.schema import PREPARED_COLUMNS
from features.forward.behaviour import behaviour_frame, label_items, score_options
from features.sources.items import Item, ItemError, mcq_prompt
from tests.features.tiny import BOS_ID, make_model, make_tokenizer
from tests.helpers import prepare_config


def hand_logprob(model, ids: list[int], n_option: int) -> float:
    """Sum of log p(token | everything before it) over the last `n_option` tokens, from a plain full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[p - 1, ids[p]] for p in range(len(ids) - n_option, len(ids))))


def word_ids(text: str) -> list[int]:
    return [4 + int(w[1:]) for w in text.split()]  # make_tokenizer's vocabulary: w<i> -> 4 + i


@pytest.mark.parametrize("kind", ["gemma3", "gemma2", "llama"])  # gemma2: final logit softcapping
def test_scores_match_a_hand_computation_with_multi_token_options(kind: str) -> None:
    model, tokenizer = make_model(kind, n_layers=2), make_tokenizer()
    prompt, options = "w1 w2 w3", ["w7", "w8 w9 w10", "w11 w12"]
    scores = score_options(model, tokenizer, prompt, options, max_tokens=32)
    expected = [hand_logprob(model, [BOS_ID, *word_ids(prompt), *word_ids(o)], len(o.split())) for o in options]
    assert scores == pytest.approx(expected, abs=1e-4)


def test_bos_is_prepended_when_the_tokenizer_does_not_add_it() -> None:
    model, with_bos = make_model("gemma3", n_layers=2), make_tokenizer()
    backend = with_bos.backend_tokenizer
    backend.post_processor = None
    without_bos = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                          unk_token="<unk>", pad_token="<pad>")
    assert without_bos("w1")["input_ids"] == word_ids("w1")
    options = ["w5", "w6 w7"]
    assert score_options(model, without_bos, "w1 w2", options, 16) == pytest.approx(
        score_options(model, make_tokenizer(), "w1 w2", options, 16), abs=1e-6)


def test_too_long_items_are_skipped_and_counted() -> None:
    model, tokenizer = make_model("gpt2", n_layers=1), make_tokenizer()  # gpt2 tiny: a 64-token context
    with pytest.raises(ItemError, match="more than 64") as err:
        score_options(model, tokenizer, " ".join(["w1"] * 70), ["w2", "w3"], max_tokens=1000)
    assert err.value.reason == "too_long"
    items = [Item("w1 w2", ("w3", "w4"), 0), Item(" ".join(["w5"] * 20), ("w3", "w4"), 1)]
    labelled = label_items(model, tokenizer, items, max_tokens=24, skipped={"empty_option": 2}, progress=False)
    assert labelled.items == items[:1] and labelled.skipped == {"empty_option": 2, "too_long": 1}
    assert labelled.prompts == [mcq_prompt(items[0])] and len(labelled.option_logprobs[0]) == 2


def test_an_option_without_tokens_is_an_item_error() -> None:
    model, tokenizer = make_model("gemma3", n_layers=1), make_tokenizer()
    with pytest.raises(ItemError, match="no tokens"):
        score_options(model, tokenizer, "w1", ["w2", " "], 16)


def frame_of(correct: list[bool]):
    from features.forward.behaviour import Labelled

    items = [Item(f"w{i} w{i + 1}", ("w1", "w2"), 0) for i in range(len(correct))]
    scores = [[0.0, -1.0] if ok else [-1.0, 0.0] for ok in correct]
    labelled = Labelled([mcq_prompt(i) for i in items], items, scores, {})
    return behaviour_frame("task", labelled, prepare_config(name="task", labels=(0, 1), test_size=0.25))


def test_labels_are_a_prepared_dataset_with_the_scores_beside() -> None:
    correct = [i % 3 != 0 for i in range(40)]
    frame = frame_of(correct)
    assert list(frame.columns[: len(PREPARED_COLUMNS)]) == list(PREPARED_COLUMNS)
    assert set(frame["split"]) == {"train", "test"} and frame["label"].sum() == sum(correct)
    assert (frame["label"] == (frame["answer"] == frame["correct_answer"])).all()
    assert frame["label_name"].map({"incorrect": 0, "correct": 1}).equals(frame["label"])


def test_a_target_that_is_always_right_keeps_one_class_and_no_test_split() -> None:
    frame = frame_of([True] * 12)
    assert set(frame["label"]) == {1} and set(frame["split"]) == {"train"} and len(frame) == 12
    assert str(frame["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    pd.testing.assert_frame_equal(frame, frame_of([True] * 12))


@pytest.mark.parametrize("kind", ["gemma3", "llama", "gpt2"])
def test_batched_items_of_different_lengths_score_as_each_alone(kind: str) -> None:
    """Left-padded prompts of 1 to 11 words and options of 1 to 3 tokens, all in one batch: every score equals a
    plain forward of that prompt and option alone (padding must not leak into attention or positions)."""
    model, tokenizer = make_model(kind, n_layers=2), make_tokenizer()
    items = [Item(" ".join(f"w{(3 * i + j) % 40}" for j in range(1 + (5 * i) % 11)),
                  tuple(" ".join(f"w{(i + j + k) % 40 + 40}" for k in range(1 + (i + j) % 3)) for j in range(3)), 0)
             for i in range(9)]
    labelled = label_items(model, tokenizer, items, max_tokens=64, progress=False, batch_tokens=10_000)
    for item, scores in zip(labelled.items, labelled.option_logprobs, strict=True):
        prompt = [BOS_ID, *tokenizer(mcq_prompt(item), add_special_tokens=False)["input_ids"]]
        expected = [hand_logprob(model, prompt + word_ids(option), len(option.split())) for option in item.options]
        assert scores == pytest.approx(expected, abs=1e-4)
    one_by_one = label_items(model, tokenizer, items, max_tokens=64, progress=False, batch_tokens=1)
    np.testing.assert_allclose(one_by_one.option_logprobs, labelled.option_logprobs, atol=1e-4)


# --- judgements ---------------------------------------------------------------------------------------

def judged(margins: list[float], decision: str):
    from features.forward.behaviour import Scored, judgement_frame

    texts = pd.DataFrame({"text": [f"w{i} w{i + 1}" for i in range(len(margins))], "dataset": "d",
                          "source_text_id": [f"d{i}" for i in range(len(margins))], "source_label": 1})
    scored = Scored(list(range(len(margins))), [[0.0, m] for m in margins], {})
    return judgement_frame("judge", texts, scored, decision, ("no", "yes"),
                           prepare_config(name="judge", labels=(0, 1), test_size=0.25))


def test_a_target_biased_to_one_answer_is_one_class_by_its_answer_and_balanced_by_its_median() -> None:
    margins = [0.5 + 0.1 * i for i in range(40)]  # it says yes to every text, more to some than others
    by_answer, threshold = judged(margins, "answer")
    assert threshold == 0 and set(by_answer["label"]) == {1} and set(by_answer["split"]) == {"train"}
    by_median, threshold = judged(margins, "median")
    assert threshold == pytest.approx(np.median(margins)) and by_median["label"].mean() == 0.5
    assert set(by_median["split"]) == {"train", "test"} and by_median["answered_positive"].all()
    # the label follows the margin, the text is the judged text (what source models featurize), ids by task
    ordered = by_median.sort_values("margin")
    assert ordered["label"].tolist() == [0] * 20 + [1] * 20
    assert set(by_median["text"]) == {f"w{i} w{i + 1}" for i in range(40)}
    assert set(by_median["label_name"]) == {"no", "yes"} and set(by_median["source_text_id"]) == {
        f"d{i}" for i in range(40)}


def test_a_target_with_no_text_left_to_judge_is_a_clear_error() -> None:
    from features.errors import SaefsError
    from features.forward.behaviour import Scored, judgement_frame

    texts = pd.DataFrame({"text": ["w1 " * 90], "dataset": "d", "source_text_id": "d0", "source_label": 0})
    with pytest.raises(SaefsError, match=r"task 'judge': no text left to judge \(skipped: \{'too_long': 1\}\)"):
        judgement_frame("judge", texts, Scored([], [], {"too_long": 1}), "median", ("no", "yes"),
                        prepare_config(name="judge", labels=(0, 1)))


def test_judgement_prompts_score_both_answers_after_the_text() -> None:
    from features.forward.behaviour import judgement_prompt, score_prompts

    model, tokenizer = make_model("gemma3", n_layers=2), make_tokenizer()
    texts = ["w1 w2 w3", "w4 " * 30, "w5"]
    prompts = [judgement_prompt("w9 w10", text, ("w1", "w2")) for text in texts]
    assert prompts[0].startswith("Text: w1 w2 w3\n\nQuestion: w9 w10 Answer w2 or w1.")
    scored = score_prompts(model, tokenizer, prompts, [("w1", "w2")] * 3, max_tokens=24, progress=False)
    assert scored.kept == [0, 2] and scored.skipped == {"too_long": 1}
    assert scored.option_logprobs[1] == pytest.approx(score_options(model, tokenizer, prompts[2], ["w1", "w2"], 24),
                                                      abs=1e-4)
