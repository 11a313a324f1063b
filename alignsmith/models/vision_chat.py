"""An image-text-to-text model (e.g. one tuned on Polite Flamingo data) run in this process, pinned to a commit.

It is a :class:`~alignsmith.models.generation.ChatModel` whose ``generate`` also takes each conversation's
images, referenced in its messages by alignsmith's ``<image>`` placeholder. Each message's content is split
on the placeholder into the structured parts (``{"type": "text"}``, ``{"type": "image"}``) that processors'
chat templates read, so every image is rendered inside its own turn, where the conversation puts it.

Like :class:`~alignsmith.models.hf_chat.HFChatModel`, it also continues raw prompts (:meth:`complete`,
no chat template: a Polite Flamingo rewriter's prompt), whose ``<image>`` placeholders become the
processor's image token; a model without a chat template can still complete.

Batches go through the processor, LEFT padded, so each row decodes as it would alone (greedy output does not
depend on batching); rows are grouped by identical :class:`DecodingSettings` and batched by rendered length.
Sampling seeds follow :mod:`alignsmith.models.hf_chat`: each batch seeds torch's generator from
``(settings.seed, the smallest original row index in the batch)``. A prompt that leaves no room to continue
is a :class:`~alignsmith.models.hf_chat.ContextLengthError`, raised when its batch is encoded (check
:meth:`HFVisionChatModel.prompt_tokens` first to skip such rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef, load_revision
from alignsmith.models.batching import context_length, length_sorted_batches, pad_id
from alignsmith.models.generation import Completion, DecodingSettings, Message, per_row
from alignsmith.models.hf_chat import ContextLengthError, batch_seed, generate_options, reply_of, stop_token_ids
from alignsmith.models.loading import ModelLoadError, PinnedModel, pinned, resolve_device, resolve_dtype
from alignsmith.records import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from PIL import Image

ROLE = "chat_model"


class ImageCountError(AlignsmithError):
    """A conversation (or prompt) whose ``<image>`` placeholders and images do not match."""


class HFVisionChatModel(PinnedModel):
    """A model that reads images: ``AutoModelForImageTextToText`` and ``AutoProcessor`` at a commit."""

    reads_images = True  # see alignsmith.models.generation.reads_images

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.model_ref = pinned(model, revision, ROLE)
        role = self.model_ref.role
        target = resolve_device(device)
        rev = load_revision(self.model_ref)
        try:
            self.processor = AutoProcessor.from_pretrained(self.model_ref.repo_id, revision=rev)
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.model_ref.repo_id, revision=rev, dtype=resolve_dtype(dtype, target), device_map=str(target)
            ).eval()
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{role}: cannot load {self.model_ref.repo_id!r} (revision {rev}) as an "
                                 f"image-text-to-text model: {err}") from None
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # new tokens follow every row's last real token
        self.image_token = getattr(self.processor, "image_token", None) or IMAGE_PLACEHOLDER
        self.pad = pad_id(self.tokenizer)
        self.context = context_length(self.model, self.tokenizer)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer, self.processor, content_parts)

    def identity(self) -> dict[str, str]:
        """The pinned model, by Hub id or local folder name (as :class:`HFChatModel` reports it)."""
        return {"kind": "hf", "repo_id": self.model_ref.portable().repo_id, "sha": self.model_ref.sha or ""}

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        settings: DecodingSettings | Sequence[DecodingSettings],
        images: Sequence[Sequence[Image.Image]] | None = None,
    ) -> list[Completion]:
        """One reply per conversation, in order; ``images[i]`` are conversation i's images, in placeholder order."""
        if not getattr(self.processor, "chat_template", None):  # a base model can still continue raw prompts
            raise ModelLoadError(
                f"{self.model_ref.role}: the processor of {self.model_ref.repo_id!r} (revision "
                f"{load_revision(self.model_ref)}) has no chat template; use a chat (instruction-tuned) model"
            )
        pictures = [list(row) for row in images] if images is not None else [[] for _ in conversations]
        if len(pictures) != len(conversations):
            raise ValueError(f"{len(pictures)} image lists for {len(conversations)} conversations")
        texts = [self.render(conversation, len(row), index)
                 for index, (conversation, row) in enumerate(zip(conversations, pictures))]
        # the chat template writes BOS itself
        return self._decode(texts, pictures, settings, "conversation", special_tokens=False)

    def complete(
        self,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        settings: DecodingSettings | Sequence[DecodingSettings],
    ) -> list[Completion]:
        """Continue raw text prompts, no chat template (as :meth:`HFChatModel.complete
        <alignsmith.models.hf_chat.HFChatModel.complete>`): ``images[i]`` are prompt i's images, in the order of
        its ``<image>`` placeholders. The processor adds its usual special tokens (BOS), as at inference;
        batching, padding and seeding are those of :meth:`generate`. A prompt that leaves no room to continue
        is a :class:`~alignsmith.models.hf_chat.ContextLengthError` (see :meth:`prompt_tokens`)."""
        pictures = [list(row) for row in images]
        if len(pictures) != len(prompts):
            raise ValueError(f"{len(pictures)} image lists for {len(prompts)} prompts")
        texts = [self.prompt_text(prompt, len(row), index)
                 for index, (prompt, row) in enumerate(zip(prompts, pictures))]
        return self._decode(texts, pictures, settings, "prompt", special_tokens=True)

    def prompt_tokens(self, prompt: str, images: Sequence[Image.Image]) -> int:
        """How many tokens :meth:`complete` feeds the model for ``prompt`` (image tokens expanded); a prompt
        with ``prompt_tokens >= context`` leaves no room to continue."""
        pictures = [list(images)]
        encoded = self._encode([self.prompt_text(prompt, len(pictures[0]))], pictures, special_tokens=True)
        return int(encoded["attention_mask"].sum())

    def prompt_text(self, prompt: str, image_count: int, index: int = 0) -> str:
        """A raw prompt as the processor reads it: alignsmith's ``<image>`` placeholders as its image token."""
        placeholders = prompt.count(IMAGE_PLACEHOLDER)
        if placeholders != image_count:
            raise ImageCountError(f"prompt {index}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but "
                                  f"{image_count} image(s)")
        return prompt.replace(IMAGE_PLACEHOLDER, self.image_token)

    def render(self, conversation: Sequence[Message], image_count: int, index: int = 0) -> str:
        """The prompt text of one conversation: its chat template with structured content, generation prompt added."""
        messages = [{**message, "content": content_parts(message["content"])} for message in conversation]
        placeholders = sum(part.get("type") == "image" for m in messages for part in m["content"])
        if placeholders != image_count:
            raise ImageCountError(f"conversation {index}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in its "
                                  f"messages but {image_count} image(s)")
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _decode(self, texts: list[str], pictures: list[list[Image.Image]],
                settings: DecodingSettings | Sequence[DecodingSettings], what: str,
                special_tokens: bool) -> list[Completion]:
        """Decode processor-ready texts in length-sorted batches grouped by settings; replies in input order."""
        rows = per_row(settings, len(texts))
        groups: dict[DecodingSettings, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row, []).append(index)
        completions: list[Completion | None] = [None] * len(texts)
        for decoding, indices in groups.items():
            for batch in length_sorted_batches([len(texts[i]) for i in indices], self.batch_size):
                members = sorted(indices[i] for i in batch)
                replies = self._generate_batch(members, [texts[i] for i in members], [pictures[i] for i in members],
                                               decoding, what, special_tokens)
                for index, completion in zip(members, replies):
                    completions[index] = completion
        return completions  # type: ignore[return-value]  # every row was filled

    def _encode(self, texts: list[str], pictures: list[list[Image.Image]], special_tokens: bool) -> Any:
        """A batch as the processor encodes it, LEFT padded with an attention mask."""
        kwargs: dict[str, Any] = {"images": pictures} if any(pictures) else {}
        return self.processor(text=texts, padding=True, return_tensors="pt", add_special_tokens=special_tokens,
                              **kwargs)

    def _generate_batch(self, members: list[int], texts: list[str], pictures: list[list[Image.Image]],
                        decoding: DecodingSettings, what: str, special_tokens: bool) -> list[Completion]:
        import torch

        encoded = self._encode(texts, pictures, special_tokens)
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        too_long = next((k for k, n in enumerate(lengths) if n >= self.context), None)
        if too_long is not None:
            raise ContextLengthError(
                f"{self.model_ref.repo_id}: {what} {members[too_long]} renders to {lengths[too_long]} prompt "
                f"tokens, and the model's context is {self.context}: use a model with a longer context or a shorter prompt"
            )
        inputs = {key: _on(value, self.model) for key, value in encoded.items()}
        width = inputs["input_ids"].shape[1]
        forked = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), torch.inference_mode():
            torch.manual_seed(batch_seed(decoding.seed, members[0]))
            out = self.model.generate(
                **inputs, max_new_tokens=min(decoding.max_new_tokens, self.context - width),
                eos_token_id=self.stop_ids, pad_token_id=self.pad, return_dict_in_generate=True,
                output_logits=decoding.top_logprobs > 0, **generate_options(decoding),
            )
        generated = out.sequences[:, width:].tolist()
        first_logits = out.logits[0] if decoding.top_logprobs > 0 else None
        return [reply_of(self.tokenizer, self.stop_ids, int(n), tokens,
                         None if first_logits is None else first_logits[row], decoding.top_logprobs)
                for row, (n, tokens) in enumerate(zip(lengths, generated))]


def content_parts(content: Any) -> list[dict[str, str]]:
    """A message's content as structured parts: a string split on ``<image>`` (empty text left out); parts as they are."""
    if not isinstance(content, str):
        return list(content)
    parts: list[dict[str, str]] = []
    for k, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
        if k:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return parts


def _on(value: Any, model: Any) -> Any:
    """A processor output on the model's device, floating point in the model's dtype (pixel values)."""
    if value.is_floating_point():
        value = value.to(model.dtype)
    return value.to(model.device)
