"""Chat templates for training: pick one that marks the assistant, prove it does, and fix the EOS.

Assistant-only loss depends on ``{% generation %}`` markers in the template; a template without
them trains on nothing (or, worse, on every token) and a template whose end-of-turn token falls
outside the marked span trains a model that never stops. Both only show at inference time, so
they are checked here, on a probe conversation, before a single step is taken.
"""

from __future__ import annotations

import logging
from typing import Any

from alignsmith.recipes import RecipeError

log = logging.getLogger(__name__)

_PROBE_USER = "Which colour is the sky?"
_PROBE_ASSISTANT = "The sky is blue."
_PROBE = [
    {"role": "user", "content": _PROBE_USER},
    {"role": "assistant", "content": _PROBE_ASSISTANT},
    {"role": "user", "content": _PROBE_USER},
]


class ChatTemplateError(RecipeError):
    """A chat template that cannot be trained with (no assistant marking, or no way to stop)."""


def choose_template(tokenizer: Any, supplied: str | None, *, need_markers: bool) -> tuple[str, str]:
    """Return ``(template, origin)``: the supplied one, else the base model's, else trl's training variant.

    ``need_markers`` (assistant-only loss) requires ``{% generation %}`` markers: a base template
    without them is replaced by trl's bundled training template for known model families.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if supplied is not None:
        return supplied, "recipe"
    base = tokenizer.chat_template
    if base is None:
        raise ChatTemplateError(
            "the base model's tokenizer has no chat template: set chat_template.template in the recipe "
            "(assistant content inside {% generation %}...{% endgeneration %})"
        )
    if isinstance(base, dict):  # named templates: training renders with the default one
        if "default" not in base:
            raise ChatTemplateError(
                f"the base model's tokenizer has named chat templates ({', '.join(base)}) but no 'default': "
                "set chat_template.template in the recipe"
            )
        base = base["default"]
    if not need_markers or has_generation_markers(base):
        return base, "base model"
    try:
        return get_training_chat_template(tokenizer), "trl training template"
    except ValueError:  # not one of the model families trl ships a training template for
        raise ChatTemplateError(
            "the base model's chat template has no {% generation %} markers, which assistant-only loss "
            "needs, and trl has no training variant of it: set chat_template.template in the recipe to a "
            "copy of the template with each assistant message (and its end-of-turn token) wrapped in "
            "{% generation %}...{% endgeneration %}"
        ) from None


def _render_probe(tokenizer: Any, template: str, *, with_mask: bool = False) -> dict[str, Any]:
    """The probe dialogue through ``template`` (token ids, and the assistant mask when asked for).

    A broken template fails here, with a ChatTemplateError, instead of inside trl's dataset preparation.
    """
    try:
        return tokenizer.apply_chat_template(
            _PROBE, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=with_mask
        )
    except Exception as err:  # jinja2 raises several unrelated types for a broken template
        raise ChatTemplateError(f"the chat template does not render a user/assistant dialogue: {err}") from None


def check_assistant_marked(tokenizer: Any, template: str) -> int:
    """Render a probe dialogue, require the mask to cover the reply and its end-of-turn token; return that token.

    Raises :class:`ChatTemplateError` saying what the mask covered instead.
    """
    rendered = _render_probe(tokenizer, template, with_mask=True)
    masked = [token for token, in_mask in zip(rendered["input_ids"], rendered["assistant_masks"]) if in_mask]
    marked = tokenizer.decode(masked, skip_special_tokens=True)
    if _PROBE_ASSISTANT not in marked:
        raise ChatTemplateError(
            "the chat template does not mark the assistant's reply for training: in a probe dialogue the "
            f"{{% generation %}} span covers {marked!r} instead of {_PROBE_ASSISTANT!r}; wrap each assistant "
            "message in {% generation %}...{% endgeneration %}"
        )
    if _PROBE_USER in marked:
        raise ChatTemplateError(
            f"the chat template marks user text as assistant output (the span covers {marked!r}): only "
            "assistant messages belong inside {% generation %}...{% endgeneration %}"
        )
    # the model stops by emitting a special (added) token; a span ending on plain text never trains it
    last = next((t for t in reversed(masked) if tokenizer.decode([t]).strip()), None)
    if last not in set(tokenizer.get_added_vocab().values()):
        raise ChatTemplateError(
            "the chat template leaves the assistant's end-of-turn token outside {% generation %}, so the "
            "model would never learn to stop: move the end-of-turn (or EOS) token inside the span"
        )
    return last


def use_eos_token(tokenizer: Any, eos_token: str | None) -> None:
    """Switch the tokenizer's EOS to ``eos_token`` (templates render ``eos_token`` from it)."""
    if eos_token is not None:
        if eos_token not in tokenizer.get_vocab():
            raise ChatTemplateError(f"chat_template.eos_token {eos_token!r} is not in the tokenizer's vocabulary")
        tokenizer.eos_token = eos_token
    if tokenizer.eos_token_id is None:
        raise ChatTemplateError("the tokenizer has no EOS token: set chat_template.eos_token in the recipe")


def set_stop_tokens(tokenizer: Any, model: Any, end_of_turn: int | None = None) -> None:
    """Make the model configs agree with the tokenizer's EOS, and stop generating at the end-of-turn token too.

    Generation stops on ``generation_config.eos_token_id``: a chat model whose generation config
    only names the pretraining EOS, while its template ends turns with another token (e.g.
    ``<|im_end|>``), runs on until ``max_new_tokens``. Stop tokens already configured are kept.
    """
    eos_id = tokenizer.eos_token_id
    model.config.eos_token_id = eos_id
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    stop_ids = list(dict.fromkeys([eos_id, *([end_of_turn] if end_of_turn is not None else []), *configured]))
    model.generation_config.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else stop_ids
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id


RAW_PROMPTS = "none: raw prompt/completion text"


def prepare_raw(tokenizer: Any, model: Any, eos_token: str | None) -> str:
    """Fix the EOS and stop tokens for raw prompt/completion training, which uses no chat template."""
    use_eos_token(tokenizer, eos_token)
    set_stop_tokens(tokenizer, model)
    return RAW_PROMPTS


def prepare_chat(
    tokenizer: Any,
    model: Any,
    supplied: str | None,
    eos_token: str | None,
    *,
    need_markers: bool,
    processor: Any | None = None,
) -> str:
    """Install the training chat template on ``tokenizer`` (and a vision model's ``processor``, which renders
    its conversations) and fix the stop tokens; the template ships with the model.

    Returns where the template came from, for the model card.
    """
    template, origin = choose_template(tokenizer, supplied, need_markers=need_markers)
    use_eos_token(tokenizer, eos_token)
    end_of_turn = None
    if need_markers:
        end_of_turn = check_assistant_marked(tokenizer, template)
    else:
        _render_probe(tokenizer, template)
    set_stop_tokens(tokenizer, model, end_of_turn)
    tokenizer.chat_template = template
    if processor is not None:
        processor.chat_template = template
    log.info("chat template: %s", origin)
    return origin
