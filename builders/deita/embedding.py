"""Conversation embeddings for Deita's diversity filter.

The reference embeds a whole conversation with a causal LM: the conversation is rendered with
FastChat's ``vicuna_v1.1`` template, and the embedding is the last-layer hidden state (after the
final norm) of the last real token, over at most 2048 tokens (longer inputs lose their end).
:class:`CausalLMEmbedder` does that in length-sorted batches; :class:`SentenceTransformerEmbedder`
embeds the same text with any sentence-transformers model instead.

Rendering follows ``vicuna_v1.1`` (separator style ADD_COLON_TWO) on the record's turns (see
:mod:`builders.deita.prompts`): ``SYSTEM + " "``, then per turn ``"USER: " + instruction + " "`` and,
when the turn has a reply, ``"ASSISTANT: " + response + "</s>"``. The system prompt is always
Vicuna's, as in the reference, which drops a record's own leading non-user message. ``"</s>"`` is
the template's literal string, as in the reference: it becomes the EOS token for tokenizers whose
EOS is spelled ``</s>`` (LLaMA, Mistral) and plain text for others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from alignsmith.lineage import ArtifactRef
from alignsmith.models.batching import length_sorted_batches, pad_id, right_pad
from alignsmith.models.loading import PinnedModel, in_memory_ref, load_pretrained, load_sentence_transformer, pinned

from .prompts import conversation_turns, record_ref

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_EOS = "</s>"
OutputDtype = Literal["float32", "float16"]


def render_vicuna(record: Mapping[str, Any], row_index: int | None = None) -> str:
    """The conversation as the reference embeds it (see the module docstring)."""
    text = VICUNA_SYSTEM + " "
    for turn in conversation_turns(record, row_index):
        text += f"USER: {turn.instruction} "
        if turn.response_field is not None:
            text += f"ASSISTANT: {turn.response}{VICUNA_EOS}"
    return text


def answer_text(record: Mapping[str, Any], row_index: int | None = None) -> str:
    """The assistant replies only, one per line (the reference's ``only_answer`` option)."""
    turns = conversation_turns(record, row_index)
    replies = [t.response for t in turns if t.response_field is not None]
    if not replies:
        raise record_ref(record, row_index).error("messages", "no assistant message to embed", "no_assistant")
    return "\n".join(replies)


def embedding_texts(records: Sequence[Mapping[str, Any]], only_answer: bool = False) -> list[str]:
    render = answer_text if only_answer else render_vicuna
    return [render(record, index) for index, record in enumerate(records)]


@dataclass
class Embeddings:
    """Row ``i`` of ``vectors`` embeds the record ``ids[i]``; ``truncated[i]`` says its text was cut."""

    ids: list[str]
    vectors: np.ndarray  # [n, dimension], float32 or float16, not normalised
    truncated: np.ndarray  # bool [n]


class Embedder(Protocol):
    dimension: int
    model_sha: str | None

    def embed_records(self, records: Sequence[Mapping[str, Any]]) -> Embeddings: ...


class CausalLMEmbedder(PinnedModel):
    """Last-token, last-layer embeddings from a causal LM, as the reference computes them.

    Only the decoder is loaded (no LM head): its output is the LM's ``hidden_states[-1]``.
    """

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        batch_size: int = 8,
        max_length: int = 2048,
        only_answer: bool = False,
        output_dtype: OutputDtype = "float32",
    ) -> None:
        ref = pinned(model, revision, "embedder")
        loaded, tokenizer = load_pretrained(ref, dtype=dtype, device=device, auto_class=AutoModel)
        self._configure(loaded, tokenizer, ref, batch_size, max_length, only_answer, output_dtype)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 8,
        max_length: int = 2048,
        only_answer: bool = False,
        output_dtype: OutputDtype = "float32",
    ) -> CausalLMEmbedder:
        """An embedder around a model in memory: a decoder, or a causal LM (its decoder is used)."""
        embedder = cls.__new__(cls)
        ref = in_memory_ref(model, "embedder")
        embedder._configure(model.get_decoder().eval(), tokenizer, ref, batch_size, max_length, only_answer, output_dtype)
        return embedder

    def _configure(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        ref: ArtifactRef,
        batch_size: int,
        max_length: int,
        only_answer: bool,
        output_dtype: OutputDtype,
    ) -> None:
        self.model, self.tokenizer, self.model_ref = model, tokenizer, ref
        self.batch_size, self.max_length, self.only_answer = batch_size, max_length, only_answer
        self.output_dtype = np.dtype(output_dtype)
        self.dimension = int(model.config.get_text_config().hidden_size)

    def embed_records(self, records: Sequence[Mapping[str, Any]]) -> Embeddings:
        vectors, truncated = self.embed_texts(embedding_texts(records, self.only_answer))
        return Embeddings([r["id"] for r in records], vectors, truncated)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings in input order, and which texts were cut to ``max_length`` tokens."""
        encoded = [np.asarray(self.tokenizer.encode(text, verbose=False), dtype=np.int32) for text in texts]
        truncated = np.array([len(ids) > self.max_length for ids in encoded], dtype=bool)
        for i in np.flatnonzero(truncated):  # as the tokenizer truncates: keeps the beginning and any specials
            ids = self.tokenizer.encode(texts[i], truncation=True, max_length=self.max_length)
            encoded[i] = np.asarray(ids, dtype=np.int32)
        vectors = np.empty((len(texts), self.dimension), dtype=self.output_dtype)
        pad = pad_id(self.tokenizer)
        for batch in length_sorted_batches([len(ids) for ids in encoded], self.batch_size):
            input_ids, lengths = right_pad([encoded[i] for i in batch], pad, self.model.device)
            states = self.model(input_ids=input_ids, use_cache=False).last_hidden_state
            hidden = states[torch.arange(len(batch), device=states.device), lengths - 1]
            vectors[batch] = hidden.float().cpu().numpy()
        return vectors, truncated


class SentenceTransformerEmbedder(PinnedModel):
    """The same texts embedded by a sentence-transformers model (its own pooling and truncation)."""

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 32,
        only_answer: bool = False,
        output_dtype: OutputDtype = "float32",
    ) -> None:
        self.model_ref = pinned(model, revision, "embedder")
        self.model = load_sentence_transformer(self.model_ref, device=device)
        self.batch_size, self.only_answer = batch_size, only_answer
        self.output_dtype = np.dtype(output_dtype)
        self.dimension = int(self.model.get_embedding_dimension())

    def embed_records(self, records: Sequence[Mapping[str, Any]]) -> Embeddings:
        texts = embedding_texts(records, self.only_answer)
        limit = self.model.max_seq_length
        lengths = [len(ids) for ids in self.model.tokenizer(texts, verbose=False)["input_ids"]]
        truncated = np.array([limit is not None and n > limit for n in lengths], dtype=bool)
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        return Embeddings([r["id"] for r in records], vectors.astype(self.output_dtype, copy=False), truncated)
