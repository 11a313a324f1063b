"""Chat generation behind one interface, whether the model runs in this process or behind an HTTP server.

Answer generation, LLM judges and rewriters all turn conversations into replies. They take any
:class:`ChatModel`: a Hugging Face model pinned to a commit and run here with transformers, or an
OpenAI-compatible chat endpoint (vLLM, SGLang, ``transformers serve``, a hosted API). The decoding
settings travel with every request and every reply, so a published row says how it was produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from alignsmith.recipes import RecipeError, help_text

Message = Mapping[str, Any]  # {"role": ..., "content": ...}, as in a chat template's `messages`


@dataclass(frozen=True)
class DecodingSettings:
    """How one reply is decoded; ``temperature == 0`` is greedy decoding."""

    temperature: float = 0.0
    max_new_tokens: int = 1024
    top_p: float = 1.0
    seed: int = 0  # sampling seed; with several rows, each row's generator is seeded from it and the row
    top_logprobs: int = 0  # return the most likely first tokens with their log-probabilities (judges' parsers)
    # forbid repeating n-grams of this size (transformers' ``no_repeat_ngram_size``); in-process models only:
    # the OpenAI API has no such field, so an endpoint model refuses it
    no_repeat_ngram_size: int | None = None

    def __post_init__(self) -> None:
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 1:
            raise ValueError(f"no_repeat_ngram_size must be at least 1 (or None), got {self.no_repeat_ngram_size}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded on rows and hashed into judge cache keys; an unset ``no_repeat_ngram_size``
        is left out, so records and cache keys made before it existed stay the same."""
        found = asdict(self)
        if self.no_repeat_ngram_size is None:
            del found["no_repeat_ngram_size"]
        return found


@dataclass(frozen=True)
class Completion:
    """One reply and what it cost."""

    text: str
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)
    prompt_tokens: int
    completion_tokens: int
    first_token_logprobs: dict[str, float] | None = None  # token text -> log-probability, when asked for


class ChatModel(Protocol):
    """Anything that answers conversations: see the module docstring."""

    def identity(self) -> dict[str, str]:
        """What produced the replies, for lineage and judge caches: a Hub repo and commit sha, or an
        endpoint URL and model name."""
        ...

    def generate(
        self, conversations: Sequence[Sequence[Message]], settings: DecodingSettings | Sequence[DecodingSettings]
    ) -> list[Completion]:
        """One reply per conversation, in order; ``settings`` is shared or given per conversation."""
        ...


def reads_images(model: ChatModel) -> bool:
    """Whether ``model.generate`` also takes each conversation's images (``images=``, PIL images in
    ``<image>`` placeholder order), as :class:`~alignsmith.models.vision_chat.HFVisionChatModel` does."""
    return getattr(model, "reads_images", False) is True


def per_row(settings: DecodingSettings | Sequence[DecodingSettings], count: int) -> list[DecodingSettings]:
    """``settings`` as one entry per conversation (a single one is shared)."""
    if isinstance(settings, DecodingSettings):
        return [settings] * count
    rows = list(settings)
    if len(rows) != count:
        raise ValueError(f"{len(rows)} decoding settings for {count} conversations")
    return rows


@dataclass(kw_only=True)
class ChatModelSpec:
    """A recipe's chat model: a Hub model (or local folder) run here, or an OpenAI-compatible endpoint."""

    model: str = help_text(
        "Hub repo id or local folder of a chat model (a PEFT adapter is loaded on its base); or, with "
        "`endpoint`, the model name the server knows."
    )
    revision: str | None = help_text("Branch, tag or sha of `model` (Hub models only); pinned to a sha.", default=None)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_text(
        "Weights dtype ('auto': bf16 on GPU, fp32 on CPU); in-process models only.", default="auto"
    )
    batch_size: int = help_text("Conversations per generate call (in-process) or requests in flight (endpoint).",
                                default=8, minimum=1)
    endpoint: str | None = help_text(
        "Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1: vLLM, SGLang, "
        "`transformers serve`); unset: run `model` in this process.",
        default=None,
    )
    api_key_env: str = help_text("Environment variable holding the endpoint's API key (may be unset).",
                                 default="OPENAI_API_KEY")

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            if not self.endpoint.startswith(("http://", "https://")):
                raise RecipeError(f"endpoint: expected an http(s) URL, got {self.endpoint!r}")
            if self.revision is not None:
                raise RecipeError("revision: applies to Hub models run in this process, not to an endpoint")
