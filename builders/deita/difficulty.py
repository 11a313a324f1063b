"""Perplexity and instruction-following difficulty (IFD) of each record's first turn.

For the first (instruction, response) turn of a record and a causal LM:

* ``perplexity`` = PPL(response | instruction): exp of the mean negative log-likelihood of the
  response tokens, given the instruction as a prompt. The prompt is the model's chat template
  applied to the single user message with ``add_generation_prompt=True`` when the tokenizer has a
  chat template, else the instruction followed by a newline (with the tokenizer's usual special
  tokens, e.g. BOS).
* ``response_perplexity`` = PPL(response): the same response tokens given only a document start
  (the BOS token, or EOS for tokenizers without BOS, as GPT-style models separate documents).
* ``ifd`` = perplexity / response_perplexity (Li et al. 2023, "From Quantity to Quality"): how much
  the instruction fails to help predict the response; above 1 means it does not help at all.

The response is tokenized on its own, so both perplexities cover exactly the same tokens. When the
prompt and response do not fit in ``max_length`` the response keeps its beginning (flagged as
truncated); an instruction that leaves no room for any response token cannot be scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignsmith.lineage import ArtifactRef
from alignsmith.models.batching import context_length, length_sorted_batches, pad_id, right_pad
from alignsmith.models.loading import ModelLoadError, PinnedModel, load_pretrained, pinned
from alignsmith.recipes import check_choice
from alignsmith.records import RecordError, RecordRef

from .prompts import conversation_turns, record_ref
from .scoring import OnError


@dataclass
class RecordDifficulty:
    """One record's first-turn perplexities, or why it could not be scored (then they are NaN)."""

    id: str | None
    perplexity: float = float("nan")
    response_perplexity: float = float("nan")
    ifd: float = float("nan")
    truncated: bool = False
    rejection: RecordError | None = None


class DifficultyScorer(PinnedModel):
    """Perplexity and IFD with one causal LM (see the module docstring for the definitions)."""

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        batch_size: int = 8,
        max_length: int | None = None,
    ) -> None:
        self.model_ref = pinned(model, revision, "difficulty_model")
        self.model, self.tokenizer = load_pretrained(self.model_ref, dtype=dtype, device=device)
        self.batch_size = batch_size
        self.max_length = max_length or context_length(self.model, self.tokenizer)
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        if start is None:
            raise ModelLoadError(f"{self.model_ref.repo_id!r} has neither a BOS nor an EOS token to start a document with")
        self.document_start = np.array([start], dtype=np.int32)

    def prompt_ids(self, instruction: str) -> list[int]:
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
            )
            return self.tokenizer.encode(text, add_special_tokens=False, verbose=False)
        return self.tokenizer.encode(instruction + "\n", verbose=False)

    def score_records(
        self, records: Sequence[Mapping[str, Any]], *, on_error: OnError = "error"
    ) -> list[RecordDifficulty]:
        """First-turn perplexities and IFD per record, in input order.

        A record without a usable first turn (no reply, empty text, an instruction that fills the
        context, non-finite perplexity) raises :class:`RecordError`, or with ``on_error="reject"``
        comes back with ``rejection`` set.
        """
        check_choice("on_error", on_error, ("error", "reject"))
        results: list[RecordDifficulty] = []
        pairs: list[tuple[int, np.ndarray, np.ndarray, str]] = []  # (record, prompt, response, response field)
        for index, record in enumerate(records):
            ref = record_ref(record, index)
            results.append(RecordDifficulty(ref.record_id))
            try:
                prompt, response, field, results[-1].truncated = self._encode(record, index, ref)
            except RecordError as err:
                if on_error == "error":
                    raise
                results[-1].rejection = err
                continue
            pairs.append((index, prompt, response, field))

        conditioned = self._perplexities([(p, r) for _, p, r, _ in pairs])
        unconditioned = self._perplexities([(self.document_start, r) for _, _, r, _ in pairs])
        for (index, _, _, field), ppl, ppl_response in zip(pairs, conditioned, unconditioned, strict=True):
            result = results[index]
            if not (np.isfinite(ppl) and np.isfinite(ppl_response)):
                error = RecordRef(result.id, index).error(field, "the model's perplexity is not finite", "unscorable")
                if on_error == "error":
                    raise error
                result.rejection, result.truncated = error, False
                continue
            result.perplexity, result.response_perplexity = float(ppl), float(ppl_response)
            result.ifd = float(ppl / ppl_response)
        return results

    def _encode(
        self, record: Mapping[str, Any], index: int, ref: RecordRef
    ) -> tuple[np.ndarray, np.ndarray, str, bool]:
        turn = conversation_turns(record, index)[0]
        if turn.response_field is None:
            raise ref.error(turn.instruction_field, "the first user message has no assistant reply", "no_assistant")
        prompt = np.asarray(self.prompt_ids(turn.instruction), dtype=np.int32)
        response = np.asarray(self.tokenizer.encode(turn.response, add_special_tokens=False, verbose=False), dtype=np.int32)
        room = self.max_length - max(len(prompt), len(self.document_start))
        if room < 1:
            raise ref.error(
                turn.instruction_field,
                f"the prompt is {len(prompt)} tokens, leaving no room for the response within max_length {self.max_length}",
                "too_long",
            )
        return prompt, response[:room], turn.response_field, len(response) > room

    @torch.inference_mode()
    def _perplexities(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """exp(mean NLL of the response tokens given the context), per (context, response) pair."""
        out = np.full(len(pairs), np.nan)
        pad = pad_id(self.tokenizer)
        for batch in length_sorted_batches([len(c) + len(r) for c, r in pairs], self.batch_size):
            input_ids, totals = right_pad([np.concatenate(pairs[i]) for i in batch], pad, self.model.device)
            starts = torch.as_tensor([len(pairs[i][0]) for i in batch], device=input_ids.device)
            lengths = totals - starts  # response tokens per row
            steps = torch.arange(int(lengths.max()), device=input_ids.device)
            in_response = steps < lengths[:, None]
            # position p predicts token p+1: logits from the last context token to the second-to-last token
            predict_at = torch.minimum(starts[:, None] - 1 + steps, (totals - 2)[:, None].clamp(min=0))
            logits = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=predict_at).logits
            targets = input_ids.gather(1, predict_at + 1)
            nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
            mean_nll = torch.where(in_response, nll, 0.0).sum(-1) / lengths
            out[batch] = torch.exp(mean_nll).double().cpu().numpy()
        return out
