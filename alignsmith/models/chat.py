"""A recipe's :class:`ChatModelSpec` turned into the :class:`ChatModel` it describes."""

from __future__ import annotations

from alignsmith.models.generation import ChatModel, ChatModelSpec
from alignsmith.models.hf_chat import HFChatModel
from alignsmith.models.openai_chat import EndpointChatModel


def load_chat_model(spec: ChatModelSpec) -> ChatModel:
    """The model run in this process (pinned now), or the endpoint serving ``spec.model``."""
    if spec.endpoint is None:
        return HFChatModel(spec.model, revision=spec.revision, dtype=spec.dtype, batch_size=spec.batch_size)
    return EndpointChatModel(spec.endpoint, spec.model, api_key_env=spec.api_key_env, batch_size=spec.batch_size)
