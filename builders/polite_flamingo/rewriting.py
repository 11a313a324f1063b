"""The Polite Flamingo rewriter's prompt: instruction + drafted (distorted) response -> revised response.

Two layouts were published and they differ (notes ``polite-flamingo.md`` §2.4):

* ``readme``: the README's inference helper, the one the released weights were used with, reproduced
  byte for byte ("Assistent" typo, colons after the tags, the space before ``(Revised Response)``).
* ``paper``: Figure 3 of the paper with the spelling correct, tags on their own lines. The default:
  the notes recommend it for a reimplementation, used the same in training and rewriting.

The figure's ``<s>``/``</s>`` are the tokenizer's and the trainer's business, not part of the text:
the prompt ends right after the marker and the completion is the original response. ``<image>``
placeholders stay where the instruction has them (LLaVA-style models read them in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from alignsmith.recipes import check_choice

RewriterLayout = Literal["paper", "readme"]
REWRITER_LAYOUTS: tuple[RewriterLayout, ...] = ("paper", "readme")

REWRITER_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class _Layout:
    """The text around the instruction and the drafted response; the revised response follows ``revised``."""

    human: str
    drafted: str
    revised: str  # stripped, the marker :func:`revised_response` splits on


# Published strings, verbatim (the README's typo and spacing included).
_LAYOUTS: dict[RewriterLayout, _Layout] = {
    "readme": _Layout("\n### Human: ", "\n### Assistent: (Drafted Response): ", "\n (Revised Response): "),
    "paper": _Layout("\n### Human:\n", "\n### Assistant:\n(Drafted Response) ", "\n(Revised Response) "),
}


def rewriting_prompt(instruction: str, drafted: str, layout: RewriterLayout) -> str:
    """The rewriter's input for one (instruction, drafted response); the revised response continues it."""
    check_choice("layout", layout, REWRITER_LAYOUTS)
    parts = _LAYOUTS[layout]
    return REWRITER_SYSTEM + parts.human + instruction + parts.drafted + drafted + parts.revised


def revised_response(generated: str, layout: RewriterLayout) -> str:
    """The revised response in a generated continuation, or in the whole decoded prompt + continuation.

    The text after the layout's last ``(Revised Response)`` marker, stripped; a continuation without
    the marker is the response itself. The README layout needs its own split: its "Assistent" typo
    defeats the reference inferencer's split on ``### Assistant:``.
    """
    check_choice("layout", layout, REWRITER_LAYOUTS)
    return generated.rpartition(_LAYOUTS[layout].revised.strip())[2].strip()


def leaves_room(model: Any, prompt: str, images: Sequence[Any] | None = None) -> bool:
    """Whether a raw prompt leaves ``model`` (run here) room to continue: one that does not is its row's
    rejection. An endpoint (no ``context`` here) is let through: its server knows its own context length and
    refuses a prompt too long, which fails the shard with the server's message."""
    context = getattr(model, "context", None)
    if context is None:
        return True
    if images is not None:
        return model.prompt_tokens(prompt, images) < context
    return len(model.tokenizer(prompt)["input_ids"]) < context
