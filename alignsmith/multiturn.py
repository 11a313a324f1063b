"""Clever Flamingo's multi-turn augmentation: pad a sample with random unrelated samples as later turns.

The paper fills what would be ``<PAD>`` with other samples of the whole mixture, appended as later
turns (notes ``polite-flamingo.md`` §4.3); turns are not grouped by image, so the model learns to
attend to the right image in multi-image dialogues. The mechanics follow instruct_flamingo's
``data.py`` (the corrections at the top of the notes):

* up to ``max_draws`` (32 in its scripts) draws of ``random.choice`` over the whole pool;
* the loop ends at the first draw whose images would bring the total to ``max_img`` or more
  (``len(images) + len(new_images) >= max_img``), that draw not appended. The first sample is exempt
  (it may hold ``max_img`` images or more alone) and a text-only draw never ends the loop. (In the
  reference, a first sample at or over the budget makes even a text-only draw end the loop, since
  ``len(images) + 0 >= max_img``; here only image draws do.)
* no token budget while drawing; the result is truncated to ``max_tokens`` afterwards.

Truncation differs from the reference by default. The reference cuts the token sequence at
``max_length``, so the last turn usually loses the end of its response and its EOS, and the model
learns answers that stop mid-sentence. ``truncate="turns"`` (the default) drops whole trailing turns
that do not fit instead. ``truncate="reference"`` keeps the reference's behaviour as far as a record
can: the first turn that does not fit whole is kept with its response cut to the longest prefix that
fits (whatever EOS the chat template adds is then the trainer's business); a turn whose instruction
alone does not fit is dropped, since a record cannot hold an empty response. Either way a turn is
kept or dropped with its images, so every ``<image>`` stays in its turn.

``count_tokens`` takes a list of messages and returns its length as the trainer will see it (e.g.
``len(tokenizer.apply_chat_template(messages))``), so template overhead counts. Draws use
``row_rng(seed, first.id)``: the same seed gives the same conversation whatever the order in which
first samples are processed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from alignsmith.recipes import check_choice
from alignsmith.records import IMAGE_PLACEHOLDER, Conversation, Message, RecordError
from alignsmith.seeding import row_rng

TruncateMode = Literal["turns", "reference"]
TRUNCATE_MODES: tuple[TruncateMode, ...] = ("turns", "reference")
MAX_DRAWS = 32  # --multiturn_augmentation in instruct_flamingo's training scripts
CountTokens = Callable[[Sequence[Message]], int]


@dataclass(frozen=True)
class Sample:
    """One (instruction, response) turn with its images; the text holds one ``<image>`` per image."""

    id: str
    source: str
    instruction: str
    response: str
    images: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        placed = self.instruction.count(IMAGE_PLACEHOLDER) + self.response.count(IMAGE_PLACEHOLDER)
        if placed != len(self.images):
            raise RecordError(f"{placed} {IMAGE_PLACEHOLDER} placeholder(s) in the text but {len(self.images)} "
                              "image(s)", code="image_count", record_id=self.id, field="images")

    def messages(self) -> list[Message]:
        return [{"role": "user", "content": self.instruction}, {"role": "assistant", "content": self.response}]


def draw_turns(
    first: Sample, pool: Sequence[Sample], rng: random.Random, *, max_img: int, max_draws: int = MAX_DRAWS
) -> list[Sample]:
    """``first`` followed by the samples drawn from ``pool`` until the image budget stops the loop."""
    if max_img < 1 or max_draws < 0:
        raise ValueError(f"max_img must be >= 1 and max_draws >= 0, got {max_img} and {max_draws}")
    turns = [first]
    n_images = len(first.images)
    for _ in range(max_draws if pool else 0):
        sample = rng.choice(pool)
        if sample.images and n_images + len(sample.images) >= max_img:
            break
        turns.append(sample)
        n_images += len(sample.images)
    return turns


def _messages(turns: Sequence[Sample]) -> list[Message]:
    return [message for turn in turns for message in turn.messages()]


def _cut_response(kept: Sequence[Sample], turn: Sample, max_tokens: int, count_tokens: CountTokens) -> Sample | None:
    """``turn`` with the longest response prefix that fits after ``kept``; None when no text fits.

    A binary search over character prefixes: token counts grow with the prefix, so this finds the
    reference's token-level cut up to a partial token.
    """
    before = _messages(kept)

    def fits(length: int) -> bool:
        cut: list[Message] = [{"role": "user", "content": turn.instruction},
                              {"role": "assistant", "content": turn.response[:length]}]
        return count_tokens([*before, *cut]) <= max_tokens

    low, high = 0, len(turn.response) - 1  # the whole response does not fit
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    cut = turn.response[:low]
    if not cut.strip() or cut.count(IMAGE_PLACEHOLDER) != turn.response.count(IMAGE_PLACEHOLDER):
        return None
    return replace(turn, response=cut)


def truncate_turns(
    turns: Sequence[Sample], *, max_tokens: int, count_tokens: CountTokens, truncate: TruncateMode = "turns"
) -> list[Sample]:
    """The longest run of whole leading turns within ``max_tokens`` (``reference``: plus the next one, cut).

    Raises :class:`RecordError` (``too_long``) when not even the first turn fits.
    """
    check_choice("truncate", truncate, TRUNCATE_MODES)
    n = 0
    while n < len(turns) and count_tokens(_messages(turns[: n + 1])) <= max_tokens:
        n += 1
    kept = list(turns[:n])
    if truncate == "reference" and n < len(turns):
        cut = _cut_response(kept, turns[n], max_tokens, count_tokens)
        if cut is not None:
            kept.append(cut)
    if not kept:
        raise RecordError(f"the first turn alone is over max_tokens={max_tokens}", code="too_long",
                          record_id=turns[0].id, field="messages")
    return kept


def multiturn_conversation(
    first: Sample,
    pool: Sequence[Sample],
    *,
    seed: int,
    max_img: int,
    max_tokens: int,
    count_tokens: CountTokens,
    max_draws: int = MAX_DRAWS,
    truncate: TruncateMode = "turns",
) -> Conversation:
    """``first`` augmented with random turns from ``pool``, as a canonical conversation record.

    The id is ``f"{first.id}+mt{k}"`` with k the number of appended turns kept; ``metadata`` lists
    their ids (``appended``), the drawn ids truncation removed (``dropped``) and whether the last
    kept response was cut (``response_cut``, ``reference`` mode only).
    """
    drawn = draw_turns(first, pool, row_rng(seed, first.id), max_img=max_img, max_draws=max_draws)
    kept = truncate_turns(drawn, max_tokens=max_tokens, count_tokens=count_tokens, truncate=truncate)
    metadata = {
        "appended": [turn.id for turn in kept[1:]],
        "dropped": [turn.id for turn in drawn[len(kept):]],
        "response_cut": kept[-1].response != drawn[len(kept) - 1].response,
    }
    return {
        "id": f"{first.id}+mt{len(kept) - 1}",
        "source": first.source,
        "messages": _messages(kept),
        "images": [image for turn in kept for image in turn.images],
        "metadata": json.dumps(metadata),
    }
