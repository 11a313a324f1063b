"""Deita complexity and quality scores, in length-sorted batches of single forward passes.

A turn's score is ``Σ_k k · softmax(z)_k`` where ``z`` are the scorer's next-token logits of the
tokens "1".."6" right after the prompt. The reference implementation reads the same logits from
``generate(max_new_tokens=2).scores[0]``, one prompt per call; one forward pass per batch gives the
same numbers (greedy ``generate`` applies no logits processor to the first position) without
decoding anything.

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef
from alignsmith.models.batching import context_length, length_sorted_batches, pad_id, right_pad
from alignsmith.models.loading import PinnedModel, in_memory_ref, load_pretrained, pinned
from alignsmith.recipes import check_choice
from alignsmith.records import RecordError, RecordRef, check_text

from .prompts import (
    COMPLEXITY_CUE,
    QUALITY_CUE,
    Context,
    EncodedPrompt,
    PromptTooLongError,
    ScoreKind,
    Turn,
    conversation_turns,
    encode_turn,
    record_ref,
    render_history,
)
from .recipe import SCORE_DIGITS

OnError = Literal["error", "reject"]

# --- score maths -------------------------------------------------------------------------------------


class DigitTokenError(AlignsmithError):
    """The tokenizer cannot spell a score digit as one token after the prompt."""


def digit_token_ids(tokenizer: PreTrainedTokenizerBase, cue: str = COMPLEXITY_CUE) -> list[int]:
    """Ids of the tokens that continue a prompt ending in ``cue`` with "1".."6".

    Each id is the one token that ``encode(cue + digit)`` adds after ``encode(cue)``: the token a
    scorer trained on ``prompt + digit`` learned to predict there. LLaMA's tokenizer encodes the
    cue's trailing space as a separate "▁" (29871) and never merges digits with it (``"... is "``
    ends in 29871 and ``"... is 1."`` continues with 29896), so this yields the bare-digit pieces
    29896, 29906, 29941, 29946, 29945, 29953 that the reference hard-codes for its LLaMA scorers.
    Tokenizers that fold the space into the digit ("Ġ1") fail here with a clear error; pass explicit
    ids to the scorer if that is really what the model was trained on.
    """
    prefix = tokenizer.encode(cue, add_special_tokens=False)
    ids: list[int] = []
    for digit in SCORE_DIGITS:
        full = tokenizer.encode(cue + digit, add_special_tokens=False)
        if full[: len(prefix)] != prefix or len(full) != len(prefix) + 1:
            pieces = tokenizer.convert_ids_to_tokens(full[len(_common_prefix(prefix, full)) :])
            raise DigitTokenError(
                f"the digit {digit!r} after {cue!r} is not a single token of its own (it encodes as "
                f"{pieces}); pass digit_token_ids explicitly"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise DigitTokenError(f"the digits 1-6 share token ids {ids}")
    return ids


def _common_prefix(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def expected_score(digit_logits: torch.Tensor) -> torch.Tensor:
    """E[k] under softmax over the six digit logits (last dim); NaN where the logits are unusable."""
    probs = torch.softmax(digit_logits.float(), dim=-1)
    values = torch.arange(1, len(SCORE_DIGITS) + 1, dtype=probs.dtype, device=probs.device)
    return (probs * values).sum(-1)


# --- the scorer ----------------------------------------------------------------------------------------


@dataclass
class ScoredTurns:
    scores: np.ndarray  # float64 [n], each in [1, 6]
    truncated: np.ndarray  # bool [n]: the prompt was cut to fit max_length


@dataclass
class RecordScores:
    """One record's per-turn scores, or why it could not be scored (then the lists are empty)."""

    id: str | None
    scores: list[float] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    rejection: RecordError | None = None


class DeitaScorer(PinnedModel):
    """A Deita complexity or quality scorer (e.g. ``hkust-nlp/deita-complexity-scorer``).

    ``context="turn"`` scores every turn on its own, as the reference does; ``"history"`` puts the
    earlier turns in front of the instruction (see :func:`prompts.render_history`).
    ``truncation="head"`` cuts over-long prompts to ``max_length`` (default: the model's context) as
    :func:`prompts.encode_turn` describes and flags them; ``"error"`` refuses them.
    ``digit_token_ids`` overrides the ids derived by :func:`digit_token_ids`.
    """

    def __init__(
        self,
        model: str | ArtifactRef,
        kind: ScoreKind,
        *,
        revision: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Literal["head", "error"] = "head",
        context: Context = "turn",
        digit_token_ids: Sequence[int] | None = None,
    ) -> None:
        ref = pinned(model, revision, f"{kind}_scorer")
        loaded, tokenizer = load_pretrained(ref, dtype=dtype, device=device)
        self._configure(loaded, tokenizer, ref, kind, batch_size, max_length, truncation, context, digit_token_ids)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        kind: ScoreKind,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Literal["head", "error"] = "head",
        context: Context = "turn",
        digit_token_ids: Sequence[int] | None = None,
    ) -> DeitaScorer:
        """A scorer around a model already in memory (its dtype and device are used as they are)."""
        scorer = cls.__new__(cls)
        ref = in_memory_ref(model, f"{kind}_scorer")
        scorer._configure(model.eval(), tokenizer, ref, kind, batch_size, max_length, truncation, context, digit_token_ids)
        return scorer

    def _configure(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        ref: ArtifactRef,
        kind: ScoreKind,
        batch_size: int,
        max_length: int | None,
        truncation: Literal["head", "error"],
        context: Context,
        digit_token_ids: Sequence[int] | None,
    ) -> None:
        check_choice("kind", kind, ("complexity", "quality"))
        check_choice("truncation", truncation, ("head", "error"))
        check_choice("context", context, ("turn", "history"))
        self.kind, self.truncation, self.context, self.batch_size = kind, truncation, context, batch_size
        self.model, self.tokenizer, self.model_ref = model, tokenizer, ref
        self.max_length = max_length or context_length(model, tokenizer)
        cue = COMPLEXITY_CUE if kind == "complexity" else QUALITY_CUE
        self.digit_ids = _scorer_digit_ids(tokenizer, cue, digit_token_ids)

    def score_turns(self, turns: Sequence[tuple[str, str]]) -> ScoredTurns:
        """Score (instruction, response) pairs, each on its own; raises on the first unscorable one."""
        ref = RecordRef(None)
        parsed = [
            Turn(
                check_text(instruction, ref, f"turns[{i}].instruction"),
                check_text(response, ref, f"turns[{i}].response") if self.kind == "quality" else response,
                f"turns[{i}].instruction",
                f"turns[{i}].response",
            )
            for i, (instruction, response) in enumerate(turns)
        ]
        prompts = [self._encode(ref, turn, "") for turn in parsed]
        scores = self._scores([p.input_ids for p in prompts])
        for i, score in enumerate(scores):
            if not math.isfinite(score):
                raise _unscorable(ref, parsed[i])
        return ScoredTurns(scores, np.array([p.truncated for p in prompts], dtype=bool))

    def score_records(self, records: Sequence[Mapping[str, Any]], *, on_error: OnError = "error") -> list[RecordScores]:
        """Score every turn of canonical conversation records, in input order.

        A record that cannot be scored (an empty or missing text, a prompt that does not fit with
        ``truncation="error"``, non-finite scorer logits) raises :class:`RecordError`, or with
        ``on_error="reject"`` comes back with ``rejection`` set and no scores.
        """
        check_choice("on_error", on_error, ("error", "reject"))
        results: list[RecordScores] = []
        rows: list[tuple[int, int]] = []  # (record, turn) of every prompt
        prompts: list[np.ndarray] = []
        turns_of: list[list[Turn]] = []
        for index, record in enumerate(records):
            ref = record_ref(record, index)
            results.append(RecordScores(ref.record_id))
            try:
                turns = conversation_turns(record, index)
                encoded = [self._encode(ref, t, self._history(turns, n)) for n, t in enumerate(turns)]
            except RecordError as err:
                if on_error == "error":
                    raise
                results[-1].rejection, turns, encoded = err, [], []
            turns_of.append(turns)
            results[-1].truncated = [e.truncated for e in encoded]
            rows.extend((index, n) for n in range(len(encoded)))
            prompts.extend(e.input_ids for e in encoded)

        scores = self._scores(prompts)
        for (index, n), score in zip(rows, scores, strict=True):
            result = results[index]
            if result.rejection is not None:
                continue
            if not math.isfinite(score):
                error = _unscorable(RecordRef(result.id, index), turns_of[index][n])
                if on_error == "error":
                    raise error
                result.rejection, result.scores, result.truncated = error, [], []
                continue
            result.scores.append(float(score))
        return results

    def _history(self, turns: list[Turn], n: int) -> str:
        return render_history(turns[:n]) if self.context == "history" else ""

    def _encode(self, ref: RecordRef, turn: Turn, history: str) -> EncodedPrompt:
        if self.kind == "quality" and turn.response_field is None:
            raise ref.error(turn.instruction_field, "this user message has no assistant reply to judge", "no_assistant")
        try:
            return encode_turn(self.tokenizer, self.kind, turn, history, self.max_length, self.truncation == "head")
        except PromptTooLongError as err:
            raise ref.error(turn.instruction_field, f"{self.kind} {err}", "too_long") from None

    @torch.inference_mode()
    def _scores(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Expected scores in input order; NaN where the scorer's digit logits are not finite."""
        scores = np.full(len(prompts), np.nan)
        digits = torch.as_tensor(self.digit_ids, device=self.model.device)
        pad = pad_id(self.tokenizer)
        for batch in length_sorted_batches([len(p) for p in prompts], self.batch_size):
            input_ids, lengths = right_pad([prompts[i] for i in batch], pad, self.model.device)
            last = (lengths - 1)[:, None]  # logits only where each row's prompt ends
            logits = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=last).logits[:, 0, :]
            scores[batch] = expected_score(logits.index_select(-1, digits)).double().cpu().numpy()
        return scores


def _scorer_digit_ids(tokenizer: PreTrainedTokenizerBase, cue: str, override: Sequence[int] | None) -> list[int]:
    if override is None:
        return digit_token_ids(tokenizer, cue)
    ids = [int(i) for i in override]
    if len(ids) != len(SCORE_DIGITS) or len(set(ids)) != len(ids) or not all(0 <= i < len(tokenizer) for i in ids):
        raise ValueError(f"digit_token_ids must be 6 distinct ids below the vocabulary size {len(tokenizer)}, got {ids}")
    return ids


def _unscorable(ref: RecordRef, turn: Turn) -> RecordError:
    return ref.error(turn.instruction_field, "the scorer's logits for the digits 1-6 are not finite", "unscorable")
