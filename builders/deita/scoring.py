"""Deita complexity and quality scores, in length-sorted batches of single forward passes.

A turn's score is ``Σ_k k · softmax(z)_k`` where ``z`` are the scorer's next-token logits of the
tokens "1".."6" right after the prompt. The reference implementation reads the same logits from
``generate(max_new_tokens=2).scores[0]``, one prompt per call; one forward pass per batch gives the
same numbers (greedy ``generate`` applies no logits processor to the first position) without
decoding anything.

Also here: loading a model pinned to a commit, and the padded, length-sorted batching that the
embedding and difficulty stages share with the scorers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignsmith.records import RecordError, RecordRef, check_text

from .prompts import (
    COMPLEXITY_CUE,
    QUALITY_CUE,
    Context,
    EncodedPrompt,
    Kind,
    PromptTooLongError,
    Turn,
    conversation_turns,
    encode_turn,
    record_ref,
    render_history,
)

DIGITS = "123456"
OnError = Literal["error", "reject"]

# --- models: pinning, loading, batching -----------------------------------------------------------


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be found or loaded."""


@dataclass(frozen=True)
class ModelRef:
    """The model a stage ran, as lineage records it: ``sha`` is the Hub commit (None for a local folder)."""

    name: str
    revision: str | None = None
    sha: str | None = None


def pin_model(model_id_or_path: str, revision: str | None = None) -> ModelRef:
    """Resolve a Hub model reference to its commit, so loading by that sha gives exactly these weights."""
    if os.path.isdir(model_id_or_path):
        return ModelRef(model_id_or_path, revision, None)
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        sha = HfApi().model_info(model_id_or_path, revision=revision).sha
    except (HfHubHTTPError, httpx.HTTPError, ValueError, OSError) as err:
        where = f"{model_id_or_path}@{revision}" if revision else model_id_or_path
        raise ModelLoadError(f"model {where!r} is neither a local folder nor reachable on the Hub: {err}") from None
    return ModelRef(model_id_or_path, revision, sha)


class PinnedModel:
    """What every Deita model stage exposes about its weights: the model it runs, pinned to a commit."""

    model_ref: ModelRef

    @property
    def model_sha(self) -> str | None:
        """The Hub commit the weights were loaded at (None for a local folder or a model handed in)."""
        return self.model_ref.sha

    @property
    def model_revision(self) -> str | None:
        """The branch, tag or sha that was asked for."""
        return self.model_ref.revision


def resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` is bfloat16 on CUDA and float32 elsewhere (CPU bfloat16 matmuls are slow and lossy)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return resolved


def load_pretrained(
    ref: ModelRef,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    auto_class: type = AutoModelForCausalLM,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model in eval mode on ``device`` and its tokenizer, by commit sha when there is one."""
    target = resolve_device(device)
    weights_dtype = resolve_dtype(dtype, target)
    revision = ref.sha or ref.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.name, revision=revision)
        model = auto_class.from_pretrained(ref.name, revision=revision, dtype=weights_dtype, device_map=str(target))
    except (OSError, ValueError) as err:  # transformers raises ValueError for a missing tokenizer or an unknown config
        raise ModelLoadError(f"cannot load model {ref.name!r} (revision {revision}): {err}") from None
    return model.eval(), tokenizer


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the model was built for: its position table, else the tokenizer's limit."""
    config = model.config.get_text_config()
    limit = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    if not limit or limit > 1_000_000:  # tokenizers without a limit report a huge sentinel
        raise ValueError(f"{config.name_or_path!r} declares no context length; pass max_length explicitly")
    return int(limit)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, longest first (so memory errors show early)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding is never attended to (see :func:`right_pad`); a real pad (or EOS) keeps inputs readable."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def right_pad(sequences: Sequence[Sequence[int] | np.ndarray], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and each row's length, to run with NO attention mask.

    In a causal LM a token only attends to earlier positions, so padding placed after a row's last
    real token never reaches it: every real position computes exactly what it would unpadded. With
    no mask, attention takes its fused causal path (flash/memory-efficient kernels on GPU) instead
    of materialising a padding mask, which is what makes batching pay off.
    """
    lengths = torch.as_tensor([len(s) for s in sequences], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ValueError("cannot run the model on an empty sequence")
    input_ids = torch.full((len(sequences), int(lengths.max())), pad, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return input_ids.to(device), lengths.to(device)


# --- score maths -------------------------------------------------------------------------------------


class DigitTokenError(ValueError):
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
    for digit in DIGITS:
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
    values = torch.arange(1, len(DIGITS) + 1, dtype=probs.dtype, device=probs.device)
    return (probs * values).sum(-1)


# --- the scorer ----------------------------------------------------------------------------------------


@dataclass
class TurnScores:
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
        model_id_or_path: str,
        kind: Kind,
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
        ref = pin_model(model_id_or_path, revision)
        model, tokenizer = load_pretrained(ref, dtype=dtype, device=device)
        self._configure(model, tokenizer, ref, kind, batch_size, max_length, truncation, context, digit_token_ids)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        kind: Kind,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Literal["head", "error"] = "head",
        context: Context = "turn",
        digit_token_ids: Sequence[int] | None = None,
    ) -> DeitaScorer:
        """A scorer around a model already in memory (its dtype and device are used as they are)."""
        scorer = cls.__new__(cls)
        ref = ModelRef(model.config.name_or_path)
        scorer._configure(model.eval(), tokenizer, ref, kind, batch_size, max_length, truncation, context, digit_token_ids)
        return scorer

    def _configure(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        ref: ModelRef,
        kind: Kind,
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

    def score_turns(self, turns: Sequence[tuple[str, str]]) -> TurnScores:
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
        return TurnScores(scores, np.array([p.truncated for p in prompts], dtype=bool))

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
    if len(ids) != len(DIGITS) or len(set(ids)) != len(ids) or not all(0 <= i < len(tokenizer) for i in ids):
        raise ValueError(f"digit_token_ids must be 6 distinct ids below the vocabulary size {len(tokenizer)}, got {ids}")
    return ids


def _unscorable(ref: RecordRef, turn: Turn) -> RecordError:
    return ref.error(turn.instruction_field, "the scorer's logits for the digits 1-6 are not finite", "unscorable")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Options arrive from YAML recipes as plain strings, so they are checked at run time."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
