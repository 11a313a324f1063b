"""A Hub chat model (or a PEFT adapter on its base) run in this process, pinned to a commit.

Generation is batched: conversations of similar length go together, LEFT padded with an attention
mask, so each row decodes exactly as it would alone (greedy output does not depend on batching).
Rows are grouped by identical :class:`DecodingSettings`, since one ``generate`` call decodes one way.

Sampling seeds: each batch seeds torch's generator from ``(settings.seed, the smallest original row
index in the batch)``, so the same conversations, settings and ``batch_size`` give the same replies;
another ``batch_size`` regroups rows and may sample differently.

``no_repeat_ngram_size`` is passed to ``generate`` when set. Knobs that :class:`DecodingSettings` does
not name (top-k, repetition penalty...) follow the model's ``generation_config``, as vLLM and
``transformers serve`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef, load_revision
from alignsmith.models.batching import context_length, length_sorted_batches, pad_id, right_pad
from alignsmith.models.generation import Completion, DecodingSettings, Message, per_row
from alignsmith.models.loading import ModelLoadError, PinnedModel, has_file, is_adapter, load_pretrained, pinned

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ROLE = "chat_model"
TOKENIZER_CONFIG = "tokenizer_config.json"


class ContextLengthError(AlignsmithError):
    """A prompt that does not fit the model's context window."""


class HFChatModel(PinnedModel):
    """A :class:`~alignsmith.models.generation.ChatModel` over transformers ``generate``."""

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.model_ref = pinned(model, revision, ROLE)
        self.base_ref: ArtifactRef | None = None  # the base under a PEFT adapter
        if is_adapter(self.model_ref):
            self.model, self.tokenizer = self._load_adapter(dtype, device)
        else:
            self.model, self.tokenizer = load_pretrained(self.model_ref, dtype=dtype, device=device)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.pad = pad_id(self.tokenizer)
        self.context = context_length(self.model, self.tokenizer)

    def _load_adapter(self, dtype: str, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The adapter's pinned base with the adapter merged in, and the adapter's tokenizer if it ships one."""
        from peft import PeftConfig, PeftModel
        from transformers import AutoTokenizer

        ref, revision = self.model_ref, load_revision(self.model_ref)
        try:
            config = PeftConfig.from_pretrained(ref.repo_id, revision=revision)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"{ref.role}: cannot read the adapter {ref.repo_id!r} (revision {revision}): {err}"
            ) from None
        self.base_ref = pinned(config.base_model_name_or_path, config.revision, f"{ref.role}_base")
        base, tokenizer = load_pretrained(self.base_ref, dtype=dtype, device=device)
        try:
            if has_file(ref, TOKENIZER_CONFIG):  # adapters trained with a new chat template ship their tokenizer
                tokenizer = AutoTokenizer.from_pretrained(ref.repo_id, revision=revision)
            # merged: generation runs plain weights, faster and equal up to rounding
            model = PeftModel.from_pretrained(base, ref.repo_id, revision=revision).merge_and_unload()
        except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: weights that do not fit the base
            raise ModelLoadError(
                f"{ref.role}: cannot load the adapter {ref.repo_id!r} (revision {revision}) onto "
                f"{self.base_ref.repo_id!r}@{self.base_ref.sha}: {err}"
            ) from None
        return model.eval(), tokenizer

    def identity(self) -> dict[str, str]:
        """The pinned model (and base), by Hub id or local folder name, so caches survive moving a folder."""
        found = {"kind": "hf", "repo_id": self.model_ref.portable().repo_id, "sha": self.model_ref.sha or ""}
        if self.base_ref is not None:
            found |= {"base_repo_id": self.base_ref.portable().repo_id, "base_sha": self.base_ref.sha or ""}
        return found

    def generate(
        self, conversations: Sequence[Sequence[Message]], settings: DecodingSettings | Sequence[DecodingSettings]
    ) -> list[Completion]:
        if not self.tokenizer.chat_template:  # a base model can still continue raw prompts (complete)
            raise ModelLoadError(
                f"{self.model_ref.role}: the tokenizer of {self.model_ref.repo_id!r} (revision "
                f"{load_revision(self.model_ref)}) has no chat template; use a chat (instruction-tuned) model"
            )
        prompts = [
            list(self.tokenizer.apply_chat_template([dict(m) for m in conv], add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)["input_ids"])
            for conv in conversations
        ]
        return self._decode(prompts, settings, "conversation")

    def complete(
        self, prompts: Sequence[str], settings: DecodingSettings | Sequence[DecodingSettings]
    ) -> list[Completion]:
        """Continue raw text prompts, no chat template: for prompts that pre-fill the assistant's turn in
        their own format (Polite Flamingo's Guanaco prompt ends inside an opened quote). The tokenizer adds
        its usual special tokens (BOS); batching, padding and seeding are those of :meth:`generate`."""
        return self._decode([list(self.tokenizer(prompt)["input_ids"]) for prompt in prompts], settings, "prompt")

    def continuation_logprobs(
        self, conversations: Sequence[Sequence[Message]], prefix: str, candidates: Sequence[str]
    ) -> list[list[float]]:
        """Per conversation, the log-probability of each candidate continuing the assistant's turn after ``prefix``.

        A verdict read from the model's distribution instead of its sampled text: every answer is one of the
        candidates, and nothing is generated. The text is tokenised whole (chat template, prefix, candidate),
        so a candidate that merges with the prefix's last characters is scored as the model would write it;
        the tokens every candidate shares are context, and only the rest is scored.
        """
        import torch

        scores = []
        for number, conversation in enumerate(conversations):
            text = self.tokenizer.apply_chat_template([dict(m) for m in conversation], add_generation_prompt=True,
                                                      tokenize=False) + prefix
            rows = [list(self.tokenizer(text + candidate, add_special_tokens=False)["input_ids"])
                    for candidate in candidates]
            width = max(len(row) for row in rows)
            if width > self.context:
                raise ContextLengthError(f"{self.model_ref.repo_id}: conversation {number} renders to {width} tokens "
                                         f"with its verdict, and the model's context is {self.context}")
            shared = next((i for i in range(min(len(r) for r in rows)) if len({r[i] for r in rows}) > 1),
                          min(len(r) for r in rows))
            input_ids, _ = right_pad(rows, self.pad, self.model.device)  # no mask needed: padding comes after
            with torch.inference_mode():  # logits from the last shared token on: the ones that predict candidates
                logits = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=width - shared + 1).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            scores.append([sum(logprobs[i, j - shared, row[j]].item() for j in range(shared, len(row)))
                           for i, row in enumerate(rows)])
        return scores

    def _decode(
        self, prompts: list[list[int]], settings: DecodingSettings | Sequence[DecodingSettings], what: str
    ) -> list[Completion]:
        """Decode tokenised prompts in length-sorted batches grouped by settings; replies in input order."""
        rows = per_row(settings, len(prompts))
        too_long = next((i for i, prompt in enumerate(prompts) if len(prompt) >= self.context), None)
        if too_long is not None:
            raise ContextLengthError(
                f"{self.model_ref.repo_id}: {what} {too_long} renders to {len(prompts[too_long])} prompt tokens, "
                f"and the model's context is {self.context}: use a model with a longer context or a shorter prompt"
            )
        groups: dict[DecodingSettings, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row, []).append(index)
        completions: list[Completion | None] = [None] * len(prompts)
        for decoding, indices in groups.items():
            for batch in length_sorted_batches([len(prompts[i]) for i in indices], self.batch_size):
                members = [indices[i] for i in batch]
                for index, completion in zip(members, self._generate_batch([prompts[i] for i in members],
                                                                            decoding, min(members))):
                    completions[index] = completion
        return completions  # type: ignore[return-value]  # every row was filled

    def _generate_batch(self, prompts: list[list[int]], decoding: DecodingSettings, first_row: int) -> list[Completion]:
        import torch

        input_ids, attention_mask = left_pad(prompts, self.pad, self.model.device)
        # a reply ends where the model's context does (finish_reason "length"), never past it
        max_new_tokens = min(decoding.max_new_tokens, self.context - input_ids.shape[1])
        options = generate_options(decoding)
        forked = [self.model.device] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), torch.inference_mode():
            torch.manual_seed(batch_seed(decoding.seed, first_row))
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids, pad_token_id=self.pad,
                return_dict_in_generate=True, output_logits=decoding.top_logprobs > 0, **options,
            )
        generated = out.sequences[:, input_ids.shape[1]:].tolist()
        first_logits = out.logits[0] if decoding.top_logprobs > 0 else None
        return [
            reply_of(self.tokenizer, self.stop_ids, len(prompt), tokens,
                     None if first_logits is None else first_logits[row], decoding.top_logprobs)
            for row, (prompt, tokens) in enumerate(zip(prompts, generated))
        ]


def reply_of(
    tokenizer: PreTrainedTokenizerBase, stop_ids: Sequence[int], prompt_tokens: int, tokens: list[int],
    logits: torch.Tensor | None, top: int,
) -> Completion:
    """One row's reply, cut at its first stop token (counted in ``completion_tokens``, left out of the text)."""
    stop = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
    reply = tokens if stop is None else tokens[:stop]
    return Completion(
        text=tokenizer.decode(reply, skip_special_tokens=True),
        finish_reason="length" if stop is None else "stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=len(tokens) if stop is None else stop + 1,
        first_token_logprobs=None if logits is None else top_logprobs(tokenizer, logits, top),
    )


def top_logprobs(tokenizer: PreTrainedTokenizerBase, logits: torch.Tensor, top: int) -> dict[str, float]:
    """The model's own log-probabilities (before temperature and top-p, as vLLM reports them) of the
    ``top`` likeliest first tokens, by token text; of two tokens with one text, the likelier is kept."""
    import torch

    values, ids = torch.log_softmax(logits.float(), dim=-1).topk(min(top, logits.shape[-1]))
    found: dict[str, float] = {}
    for token, value in zip(ids.tolist(), values.tolist()):
        found.setdefault(tokenizer.decode([token]), value)
    return found


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, templates: Any = None,
                   content: Callable[[str], Any] = str) -> list[int]:
    """Where a reply ends: the generation config's and tokenizer's EOS and the template's end-of-turn token
    (see :func:`end_of_turn_id` for ``templates`` and ``content``)."""
    configured = model.generation_config.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    ids += [t for t in (tokenizer.eos_token_id, end_of_turn_id(tokenizer, templates, content)) if t is not None]
    return list(dict.fromkeys(ids))


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase, templates: Any = None,
                   content: Callable[[str], Any] = str) -> int | None:
    """The special token the chat template writes right after an assistant reply (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``...), found by rendering one; None if it writes none.

    ``templates`` renders the chat template when it is not the tokenizer (a vision model's processor),
    with each message's content given as ``content(text)`` (its structured parts, for a processor).
    """
    from jinja2 import TemplateError

    templates = templates or tokenizer
    if not getattr(templates, "chat_template", None):
        return None
    marker = "ALIGNSMITH_REPLY_END"
    try:
        text = templates.apply_chat_template(
            [{"role": "user", "content": content("hi")}, {"role": "assistant", "content": content(marker)}],
            tokenize=False,
        )
    except TemplateError:
        return None
    after = tokenizer.encode(text.rpartition(marker)[2], add_special_tokens=False)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return after[0] if after and after[0] in special else None


def left_pad(prompts: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input ids and their attention mask: new tokens follow every row's last real token."""
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids.to(device), attention_mask.to(device)


def generate_options(decoding: DecodingSettings) -> dict[str, Any]:
    """The ``generate`` keyword arguments that :class:`DecodingSettings` decides (sampling, n-gram blocking)."""
    options: dict[str, Any] = {"do_sample": decoding.temperature > 0}
    if decoding.temperature > 0:
        options |= {"temperature": decoding.temperature, "top_p": decoding.top_p}
    if decoding.no_repeat_ngram_size is not None:
        options["no_repeat_ngram_size"] = decoding.no_repeat_ngram_size
    return options


def batch_seed(seed: int, first_row: int) -> int:
    """A batch's sampling seed, mixed from the settings' seed and the batch's first row (see the module docstring)."""
    return int(np.random.SeedSequence([seed, first_row]).generate_state(1, np.uint64)[0] >> 1)
