"""A recipe's :class:`ChatModelSpec` turned into the :class:`ChatModel` it describes."""

from __future__ import annotations

from alignsmith.models.generation import ChatModel, ChatModelSpec
from alignsmith.models.hf_chat import ROLE, HFChatModel
from alignsmith.models.loading import is_adapter, is_vision_language, pinned
from alignsmith.models.openai_chat import EndpointChatModel
from alignsmith.models.vision_chat import HFVisionChatModel


def load_chat_model(spec: ChatModelSpec) -> ChatModel:
    """The model run in this process (pinned now; an image-text-to-text model reads images too), or the
    endpoint serving ``spec.model``."""
    if spec.endpoint is not None:
        return EndpointChatModel(spec.endpoint, spec.model, api_key_env=spec.api_key_env, batch_size=spec.batch_size)
    ref = pinned(spec.model, spec.revision, ROLE)
    if not is_adapter(ref) and is_vision_language(ref):
        return HFVisionChatModel(ref, dtype=spec.dtype, batch_size=spec.batch_size)
    return HFChatModel(ref, dtype=spec.dtype, batch_size=spec.batch_size)
