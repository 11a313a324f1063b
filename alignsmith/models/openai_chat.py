"""An OpenAI-compatible chat endpoint (vLLM, SGLang, ``transformers serve``, a hosted API) as a ChatModel.

Requests go out ``batch_size`` at a time on threads (the server batches them itself). Connection
errors, timeouts, 429 and 5xx are retried with exponential backoff (honouring ``Retry-After``); any
other failure is an :class:`EndpointError` naming the URL, the model and what the server said.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from alignsmith.errors import AlignsmithError
from alignsmith.models.generation import Completion, DecodingSettings, Message, per_row

MAX_RETRY_DELAY = 60.0  # seconds; also caps a server's Retry-After
EXCERPT = 500  # characters of a failing response body quoted in the error


class EndpointError(AlignsmithError):
    """A chat endpoint that refused, failed or answered something unusable; names the URL and model."""


class EndpointChatModel:
    """A :class:`~alignsmith.models.generation.ChatModel` over ``POST {base_url}/chat/completions``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 8,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        if batch_size < 1 or max_retries < 0:
            raise ValueError(f"batch_size must be at least 1 and max_retries at least 0: {batch_size}, {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff  # seconds before the first retry, doubled for each next one

    def identity(self) -> dict[str, str]:
        return {"kind": "endpoint", "url": self.base_url, "model": self.model}

    def generate(
        self, conversations: Sequence[Sequence[Message]], settings: DecodingSettings | Sequence[DecodingSettings]
    ) -> list[Completion]:
        rows = per_row(settings, len(conversations))
        refused = next((i for i, row in enumerate(rows) if row.no_repeat_ngram_size is not None), None)
        if refused is not None:
            raise self._error(f"conversation {refused}: no_repeat_ngram_size={rows[refused].no_repeat_ngram_size} "
                              "cannot be sent (the OpenAI chat API has no such field); leave it unset, or run the "
                              "model in this process")
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.batch_size)
        with httpx.Client(headers=headers, timeout=self.timeout, limits=limits) as client:
            pool = ThreadPoolExecutor(max_workers=self.batch_size, thread_name_prefix="alignsmith-endpoint")
            try:
                return list(pool.map(lambda conv, row: self._complete(client, conv, row), conversations, rows))
            finally:  # on a failure, requests not yet sent are dropped rather than waited for
                pool.shutdown(wait=True, cancel_futures=True)

    def _complete(
        self, client: httpx.Client, conversation: Sequence[Message], settings: DecodingSettings
    ) -> Completion:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in conversation],
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_new_tokens,
            "seed": settings.seed,
        }
        if settings.top_logprobs > 0:
            body |= {"logprobs": True, "top_logprobs": settings.top_logprobs}
        data = self._post(client, body)
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}  # a server that reports no usage counts 0 tokens
            return Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice["finish_reason"],
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                first_token_logprobs=self._first_token_logprobs(choice) if settings.top_logprobs > 0 else None,
            )
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise self._error(f"unexpected response ({type(err).__name__}: {err}): {str(data)[:EXCERPT]}") from None

    def _first_token_logprobs(self, choice: dict[str, Any]) -> dict[str, float]:
        content = (choice.get("logprobs") or {}).get("content")
        if not content:
            raise self._error("log-probabilities were asked for (top_logprobs) but the server returned none; "
                              "it may not support them (transformers serve ignores them)")
        return {entry["token"]: float(entry["logprob"]) for entry in content[0]["top_logprobs"]}

    def _post(self, client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
        """The response JSON, retrying what may pass (connection errors, timeouts, 429, 5xx)."""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = client.post(self.url, json=body)
            except httpx.TransportError as err:
                failure = f"{type(err).__name__}: {err}"
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        raise self._error(f"HTTP {response.status_code} with a body that is not JSON: "
                                          f"{response.text[:EXCERPT]!r}") from None
                failure = f"HTTP {response.status_code}: {response.text[:EXCERPT]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise self._error(failure)
                retry_after = _seconds(response.headers.get("retry-after"))
            if attempt < self.max_retries:
                time.sleep(min(max(self.backoff * 2**attempt, retry_after or 0.0), MAX_RETRY_DELAY))
        raise self._error(f"failed after {self.max_retries + 1} attempts; last: {failure}")

    def _error(self, what: str) -> EndpointError:
        return EndpointError(f"chat endpoint {self.url} (model {self.model!r}): {what}")


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` given in seconds (an HTTP date is ignored: the backoff applies)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
