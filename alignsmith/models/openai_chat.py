"""An OpenAI-compatible endpoint (vLLM, SGLang, ``transformers serve``, a hosted API) as a ChatModel.

Conversations go to ``POST {base_url}/chat/completions``. Raw prompts (:meth:`EndpointChatModel.complete`,
the counterpart of the in-process models' ``complete``: no chat template) go to ``POST
{base_url}/completions`` with ``prompt``; raw prompts with images have no such route in the OpenAI API,
so they go to chat completions as one user message whose content interleaves text and ``image_url``
parts (PNG data URLs) where the prompt's ``<image>`` placeholders are: the server's chat template wraps
that message, so serve such a model with the template it was trained with.

Requests go out ``batch_size`` at a time on threads (the server batches them itself). Connection
errors, timeouts, 429 and 5xx are retried with exponential backoff (honouring ``Retry-After``); any
other failure is an :class:`EndpointError` naming the URL, the model and what the server said.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from alignsmith.errors import AlignsmithError
from alignsmith.models.generation import Completion, DecodingSettings, Message, per_row
from alignsmith.records import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from PIL import Image

Request = TypeVar("Request")

MAX_RETRY_DELAY = 60.0  # seconds; also caps a server's Retry-After
EXCERPT = 500  # characters of a failing response body quoted in the error


class EndpointError(AlignsmithError):
    """An endpoint that refused, failed or answered something unusable; names the URL and model."""


class EndpointChatModel:
    """A :class:`~alignsmith.models.generation.ChatModel` over ``POST {base_url}/chat/completions`` (and
    ``/completions`` for raw prompts)."""

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
        self.completions_url = f"{self.base_url}/completions"
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
        return self._send([[dict(m) for m in conversation] for conversation in conversations], settings,
                          self._chat, "conversation")

    def complete(
        self,
        prompts: Sequence[str],
        settings: DecodingSettings | Sequence[DecodingSettings],
        images: Sequence[Sequence[Image.Image]] | None = None,
    ) -> list[Completion]:
        """Continue raw text prompts, no chat template (``POST /completions``: the server's tokenizer adds its
        usual special tokens, BOS). With ``images`` (``images[i]``: prompt i's, in ``<image>`` order), each
        prompt is one user message of text and image parts sent to chat completions (see the module)."""
        if images is None:
            return self._send(list(prompts), settings, self._text, "prompt")
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} image lists for {len(prompts)} prompts")
        messages = [[{"role": "user", "content": image_parts(prompt, row, index)}]
                    for index, (prompt, row) in enumerate(zip(prompts, images))]
        return self._send(messages, settings, self._chat, "prompt")

    def _send(self, requests: Sequence[Request], settings: DecodingSettings | Sequence[DecodingSettings],
              one: Callable[[httpx.Client, Request, DecodingSettings], Completion], what: str) -> list[Completion]:
        """``one(client, request, settings)`` for every request, ``batch_size`` in flight; replies in order."""
        rows = per_row(settings, len(requests))
        refused = next((i for i, row in enumerate(rows) if row.no_repeat_ngram_size is not None), None)
        if refused is not None:
            raise self._error(f"{what} {refused}: no_repeat_ngram_size={rows[refused].no_repeat_ngram_size} "
                              "cannot be sent (the OpenAI API has no such field); leave it unset, or run the "
                              "model in this process")
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.batch_size)
        with httpx.Client(headers=headers, timeout=self.timeout, limits=limits) as client:
            pool = ThreadPoolExecutor(max_workers=self.batch_size, thread_name_prefix="alignsmith-endpoint")
            try:
                return list(pool.map(lambda request, row: one(client, request, row), requests, rows))
            finally:  # on a failure, requests not yet sent are dropped rather than waited for
                pool.shutdown(wait=True, cancel_futures=True)

    def _body(self, settings: DecodingSettings) -> dict[str, Any]:
        """The decoding fields both routes share."""
        return {"model": self.model, "temperature": settings.temperature, "top_p": settings.top_p,
                "max_tokens": settings.max_new_tokens, "seed": settings.seed}

    def _chat(self, client: httpx.Client, messages: list[dict[str, Any]], settings: DecodingSettings) -> Completion:
        body = {**self._body(settings), "messages": messages}
        if settings.top_logprobs > 0:
            body |= {"logprobs": True, "top_logprobs": settings.top_logprobs}
        return self._parse(self._post(client, self.url, body), lambda choice: Completion(
            text=choice["message"].get("content") or "", finish_reason=choice["finish_reason"],
            prompt_tokens=0, completion_tokens=0,
            first_token_logprobs=self._first_token_logprobs(choice) if settings.top_logprobs > 0 else None))

    def _text(self, client: httpx.Client, prompt: str, settings: DecodingSettings) -> Completion:
        if settings.top_logprobs > 0:
            raise self._error("top_logprobs: raw completions return no first-token log-probabilities here",
                              self.completions_url)
        data = self._post(client, self.completions_url, {**self._body(settings), "prompt": prompt})
        return self._parse(data, lambda choice: Completion(text=choice["text"] or "",
                                                           finish_reason=choice["finish_reason"],
                                                           prompt_tokens=0, completion_tokens=0),
                           self.completions_url)

    def _parse(self, data: dict[str, Any], reply: Callable[[dict[str, Any]], Completion],
               url: str | None = None) -> Completion:
        """``reply(first choice)`` with the usage's token counts; a response of another shape is an error."""
        try:
            usage = data.get("usage") or {}  # a server that reports no usage counts 0 tokens
            return replace(reply(data["choices"][0]), prompt_tokens=int(usage.get("prompt_tokens", 0)),
                           completion_tokens=int(usage.get("completion_tokens", 0)))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            raise self._error(f"unexpected response ({type(err).__name__}: {err}): {str(data)[:EXCERPT]}",
                              url) from None

    def _first_token_logprobs(self, choice: dict[str, Any]) -> dict[str, float]:
        content = (choice.get("logprobs") or {}).get("content")
        if not content:
            raise self._error("log-probabilities were asked for (top_logprobs) but the server returned none; "
                              "it may not support them (transformers serve ignores them)")
        return {entry["token"]: float(entry["logprob"]) for entry in content[0]["top_logprobs"]}

    def _post(self, client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """The response JSON, retrying what may pass (connection errors, timeouts, 429, 5xx)."""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = client.post(url, json=body)
            except httpx.TransportError as err:
                failure = f"{type(err).__name__}: {err}"
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        raise self._error(f"HTTP {response.status_code} with a body that is not JSON: "
                                          f"{response.text[:EXCERPT]!r}", url) from None
                failure = f"HTTP {response.status_code}: {response.text[:EXCERPT]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise self._error(failure, url)
                retry_after = _seconds(response.headers.get("retry-after"))
            if attempt < self.max_retries:
                time.sleep(min(max(self.backoff * 2**attempt, retry_after or 0.0), MAX_RETRY_DELAY))
        raise self._error(f"failed after {self.max_retries + 1} attempts; last: {failure}", url)

    def _error(self, what: str, url: str | None = None) -> EndpointError:
        return EndpointError(f"endpoint {url or self.url} (model {self.model!r}): {what}")


def image_parts(prompt: str, images: Sequence[Image.Image], index: int = 0) -> list[dict[str, Any]]:
    """A raw prompt as OpenAI content parts: its text split at the ``<image>`` placeholders (empty text left
    out), each placeholder an ``image_url`` part holding that image as a PNG data URL."""
    texts = prompt.split(IMAGE_PLACEHOLDER)
    if len(texts) - 1 != len(images):
        raise EndpointError(f"prompt {index}: {len(texts) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but "
                            f"{len(images)} image(s)")
    parts: list[dict[str, Any]] = [{"type": "text", "text": texts[0]}] if texts[0] else []
    for image, text in zip(images, texts[1:]):
        parts.append({"type": "image_url", "image_url": {"url": png_data_url(image)}})
        if text:
            parts.append({"type": "text", "text": text})
    return parts


def png_data_url(image: Image.Image) -> str:
    """``image`` losslessly, as a ``data:image/png;base64,...`` URL (what OpenAI-compatible servers accept inline)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` given in seconds (an HTTP date is ignored: the backoff applies)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
