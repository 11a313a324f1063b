"""Multi-turn augmentation: instruct_flamingo's stop rule, the two truncation modes, seeding, and
images staying with their turns."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from alignsmith.records import IMAGE_PLACEHOLDER, Message, RecordError
from alignsmith.multiturn import MAX_DRAWS, Sample, draw_turns, multiturn_conversation, truncate_turns


def _sample(name: str, n_images: int = 0, response: str = "ok") -> Sample:
    images = tuple({"bytes": None, "path": f"{name}-{i}.jpg"} for i in range(n_images))
    return Sample(name, "test", f"question {name}" + IMAGE_PLACEHOLDER * n_images, response, images)


def _words(messages: Sequence[Message]) -> int:
    return sum(len(m["content"].split()) for m in messages)


class _Scripted(random.Random):
    """Hands out the pool entries in a fixed order, counting the draws."""

    def __init__(self, order: Sequence[int]) -> None:
        super().__init__(0)
        self.order, self.draws = list(order), 0

    def choice(self, seq):  # type: ignore[override]
        self.draws += 1
        return seq[self.order.pop(0)]


def test_a_draw_reaching_max_img_stops_even_with_text_draws_after() -> None:
    pool = [_sample("text"), _sample("img", 1)]
    rng = _Scripted([0, 1, 1, 0, 0, 0])  # text, img (1+1=2 < 3), img (2+1=3 >= 3: stop), text...
    turns = draw_turns(_sample("first", 1), pool, rng, max_img=3)
    assert [t.id for t in turns] == ["first", "text", "img"]
    assert rng.draws == 3  # the stopping draw counts and nothing is drawn after it


def test_text_only_draws_never_stop_and_draws_are_capped() -> None:
    rng = _Scripted([0] * 40)
    turns = draw_turns(_sample("first", 5), [_sample("text")], rng, max_img=3)  # first alone over budget
    assert len(turns) == 1 + MAX_DRAWS == 33 and rng.draws == 32
    assert len(draw_turns(_sample("first"), [_sample("text")], random.Random(0), max_img=1, max_draws=4)) == 5


def test_first_sample_may_exceed_max_img_but_then_any_image_draw_stops() -> None:
    rng = _Scripted([0, 1, 0])
    turns = draw_turns(_sample("first", 4), [_sample("text"), _sample("img", 1)], rng, max_img=2)
    assert [t.id for t in turns] == ["first", "text"] and rng.draws == 2


def test_truncate_turns_drops_whole_trailing_turns() -> None:
    turns = [_sample("a", response="one two three"), _sample("b", response="four five six"), _sample("c")]
    # each turn: 2 instruction words + its response words
    assert [t.id for t in truncate_turns(turns, max_tokens=9, count_tokens=_words)] == ["a"]
    assert [t.id for t in truncate_turns(turns, max_tokens=10, count_tokens=_words)] == ["a", "b"]
    # a later turn that would fit is not kept after one that does not: only trailing turns go
    long_middle = [turns[0], _sample("big", response=" ".join(["w"] * 20)), turns[2]]
    assert [t.id for t in truncate_turns(long_middle, max_tokens=12, count_tokens=_words)] == ["a"]
    assert [t.id for t in truncate_turns(turns, max_tokens=13, count_tokens=_words)] == ["a", "b", "c"]
    with pytest.raises(RecordError) as err:
        truncate_turns(turns, max_tokens=4, count_tokens=_words)
    assert (err.value.code, err.value.record_id) == ("too_long", "a")


def test_reference_truncation_cuts_the_last_response() -> None:
    turns = [_sample("a", response="one two three"), _sample("b", response="four five six seven")]
    kept = truncate_turns(turns, max_tokens=9, count_tokens=_words, truncate="reference")
    assert [t.id for t in kept] == ["a", "b"]
    assert _words([m for t in kept for m in t.messages()]) <= 9
    assert kept[1].response.startswith("four") and "six" not in kept[1].response
    # no room for any response text: the turn is dropped rather than left empty
    assert [t.id for t in truncate_turns(turns, max_tokens=6, count_tokens=_words, truncate="reference")] == ["a"]
    with pytest.raises(ValueError, match="truncate"):
        truncate_turns(turns, max_tokens=9, count_tokens=_words, truncate="tokens")  # type: ignore[arg-type]


def _pool() -> list[Sample]:
    return [_sample(f"p{i}", i % 3, response=" ".join(["word"] * (i % 5 + 1))) for i in range(20)]


def test_conversation_record_is_seeded_and_keeps_images_with_turns() -> None:
    pool, first = _pool(), _sample("first", 1, response="a b c")
    kwargs = dict(max_img=6, max_tokens=60, count_tokens=_words)
    record = multiturn_conversation(first, pool, seed=1, **kwargs)
    assert record == multiturn_conversation(first, pool, seed=1, **kwargs)
    others = [multiturn_conversation(first, pool, seed=s, **kwargs)["metadata"] for s in range(2, 6)]
    assert any(m != record["metadata"] for m in others)

    metadata = json.loads(record["metadata"])
    assert record["id"] == f"first+mt{len(metadata['appended'])}" and record["source"] == "test"
    assert _words(record["messages"]) <= 60 and len(record["images"]) < 6
    by_id = {s.id: s for s in pool}
    turns = [first, *(by_id[i] for i in metadata["appended"])]
    assert record["messages"] == [m for t in turns for m in t.messages()]
    assert record["images"] == [image for t in turns for image in t.images]
    images = iter(record["images"])
    for message in record["messages"]:  # each placeholder's image comes from that turn's sample
        for _ in range(message["content"].count(IMAGE_PLACEHOLDER)):
            owner = message["content"].split(IMAGE_PLACEHOLDER)[0].split()[1]
            assert next(images)["path"].split("-")[0] == owner
    assert next(images, None) is None


def test_conversation_metadata_lists_dropped_and_cut_turns() -> None:
    pool = [_sample("long", response=" ".join(["w"] * 10))]
    first = _sample("first", response="x")
    record = multiturn_conversation(first, pool, seed=0, max_img=3, max_tokens=20, count_tokens=_words, max_draws=3)
    assert record["id"] == "first+mt1"
    assert json.loads(record["metadata"]) == {"appended": ["long"], "dropped": ["long", "long"], "response_cut": False}
    record = multiturn_conversation(first, pool, seed=0, max_img=3, max_tokens=20, count_tokens=_words, max_draws=3,
                                    truncate="reference")
    assert json.loads(record["metadata"])["response_cut"] is True and record["id"] == "first+mt2"
    assert _words(record["messages"]) == 20


def test_sample_checks_its_placeholders() -> None:
    with pytest.raises(RecordError, match="1 <image> placeholder"):
        Sample("s", "test", "look <image>", "ok", ())
