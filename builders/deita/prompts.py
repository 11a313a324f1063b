"""The Deita scorer prompts, byte for byte, and how a conversation becomes scorer inputs.

The released scorers were fine-tuned on exactly these strings followed by the score digit, so any
drift in whitespace changes the scores. Templates are filled with ``str.format``: only the template
is parsed, so user text containing ``{`` or ``}`` is inserted verbatim.

A conversation is split into turns: each ``user`` message starts one, and its response is the text of
the ``assistant`` messages up to the next ``user`` message, joined with a newline (``tool`` outputs
are not part of the response; a turn without a reply has the response ``""``). A leading ``system``
message is not scored: the scorers were trained on user/assistant text only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from alignsmith.errors import AlignsmithError
from alignsmith.records import RecordRef, check_text, type_name

COMPLEXITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the complexity score of the following user query. \n"
    "##Query: {instruction}  \n##Complexity: "
)
QUALITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
    "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
# The end of each prompt, after which the scorer predicts the digit.
COMPLEXITY_CUE = "##Complexity: "
QUALITY_CUE = "##Quality: "

ScoreKind = Literal["complexity", "quality"]
Context = Literal["turn", "history"]


def render_complexity(instruction: str) -> str:
    return COMPLEXITY_TEMPLATE.format(instruction=instruction)


def render_quality(instruction: str, response: str) -> str:
    return QUALITY_TEMPLATE.format(instruction=instruction, output=response)


def render_history(turns: Sequence[Turn]) -> str:
    """Earlier turns as plain text, prepended to the instruction when scoring with ``context="history"``.

    Each turn reads ``"User: {instruction}\\nAssistant: {response}\\n"``; the current instruction
    follows directly, so the scorer sees one query that carries its conversation.
    """
    return "".join(f"User: {t.instruction}\nAssistant: {t.response}\n" for t in turns)


@dataclass(frozen=True)
class Turn:
    """One (user, assistant) exchange and where its texts live in the record, for error messages."""

    instruction: str
    response: str
    instruction_field: str
    response_field: str | None  # None when the user message got no reply


def record_ref(record: Mapping[str, Any], row_index: int | None = None) -> RecordRef:
    """How errors name ``record``: by its ``id`` when that is a string, and by its row."""
    record_id = record.get("id")
    return RecordRef(record_id if isinstance(record_id, str) else None, row_index)


def conversation_turns(record: Mapping[str, Any], row_index: int | None = None) -> list[Turn]:
    """Split a canonical conversation record into its turns (see the module docstring)."""
    ref = record_ref(record, row_index)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        reason = "missing" if messages is None else f"expected a non-empty list, got {type_name(messages)}"
        raise ref.error("messages", reason, "missing_field" if messages is None else "wrong_type")
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ref.error(f"messages[{i}]", f"expected an object, got {type_name(message)}", "wrong_type")
        role = message.get("role")
        if role == "user":
            turns.append({"instruction": i, "responses": []})
        elif role == "assistant":
            if not turns:
                raise ref.error(f"messages[{i}].role", "an assistant message before any user message", "role_order")
            turns[-1]["responses"].append(i)
        elif role not in ("system", "tool"):
            raise ref.error(f"messages[{i}].role", f"unknown role {role!r}", "unknown_role")
    if not turns:
        raise ref.error("messages", "no user message to score", "missing_field")
    return [_turn(messages, t["instruction"], t["responses"], ref) for t in turns]


def _turn(messages: list[Mapping[str, Any]], user: int, replies: list[int], ref: RecordRef) -> Turn:
    instruction_field = f"messages[{user}].content"
    instruction = check_text(messages[user].get("content"), ref, instruction_field)
    responses = [check_text(messages[i].get("content"), ref, f"messages[{i}].content") for i in replies]
    response_field = None
    if replies:
        response_field = f"messages[{replies[0]}].content"
        if len(replies) > 1:
            response_field = f"messages[{replies[0]}..{replies[-1]}].content"
    return Turn(instruction, "\n".join(responses), instruction_field, response_field)


# --- fitting a prompt into the scorer's context -------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A piece of user text in a template, and which end of it survives truncation."""

    text: str
    keep: Literal["head", "tail"]


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: np.ndarray  # int32: a whole pool's prompts are held in memory at once
    truncated: bool


class PromptTooLongError(AlignsmithError):
    """A prompt longer than the scorer's context, with truncation turned off or impossible."""


def encode_within(
    tokenizer: PreTrainedTokenizerBase,
    render: Callable[..., str],
    slots: Sequence[Slot],
    max_length: int,
    truncate: bool = True,
) -> EncodedPrompt:
    """Tokenize ``render(*texts)`` as ``tokenizer.encode`` does, cutting slot texts until it fits.

    The template around the slots (including the score cue at the end) is never cut. Slots are cut
    in the order given, each down to nothing before the next is touched, at token boundaries of the
    slot text tokenized on its own; the cut is made on the original string (via offsets), so what
    remains is an exact prefix (``keep="head"``) or suffix (``keep="tail"``) of the user's text.
    Because tokens can merge across a slot boundary, the result is re-encoded and cut again until
    it fits.
    """
    texts = [slot.text for slot in slots]
    ids = tokenizer.encode(render(*texts), verbose=False)
    if len(ids) <= max_length:
        return EncodedPrompt(np.asarray(ids, dtype=np.int32), False)
    if not truncate:
        raise PromptTooLongError(f"prompt is {len(ids)} tokens, over max_length {max_length}")
    while len(ids) > max_length:
        excess, before = len(ids) - max_length, list(texts)
        for i, slot in enumerate(slots):
            texts[i], removed = _cut(tokenizer, texts[i], slot.keep, excess)
            excess -= removed
            if excess <= 0:
                break
        if texts == before:  # nothing left to cut
            raise PromptTooLongError(
                f"prompt is {len(ids)} tokens even without user text, over max_length {max_length}"
            )
        ids = tokenizer.encode(render(*texts), verbose=False)
    return EncodedPrompt(np.asarray(ids, dtype=np.int32), True)


def _cut(tokenizer: PreTrainedTokenizerBase, text: str, keep: Literal["head", "tail"], n: int) -> tuple[str, int]:
    """Remove up to ``n`` tokens from the far end of ``text``; returns the rest and how many went."""
    if not text or n <= 0:
        return text, 0
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    removed = min(n, len(offsets))
    kept = len(offsets) - removed
    if kept == 0:
        return "", removed
    # Cut at the first removed token's start (or after the last removed token's end), not at the
    # kept neighbour's edge: byte-level pieces of one character share its offsets, and cutting at
    # the neighbour's edge would leave that character, and the string, unchanged.
    if keep == "head":
        return text[: offsets[kept][0]], removed
    return text[offsets[removed - 1][1] :], removed


def encode_turn(
    tokenizer: PreTrainedTokenizerBase,
    kind: ScoreKind,
    turn: Turn,
    history: str,
    max_length: int,
    truncate: bool = True,
) -> EncodedPrompt:
    """Encode one turn's scorer prompt within ``max_length`` tokens.

    Truncation order: the response (quality only, keeping its beginning), then the history (keeping
    its most recent end), then the instruction (keeping its beginning).
    """
    context = Slot(history, "tail")
    instruction = Slot(turn.instruction, "head")
    if kind == "complexity":
        return encode_within(
            tokenizer, lambda ctx, ins: render_complexity(ctx + ins), [context, instruction], max_length, truncate
        )
    return encode_within(
        tokenizer,
        lambda out, ctx, ins: render_quality(ctx + ins, out),
        [Slot(turn.response, "head"), context, instruction],
        max_length,
        truncate,
    )

