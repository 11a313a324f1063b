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


def endpoint_field(many: bool = False) -> Any:
    """A recipe's ``endpoint`` field: one base URL or (``many``) a list, one per task that runs rows."""
    listed = (" Or a list of them: the task that runs rows uses endpoints[task % len(endpoints)], so each "
              "task (or GPU node) has its own server.") if many else ""
    return help_text(
        "Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1: vLLM, SGLang, "
        f"`transformers serve`) serving `model`; unset: run `model` in this process.{listed}",
        default=None,
    )


def api_key_field() -> Any:
    return help_text("Environment variable holding the endpoint's API key (may be unset).", default="OPENAI_API_KEY")


def endpoint_urls(endpoint: str | Sequence[str] | None) -> list[str]:
    """A recipe's ``endpoint`` (a URL or a list) as a list: empty when the model runs in this process."""
    if endpoint is None:
        return []
    return [endpoint] if isinstance(endpoint, str) else list(endpoint)


def check_endpoint(endpoint: str | Sequence[str] | None, revision: str | None, dtype: str) -> None:
    """Refuse, at load, an endpoint that is not an http(s) URL, an empty list, and the fields that only apply to
    a model run in this process (an endpoint's server picked its weights and dtype)."""
    if endpoint is None:
        return
    urls = endpoint_urls(endpoint)
    if not urls:
        raise RecipeError("endpoint: expected a URL or a non-empty list of URLs, got an empty list")
    for k, url in enumerate(urls):
        if not url.startswith(("http://", "https://")):
            where = "endpoint" if isinstance(endpoint, str) else f"endpoint[{k}]"
            raise RecipeError(f"{where}: expected an http(s) URL, got {url!r}")
    if revision is not None:
        raise RecipeError("revision: applies to Hub models run in this process, not to an endpoint")
    if dtype != "auto":
        raise RecipeError(f"dtype: applies to models run in this process, not to an endpoint, got {dtype!r}")


SERVING_KEYS = ("endpoint", "api_key_env")  # where a model is served and how to reach it, not which model


def work_identity(spec: Any) -> dict[str, Any]:
    """A model spec as a work fingerprint takes it: what decides the outputs, not the server's address (a
    rerun on other nodes of the same cluster reaches the same served model at another URL)."""
    return {key: value for key, value in asdict(spec).items() if key not in SERVING_KEYS}


def endpoint_for_task(endpoint: str | Sequence[str], task: int) -> str:
    """The endpoint the task numbered ``task`` sends its rows to: one of a list in turn, so tasks spread over
    the servers."""
    urls = endpoint_urls(endpoint)
    return urls[task % len(urls)]


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
    endpoint: str | None = endpoint_field()
    api_key_env: str = api_key_field()

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint, self.revision, self.dtype)
