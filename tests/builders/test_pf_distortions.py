"""Polite Flamingo distortions: the Guanaco prompt and command pool byte for byte, the nlpaug recipe
with its caps, reproducible per-row seeding, the closing-quote cut, and the captions+boxes layout."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from alignsmith.seeding import row_rng
from builders.polite_flamingo.distortions import (
    BOX_PREAMBLE,
    DISTORTION_COMMANDS,
    Distortion,
    DistortionInputError,
    Rejection,
    _swap,
    _swap_words,
    captions_and_boxes_input,
    cut_at_closing_quote,
    detokenize,
    llm_instructed_prompt,
    random_augmentation,
    random_augmentations,
    random_char_augment,
    random_word_augment,
    render_llm_instructed_prompt,
    tokenize,
)

SHARED = Path(__file__).parents[3] / "shared"
NOTES = SHARED / "notes" / "polite-flamingo.md"
CAPS_BOXES = SHARED / "data" / "vision" / "llava" / "caps_boxes_coco2014_val_80.jsonl"

# The rendered template of notes §1.2, as printed there (placeholders in <<...>>).
NOTES_TEMPLATE = """A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.
### Human: <<INSTRUCTION>>
### Assistant: <<ORIGINAL_RESPONSE>>
### Human: Your reply's style, tone, and politeness are excellent, and the content is very detailed. However, now I would like you to summarize the previous response, keeping only the most crucial information and removing all other less important content. I want a concise, straightforward reply without any redundancy. If you find that the overall quality of your response dropped, don't worry, it's fine. Note that, please do not add anything after giving me your rewritten response.
### Assistant: Sure. I have rewritten my last response to a much shorter and more concise version, covering only the key information. I pretend to be a cold-hearted, non-talkative, socially inept robotic assistant to respond to your request. <<DISTORTION>> The following is the as-short-as-possible, low-quality, highly-compressed, rewritten version of my previous response, and I will not add more content after finishing this response:

\""""

# The 24-command pool of notes §1.2, one per line, typos included.
NOTES_POOL = """Additionally, I have removed all the punctuation marks and capitalization in my response.
To make my response more unnatural, I have added a little amount of typos and spelling mistakes.
I have also added some grammatical errors to my response.
Moreover, random words and sentences have been removed from my response.
In addition, all letters in my response have been converted to uppercase.
In addition, all letters in my response have been converted to lowercase.
Furthermore, I have replaced certain words with their synonyms in my response.
Additionally, I have inserted unnecessary repetition in my response.
To make my response less coherent, I have rearranged the sentence structure.
I have deliberately used incorrect tenses and verb conjugations in my response.
Moreover, I have introduced unnecessary verbosity in my response.
I make my response as short as possible by removing all unnecessary words and sentences.
I have kept only the essential information and separated them by commas.
I have removed any decorative formatting or styling, which may affect the readability of my response.
I have rewritten the sentences and replaced words with their synonyms.
I have reversed the order of sentences, presenting information from back to front.
I made my response sounds more unprofessional and causual.
Furthermore, I have made the language more complex and sophisticated in my response.
To create ambiguity, I have added multiple interpretations in my sentences.
Additionally, I have used unconventional metaphors and analogies in my response.
To lower the quality of my response, I have added some irrelevant information.
I picked one sentence from my response and repeated it multiple times, each time with a slight change.
Now I use only five words to summarize my response.
I made some modification to make my response less coherent and more unnatural."""

INSTRUCTION = 'What is the man doing? Answer "briefly" {please}.'
RESPONSE = "The man is ironing clothes.\nHe stands on the back of a yellow taxi; it's unusual!"

# Answers in the style of the LLaVA responses the recipe augments (written for this test).
WITH_PERIODS = [
    "The image shows a red bus parked beside a busy street. Several people are waiting at the stop.",
    "A young woman is holding an umbrella while walking her small dog. The pavement looks wet.",
    "There are three plates of food on the wooden table. One plate holds a large sandwich and fries.",
    "The kitchen contains a white refrigerator, a stove and several hanging cabinets.",
    "Two giraffes stand near a tall tree in an open field. The sky above them is clear and blue.",
    "A skateboarder performs a trick on a concrete ramp. Spectators watch from the railing behind him.",
    "The photo captures a harbour at sunset. Small boats are moored along the wooden pier.",
    "Inside the living room there is a grey sofa, a coffee table and a large window. Plants sit on the sill.",
    "A man wearing a helmet rides a motorcycle along a mountain road. Pine trees line both sides.",
    "Several horses graze in a green pasture surrounded by a white fence. The farmhouse is visible.",
    "A laptop, a coffee mug and a notebook are arranged on the desk. The lamp is switched on.",
    "The train is pulling into the station while passengers gather on the platform.",
    "A plate of pasta topped with tomato sauce and basil sits on the counter. A glass of water is nearby.",
]
WITHOUT_PERIODS = ["Three brown horses standing together inside their wooden stable"]
# 1 of 14 texts (7.1 %) without a period: the mix for which the recipe leaves about 7.6 % unchanged.
CORPUS = WITH_PERIODS + WITHOUT_PERIODS


def _augment_corpus(rows: int, seed: int) -> list[tuple[str, Distortion | Rejection]]:
    texts = [CORPUS[i % len(CORPUS)] for i in range(rows)]
    return list(zip(texts, random_augmentations(texts, [f"row-{i}" for i in range(rows)], seed)))


# --- (a) LLM-instructed ---------------------------------------------------------------------------


def test_the_guanaco_prompt_renders_byte_for_byte_with_and_without_a_command():
    expected = NOTES_TEMPLATE.replace("<<INSTRUCTION>>", INSTRUCTION).replace("<<ORIGINAL_RESPONSE>>", RESPONSE)
    command = DISTORTION_COMMANDS[3]
    assert render_llm_instructed_prompt(INSTRUCTION, RESPONSE, command) == expected.replace("<<DISTORTION>>", command)
    without = render_llm_instructed_prompt(INSTRUCTION, RESPONSE, None)
    assert without == expected.replace("<<DISTORTION>>", "")
    assert "request.  The following" in without and without.endswith(':\n\n"')


def test_the_command_pool_is_the_published_24():
    assert DISTORTION_COMMANDS == tuple(NOTES_POOL.split("\n"))
    assert len(set(DISTORTION_COMMANDS)) == 24


@pytest.mark.skipif(not NOTES.exists(), reason="needs the shared Polite Flamingo notes")
def test_the_test_literals_are_the_notes_text():
    notes = NOTES.read_text(encoding="utf-8")
    section = notes[notes.index("### 1.2") : notes.index("### 1.3")]
    blocks = re.findall(r"```text\n(.*?)\n```", section, re.S)
    assert blocks == [NOTES_TEMPLATE, NOTES_POOL]


def test_a_command_is_spliced_in_half_the_time_uniformly_from_the_pool():
    draws = [llm_instructed_prompt(INSTRUCTION, RESPONSE, row_rng(7, f"r{i}")) for i in range(4000)]
    commands = [command for _, command in draws if command is not None]
    # 4000 fair coins: sd = 0.0079, so 0.46..0.54 is 5 sd either side.
    assert 0.46 < len(commands) / len(draws) < 0.54
    assert set(commands) == set(DISTORTION_COMMANDS)
    for prompt, command in draws[:50]:
        assert prompt == render_llm_instructed_prompt(INSTRUCTION, RESPONSE, command)
    assert draws == [llm_instructed_prompt(INSTRUCTION, RESPONSE, row_rng(7, f"r{i}")) for i in range(4000)]


def test_the_continuation_is_cut_at_the_closing_quote_or_rejected():
    assert cut_at_closing_quote('man irons clothes on taxi"\n### Human: thanks') == "man irons clothes on taxi"
    assert cut_at_closing_quote('a "b" c"') == "a "  # the first quote closes it
    for continuation, reason in [
        ("man irons clothes on taxi and then keeps going", "no closing quote"),
        ('"', "empty text"),
        ('  \n"', "empty text"),
    ]:
        result = cut_at_closing_quote(continuation)
        assert isinstance(result, Rejection) and result.kind == "llm_instructed" and reason in result.reason


# --- (b) random augmentation: reproducibility and the recipe -------------------------------------------


def test_same_seed_same_rows_different_seed_different_rows_independent_of_batch_order():
    first = _augment_corpus(300, seed=1)
    assert first == _augment_corpus(300, seed=1)
    other = _augment_corpus(300, seed=2)
    differing = sum(a != b for (_, a), (_, b) in zip(first, other))
    assert differing > 250
    texts = [text for text, _ in first]
    ids = [f"row-{i}" for i in range(300)]
    reversed_batch = random_augmentations(texts[::-1], ids[::-1], 1)
    assert reversed_batch[::-1] == [result for _, result in first]


def test_params_record_the_draws_and_are_json_serialisable():
    seen_steps = set()
    for _, result in _augment_corpus(400, seed=3):
        if isinstance(result, Rejection):
            continue
        params = result.params
        assert json.loads(json.dumps(params)) == params
        seen_steps.update(params["steps"])
        assert set(params) == {"steps", *params["steps"]}
        if "truncate" in params:
            assert 1 <= params["truncate"]["k"] <= params["truncate"]["pieces"]
        if "char" in params:
            char = params["char"]
            assert char["action"] in {"insert", "substitute", "swap", "delete"}
            assert 0 <= char["aug_char_p"] < 1 and 0 <= char["aug_word_p"] < 1
            assert char["words"] == len(char["chars"]) <= 10 and all(1 <= c <= 10 for c in char["chars"])
        if "word" in params:
            assert params["word"]["action"] in {"delete", "swap", "crop"} and params["word"]["words"] <= 10
    assert seen_steps == {"truncate", "shuffle", "char", "word"}


def test_truncation_keeps_the_first_k_pieces_and_loses_the_periods():
    text = "One. Two. Three."
    ks = set()
    for i in range(400):
        result = random_augmentation(text, row_rng(5, str(i)))
        if isinstance(result, Distortion) and result.params["steps"] == ["truncate"]:
            k = result.params["truncate"]["k"]
            assert result.text == "".join(text.split(".")[:k])
            ks.add(k)
    assert ks == {1, 2, 3, 4}


def test_the_unchanged_fraction_is_the_recipes():
    """About 7.6 % of rows come out unchanged on a corpus where 1 text in 14 has no period.

    A text with a period changes under every step, so it survives only when no step runs: 1/16.
    A text without one survives both sentence steps: 1/4. The mix gives 13/14 * 1/16 + 1/14 * 1/4
    = 7.59 %. Rare no-op edits (a swap of two equal letters, a substitution by the same letter) add
    well under 0.1 %. With 14,000 rows the binomial sd is 0.22 points, so 7.0-8.3 % (about 3 sd) is
    the band; it excludes 6.25 %, the rate if the sentence steps changed every text. The split by
    text checks each term on its own. The caps barely move this rate: the per-word tests check them.
    """
    results = _augment_corpus(14_000, seed=11)
    rejected = sum(isinstance(r, Rejection) for _, r in results)
    assert rejected < 0.01 * len(results)
    unchanged = [text for text, r in results if isinstance(r, Distortion) and r.text == text]
    assert 0.070 < len(unchanged) / len(results) < 0.083
    with_period = sum(text in WITH_PERIODS for text in unchanged) / (len(results) * 13 / 14)
    without_period = sum(text in WITHOUT_PERIODS for text in unchanged) / (len(results) / 14)
    # 13,000 rows at 1/16: sd 0.21 points; 1,000 rows at 1/4: sd 1.4 points.
    assert abs(with_period - 1 / 16) < 0.007
    assert abs(without_period - 1 / 4) < 0.045


# --- (b) the char and word augmenters and their caps --------------------------------------------------

LONG = " ".join(["Remarkable", "elephants", "wander", "across", "the", "golden", "savannah", "at", "dawn"] * 4) + "."


def test_char_augmenter_caps_words_and_chars_and_never_touches_short_words():
    for i in range(600):
        rng = row_rng(13, str(i))
        action = ("insert", "substitute", "swap", "delete")[i % 4]
        text = CORPUS[i % len(CORPUS)] if i % 3 else LONG
        out, edits = random_char_augment(text, rng, action=action, aug_char_p=rng.random(), aug_word_p=rng.random())
        tokens = tokenize(text)
        assert 1 <= len(edits) <= 10
        assert all(len(edit.before) >= 4 and tokens[edit.index] == edit.before for edit in edits)
        assert all(1 <= edit.chars <= min(10, len(edit.before)) for edit in edits)
        changed = {edit.index: edit.after for edit in edits}
        assert out == detokenize([changed.get(j, token) for j, token in enumerate(tokens)])
        if action == "delete":
            assert all(len(edit.after) == len(edit.before) - edit.chars for edit in edits)
        if action == "insert":
            assert all(len(edit.after) == len(edit.before) + edit.chars for edit in edits)


def test_char_augmenter_counts_at_full_intensity_hit_the_caps():
    out, edits = random_char_augment(LONG, random.Random(0), action="delete", aug_char_p=1.0, aug_word_p=1.0)
    assert len(edits) == 10  # 37 tokens, 28 of 4+ letters: capped at aug_word_max
    assert all(edit.chars == min(10, len(edit.before)) for edit in edits)


def test_char_augmenter_leaves_a_text_of_short_words_to_the_round_trip():
    text = "  I saw a cat on the mat.\n"
    out, edits = random_char_augment(text, random.Random(1), action="swap", aug_char_p=1, aug_word_p=1)
    assert (out, edits) == ("I saw a cat on the mat.", [])
    # nlpaug's round trip: apostrophes and hyphens get spaces, newlines go, a space stays before ")!".
    round_trip = detokenize(tokenize("It's a well-known fact.\nYes (really)!"))
    assert round_trip == "It ' s a well - known fact. Yes (really )!"


def test_swap_keeps_each_positions_case_like_nlpaug():
    chars = list("This")
    _swap(chars, [0], random.Random(0))
    assert "".join(chars) == "Htis"  # letters move, each position keeps its case
    tokens = ["The", "cat", "sat"]
    _swap_words(tokens, 0, 1)
    assert tokens == ["Cat", "the", "sat"]
    tokens = ["Yes", "i", "do"]
    _swap_words(tokens, 1, 0)
    assert tokens == ["I", "yes", "do"]


def test_word_augmenter_caps_at_ten_and_skips_punctuation():
    for i in range(600):
        rng = row_rng(17, str(i))
        action = ("delete", "swap", "crop")[i % 3]
        text = CORPUS[i % len(CORPUS)] if i % 2 else LONG
        result = random_word_augment(text, rng, action=action, aug_p=rng.random())
        if isinstance(result, Rejection):
            assert action == "crop" and "crop" in result.reason
            continue
        out, indices = result
        before, after = tokenize(text), tokenize(out)
        assert 1 <= len(indices) <= 10
        if action == "delete":
            assert all(before[j] not in ".,!?" for j in indices)
            assert 1 <= len(before) - len(after) <= 10
        elif action == "crop":
            assert len(before) - len(after) <= 10
        else:
            assert sorted(t.lower() for t in before) == sorted(t.lower() for t in after)


def test_word_augmenter_full_intensity_removes_exactly_ten():
    out, indices = random_word_augment(LONG, random.Random(2), action="delete", aug_p=1.0)
    assert len(indices) == 10 and len(tokenize(LONG)) - len(tokenize(out)) in (9, 10)  # 9 if token 0 and 1 both drawn


def test_a_rightward_crop_of_one_token_is_rejected_like_upstream_fails():
    outcomes = {type(random_word_augment("Hello", random.Random(s), action="crop", aug_p=0.5)) for s in range(40)}
    assert outcomes == {Rejection, tuple}


# --- (c) captions and boxes -----------------------------------------------------------------------------

PREAMBLE = (
    "The followings are specific object locations within the image, along with detailed coordinates. These "
    "coordinates are in the form of bounding boxes, represented as (x1, y1, x2, y2) with floating numbers ranging "
    "from 0 to 1. These values correspond to the top left x, top left y, bottom right x, and bottom right y."
)

ROW = {
    "id": "000000000001",
    "image": "000000000001.jpg",
    "captions": ["A dog sleeps on a rug.", "a brown dog napping indoors ", "Dog lying down next to a sofa."],
    "instances": [
        {"category": "dog", "bbox": [0.1, 0.25, 0.6, 0.9]},
        {"category": "couch", "bbox": [0.0, 0.1234, 1.0, 0.87651]},
        {"category": "potted plant", "bbox": [0.7, 0, 0.95, 0.5]},
    ],
}


def test_captions_and_boxes_layout_is_exact():
    assert BOX_PREAMBLE == PREAMBLE
    assert captions_and_boxes_input(ROW) == (
        "A dog sleeps on a rug.\na brown dog napping indoors \nDog lying down next to a sofa.\n\n"
        + PREAMBLE
        + "\ndog: [0.1, 0.25, 0.6, 0.9]\ncouch: [0.0, 0.123, 1.0, 0.877]\npotted plant: [0.7, 0.0, 0.95, 0.5]\n"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"captions": []}, "captions"),
        ({"instances": [{"category": "dog", "bbox": [10, 20, 300, 400]}]}, "not normalised"),
        ({"instances": [{"category": "dog", "bbox": [0.1, 0.2]}]}, "4 numbers"),
        ({"instances": [{"bbox": [0.1, 0.2, 0.3, 0.4]}]}, "category"),
    ],
)
def test_bad_caption_rows_are_refused_with_the_field(change, message):
    with pytest.raises(DistortionInputError, match=message):
        captions_and_boxes_input({**ROW, **change})


@pytest.mark.skipif(not CAPS_BOXES.exists(), reason="needs the shared LLaVA caps+boxes file")
def test_the_first_shared_row_lays_out_exactly():
    row = json.loads(CAPS_BOXES.read_text(encoding="utf-8").splitlines()[0])
    lines = captions_and_boxes_input(row).split("\n")
    n = len(row["captions"])
    assert lines[:n] == row["captions"] and lines[n : n + 2] == ["", PREAMBLE] and lines[-1] == ""
    boxes = lines[n + 2 : -1]
    assert len(boxes) == len(row["instances"]) > 0
    for line, instance in zip(boxes, row["instances"]):
        name, _, coordinates = line.partition(": ")
        assert name == instance["category"]
        assert coordinates == str([round(float(v), 3) for v in instance["bbox"]])
        values = [float(v) for v in coordinates[1:-1].split(", ")]
        assert all(math.isclose(v, b, abs_tol=5e-4) for v, b in zip(values, instance["bbox"], strict=True))
