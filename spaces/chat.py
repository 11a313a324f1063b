"""Streamed chat replies from a pinned model, rendered with the model's own chat template."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from threading import Thread

from alignsmith.models.generation import ChatModel, DecodingSettings, Message
from alignsmith.models.hf_chat import HFChatModel

# shown instead of an empty reply, which a reader would take for a hung app
EMPTY_REPLY = "(no text: the model stopped at once or wrote only special tokens)"


def stream_reply(model: ChatModel, messages: Sequence[Message], max_new_tokens: int) -> Iterator[str]:
    """The reply so far, growing token by token (greedy); a model that cannot stream gives it whole.

    A reply without text ends as :data:`EMPTY_REPLY`.
    """
    if not isinstance(model, HFChatModel):  # an endpoint or a vision model: one reply, no streaming
        yield model.generate([messages], DecodingSettings(max_new_tokens=max_new_tokens))[0].text or EMPTY_REPLY
        return
    import torch
    from transformers import TextIteratorStreamer

    inputs = model.tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, return_tensors="pt")
    room = min(max_new_tokens, model.context - inputs["input_ids"].shape[1])
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def generate() -> None:
        with torch.inference_mode():
            model.model.generate(**inputs.to(model.model.device), max_new_tokens=max(room, 1), do_sample=False,
                                 eos_token_id=model.stop_ids, pad_token_id=model.pad, streamer=streamer)

    thread = Thread(target=generate, daemon=True)
    thread.start()
    reply = ""
    for piece in streamer:
        reply += piece
        yield reply
    thread.join()
    if not reply.strip():
        yield EMPTY_REPLY
