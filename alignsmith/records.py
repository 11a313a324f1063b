"""Canonical records (conversations and preference pairs) and the validation every record passes.

Records are plain dicts, described by TypedDicts, so a list of them goes straight into
``datasets.Dataset.from_list`` and Arrow; :func:`conversation_features` and
:func:`preference_features` give the matching ``datasets.Features`` (images as ``Image()``).

Turn order, checked by :func:`validate_conversation` and for a preference prompt:

* an optional ``system`` message, first only;
* then ``user`` and ``assistant`` alternate, starting with ``user``;
* ``tool`` messages may follow an ``assistant`` turn (the call) and each other, and are followed by
  the next ``assistant`` turn (the answer);
* a conversation with no ``assistant`` message at all (an evaluation prompt set such as MT-Bench)
  may hold several ``user`` turns in a row: the replies are generated between them.

A preference prompt ends with a ``user`` turn, and ``chosen`` and ``rejected`` are one ``assistant``
turn each, so the prompt followed by either answer is itself a valid conversation.

Every message content is a non-empty string (whitespace only counts as empty). A message may carry a
``loss_weight`` (a finite number >= 0; 0 on an assistant turn marks it as not trained on, as in
LLaMA-Factory). An image is referred to in content by the placeholder ``<image>``, one per image, in
the order of ``images``. Images are normalised to ``datasets.Image``'s storage (``{"bytes", "path"}``)
and decoded once, so a broken image is a rejection here rather than a crash in a training job.

Two optional fields, present only when they hold something (so records without them keep their
old shape): ``tools``, trl's list of JSON-schema dicts handed to the chat template (a JSON string is
parsed; a bare ``{"name", ...}`` schema is wrapped as ``{"type": "function", "function": ...}``, the
form transformers' templates read), and ``metadata``, a JSON object string of input columns no
format field reads, so nothing is lost while the Arrow schema stays fixed.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict

from alignsmith.errors import AlignsmithError

if TYPE_CHECKING:
    import datasets

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")
IMAGE_PLACEHOLDER = "<image>"

ErrorCode = Literal[
    "unknown_format",  # the row matches none of the known formats
    "missing_field",
    "wrong_type",
    "empty",
    "malformed",  # a string that does not parse (e.g. an HH-RLHF transcript)
    "unknown_role",
    "role_order",
    "no_assistant",
    "prompt_mismatch",  # the two dialogues of a preference pair do not share their prompt
    "unsupported",  # valid input that a canonical record cannot hold without losing something
    "duplicate_id",
    "image_count",
    "image_undecodable",
    # raised by stages that process records further
    "too_long",  # over a model's context
    "unscorable",  # a model could not score it
]


class Message(TypedDict):
    role: Role
    content: str
    loss_weight: NotRequired[float]  # LLaMA-Factory's per-turn weight; 0 = not trained on


class ImageRef(TypedDict):
    """``datasets.Image`` storage: exactly one of ``bytes`` and ``path`` is usually set."""

    bytes: bytes | None
    path: str | None


class Conversation(TypedDict):
    id: str
    source: str
    messages: list[Message]
    images: list[ImageRef]
    tools: NotRequired[list[dict[str, Any]]]  # JSON schemas for the chat template (trl's ``tools``)
    metadata: NotRequired[str]  # JSON object of the input columns no field reads


class Preference(TypedDict):
    """trl's conversational preference format with an explicit prompt."""

    id: str
    source: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    images: list[ImageRef]
    tools: NotRequired[list[dict[str, Any]]]
    metadata: NotRequired[str]


class RecordError(AlignsmithError):
    """A record (or input row) that cannot become a valid canonical record.

    ``field`` is a path into the row as the caller wrote it (``conversations[2].from``,
    ``output``), so the message points at what to fix in the source data.
    """

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode,
        record_id: str | None,
        row_index: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.code = code
        self.record_id = record_id
        self.row_index = row_index
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"record {self.record_id!r}" if self.record_id is not None else "record"
        if self.row_index is not None:
            where += f" (row {self.row_index})"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword-only arguments: rebuild through a helper so the error survives pickling
        # (multiprocessing datasets.map re-raises errors from worker processes)
        return (_rebuild_record_error, (self.reason, self.code, self.record_id, self.row_index, self.field))


def _rebuild_record_error(
    reason: str, code: ErrorCode, record_id: str | None, row_index: int | None, field: str | None
) -> RecordError:
    return RecordError(reason, code=code, record_id=record_id, row_index=row_index, field=field)


@dataclass
class RecordRef:
    """The record a check is about, and how its canonical fields map back to the input row.

    ``fields`` maps a canonical path (``messages[3].content``) to the input path it came from
    (``conversations[2].value``); unmapped paths are reported as they are.
    """

    record_id: str | None
    row_index: int | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def error(self, field: str | None, reason: str, code: ErrorCode) -> RecordError:
        if field is not None:
            field = self.fields.get(field, field)
        return RecordError(reason, code=code, record_id=self.record_id, row_index=self.row_index, field=field)


def type_name(value: object) -> str:
    """JSON-flavoured type name for error messages ("a number" reads better than "int")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def check_text(value: object, ref: RecordRef, field: str) -> str:
    """A required, non-empty string."""
    if value is None:
        raise ref.error(field, "missing", "missing_field")
    if not isinstance(value, str):
        raise ref.error(field, f"expected a string, got {type_name(value)}", "wrong_type")
    if not value.strip():
        raise ref.error(field, "empty string", "empty")
    return value


_MESSAGE_KEYS = frozenset(("role", "content", "loss_weight"))


def _check_messages(value: object, ref: RecordRef, field: str) -> list[Message]:
    if value is None:
        raise ref.error(field, "missing", "missing_field")
    if not isinstance(value, list):
        raise ref.error(field, f"expected a list of messages, got {type_name(value)}", "wrong_type")
    if not value:
        raise ref.error(field, "no messages", "empty")
    messages: list[Message] = []
    for i, message in enumerate(value):
        path = f"{field}[{i}]"
        if not isinstance(message, Mapping):
            raise ref.error(path, f"expected a message object, got {type_name(message)}", "wrong_type")
        extra = sorted(k for k in message.keys() - _MESSAGE_KEYS if message[k] is not None)
        if extra:
            raise ref.error(
                path,
                f"unsupported message key(s) {extra}: a message holds only role, content and loss_weight",
                "unsupported",
            )
        role = message.get("role")
        if role is None:
            raise ref.error(f"{path}.role", "missing", "missing_field")
        if role not in ROLES:
            raise ref.error(
                f"{path}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})", "unknown_role"
            )
        checked: Message = {"role": role, "content": check_text(message.get("content"), ref, f"{path}.content")}
        if message.get("loss_weight") is not None:
            checked["loss_weight"] = _check_loss_weight(message["loss_weight"], ref, f"{path}.loss_weight")
        messages.append(checked)
    return messages


def _check_loss_weight(value: object, ref: RecordRef, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ref.error(field, f"expected a number, got {type_name(value)}", "wrong_type")
    if not (math.isfinite(value) and value >= 0):
        raise ref.error(field, f"expected a finite number >= 0, got {value}", "malformed")
    return float(value)


def _check_tools(value: object, ref: RecordRef) -> list[dict[str, Any]]:
    """Tool schemas as a list of dicts; a JSON string (Glaive, LLaMA-Factory) is parsed first."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ref.error("tools", f"not valid JSON: {err}", "malformed") from None
    if not isinstance(value, list):
        raise ref.error("tools", f"expected a list of tool schemas, got {type_name(value)}", "wrong_type")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, Mapping):
            raise ref.error(f"tools[{i}]", f"expected a tool schema object, got {type_name(tool)}", "wrong_type")
        function = tool.get("function", tool)
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ref.error(f"tools[{i}]", "a tool schema needs a 'name' (or 'function.name') string", "malformed")
        tools.append(dict(tool) if "function" in tool else {"type": "function", "function": dict(tool)})
    return tools


def _check_metadata(value: object, ref: RecordRef) -> str:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise ref.error("metadata", f"not valid JSON: {err}", "malformed") from None
        if isinstance(parsed, dict):
            return value
    raise ref.error("metadata", f"expected a JSON object string, got {type_name(value)}", "wrong_type")


def _optional_fields(record: Mapping[str, Any], ref: RecordRef) -> dict[str, Any]:
    """``tools`` and ``metadata`` when they hold something; absent otherwise, like in the input."""
    fields: dict[str, Any] = {}
    if record.get("tools") is not None:
        tools = _check_tools(record["tools"], ref)
        if tools:
            fields["tools"] = tools
    if record.get("metadata") is not None:
        fields["metadata"] = _check_metadata(record["metadata"], ref)
    return fields


_FOLLOWS: dict[str | None, tuple[str, ...]] = {
    None: ("system", "user"),
    "system": ("user",),
    "user": ("assistant",),
    "assistant": ("user", "tool"),
    "tool": ("tool", "assistant"),
}


def _check_turn_order(messages: Sequence[Message], ref: RecordRef, field: str, *, prompt_only: bool) -> None:
    """``prompt_only``: an evaluation prompt set, whose consecutive user turns get replies in between."""
    previous: str | None = None
    for i, message in enumerate(messages):
        role = message["role"]
        allowed = _FOLLOWS[previous]
        if role not in allowed and not (prompt_only and previous == role == "user"):
            position = "cannot come first" if previous is None else f"cannot follow {previous!r}"
            raise ref.error(
                f"{field}[{i}].role", f"{role!r} {position} (expected {' or '.join(map(repr, allowed))})", "role_order"
            )
        previous = role


def _check_images(
    value: object, ref: RecordRef, texts: Sequence[str], image_root: str | os.PathLike[str] | None
) -> list[ImageRef]:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ref.error("images", f"expected a list of images, got {type_name(value)}", "wrong_type")
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for text in texts)
    if placeholders != len(value):
        raise ref.error(
            "images",
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the text but {len(value)} image(s)",
            "image_count",
        )
    return [_load_image(image, ref, f"images[{i}]", image_root) for i, image in enumerate(value)]


def _load_image(value: object, ref: RecordRef, field: str, image_root: str | os.PathLike[str] | None) -> ImageRef:
    """Normalise one image (path, bytes, ``{"bytes", "path"}`` or PIL image) and prove it decodes.

    A relative path is resolved against ``image_root`` when given (the dataset's folder), and the
    resolved path is what the record keeps.
    """
    import PIL.Image
    from datasets.features import Image

    if isinstance(value, str) and value.startswith(("http://", "https://")):
        raise ref.error(
            field, "remote image URLs are not fetched: download the images and refer to local files", "unsupported"
        )
    if isinstance(value, (str, os.PathLike)):
        value = _resolve(value, image_root)
    elif isinstance(value, Mapping):
        if set(value) - {"bytes", "path"}:
            raise ref.error(
                field,
                f"unsupported image keys {sorted(set(value) - {'bytes', 'path'})} (expected bytes, path)",
                "unsupported",
            )
        if value.get("bytes") is None:
            if not isinstance(value.get("path"), str):
                raise ref.error(
                    field, f"an image needs bytes or a path, got path {type_name(value.get('path'))}", "missing_field"
                )
            value = {"bytes": None, "path": _resolve(value["path"], image_root)}
        elif not isinstance(value["bytes"], (bytes, bytearray)):
            raise ref.error(field, f"expected image bytes, got {type_name(value['bytes'])}", "wrong_type")
    elif not isinstance(value, (bytes, bytearray, PIL.Image.Image)):
        raise ref.error(field, f"expected an image path, bytes or image object, got {type_name(value)}", "wrong_type")
    encoded = Image().encode_example(value)
    image: ImageRef = {"bytes": encoded.get("bytes"), "path": encoded.get("path")}
    try:
        with PIL.Image.open(io.BytesIO(image["bytes"]) if image["bytes"] is not None else image["path"]) as decoded:
            decoded.load()
    except FileNotFoundError:
        raise ref.error(field, f"image file not found: {image['path']}", "image_undecodable") from None
    except PIL.UnidentifiedImageError:
        raise ref.error(
            field, f"undecodable image ({_describe(image)}): not a known image format", "image_undecodable"
        ) from None
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise ref.error(field, f"undecodable image ({_describe(image)}): {err}", "image_undecodable") from None
    return image


def _resolve(path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None) -> str:
    if image_root is None or Path(path).is_absolute():
        return str(path)
    return str(Path(image_root) / path)


def _describe(image: ImageRef) -> str:
    return image["path"] if image["bytes"] is None else f"{len(image['bytes'])} bytes"


def _check_identity(record: Mapping[str, Any], ref: RecordRef) -> tuple[str, str]:
    return check_text(record.get("id"), ref, "id"), check_text(record.get("source"), ref, "source")


def validate_conversation(
    record: Mapping[str, Any],
    *,
    require_assistant: bool = True,
    ref: RecordRef | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> Conversation:
    """Check a conversation record and return it normalised (images as ``{"bytes", "path"}``).

    ``require_assistant``: a pool to train on or score needs at least one assistant reply; an
    evaluation prompt set does not. Raises :class:`RecordError` naming the first problem.
    """
    ref = ref or RecordRef(_display_id(record))
    record_id, source = _check_identity(record, ref)
    messages = _check_messages(record.get("messages"), ref, "messages")
    prompt_only = all(m["role"] != "assistant" for m in messages)
    _check_turn_order(messages, ref, "messages", prompt_only=prompt_only)
    if require_assistant and prompt_only:
        raise ref.error("messages", "no assistant message (a training record needs at least one reply)", "no_assistant")
    images = _check_images(record.get("images"), ref, [m["content"] for m in messages], image_root)
    return {
        "id": record_id, "source": source, "messages": messages, "images": images, **_optional_fields(record, ref)
    }


def validate_preference(
    record: Mapping[str, Any],
    *,
    ref: RecordRef | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> Preference:
    """Check a preference record: a prompt ending with a user turn, then one assistant turn each as chosen/rejected.

    Prompt + either answer must be a valid conversation: SFT trains on prompt + chosen, and DPO
    renders both through the chat template.
    """
    ref = ref or RecordRef(_display_id(record))
    record_id, source = _check_identity(record, ref)
    prompt = _check_messages(record.get("prompt"), ref, "prompt")
    _check_turn_order(prompt, ref, "prompt", prompt_only=False)  # answered once, after its last turn
    if prompt[-1]["role"] != "user":
        raise ref.error(
            f"prompt[{len(prompt) - 1}].role",
            f"the prompt must end with a user turn, not {prompt[-1]['role']!r}",
            "role_order",
        )
    answers = {}
    for side in ("chosen", "rejected"):
        answers[side] = _check_messages(record.get(side), ref, side)
        for i, message in enumerate(answers[side]):
            if message["role"] != "assistant":
                raise ref.error(f"{side}[{i}].role", f"expected 'assistant', got {message['role']!r}", "role_order")
        if len(answers[side]) > 1:
            reason = "'assistant' cannot follow 'assistant': an answer is one assistant turn"
            raise ref.error(f"{side}[1].role", reason, "role_order")
    texts = [m["content"] for part in (prompt, answers["chosen"], answers["rejected"]) for m in part]
    images = _check_images(record.get("images"), ref, texts, image_root)
    return {
        "id": record_id,
        "source": source,
        "prompt": prompt,
        "chosen": answers["chosen"],
        "rejected": answers["rejected"],
        "images": images,
        **_optional_fields(record, ref),
    }


def _display_id(record: Mapping[str, Any]) -> str | None:
    record_id = record.get("id")
    return record_id if isinstance(record_id, str) else None


class UniqueIds:
    """Remembers ids seen in one run, so a repeated id is rejected naming both rows."""

    def __init__(self) -> None:
        self._first_row: dict[str, int] = {}

    def claim(self, record_id: str, row_index: int) -> None:
        first = self._first_row.setdefault(record_id, row_index)
        if first != row_index:
            raise RecordError(
                f"duplicate id: rows {first} and {row_index} both use it",
                code="duplicate_id",
                record_id=record_id,
                row_index=row_index,
                field="id",
            )


def _features(*message_columns: str) -> datasets.Features:
    import datasets

    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    columns = {"id": datasets.Value("string"), "source": datasets.Value("string")}
    columns |= {name: datasets.List(message) for name in message_columns}
    columns["images"] = datasets.List(datasets.Image())
    # optional: null where a record has none; datasets published before they existed load as they are
    columns["tools"] = datasets.List(datasets.Json())
    columns["metadata"] = datasets.Value("string")
    return datasets.Features(columns)


def conversation_features() -> datasets.Features:
    """Features for ``Dataset.from_list(conversations, features=...)``; images embed on push_to_hub."""
    return _features("messages")


def preference_features() -> datasets.Features:
    """Features for ``Dataset.from_list(preferences, features=...)``; images embed on push_to_hub."""
    return _features("prompt", "chosen", "rejected")


def dataset_from_rows(rows: Sequence[Mapping[str, Any]], features: "datasets.Features") -> "datasets.Dataset":
    """A ``datasets.Dataset`` with ``features``, null where a row lacks an optional column.

    A message column gains a ``loss_weight`` field only when some row's messages carry one, so
    datasets without weights keep their messages exactly ``{role, content}``. ``from_list`` would
    take the columns from the first row only (and fails on no rows).
    """
    import datasets

    features = datasets.Features(features)
    for name, feature in features.items():
        if not (isinstance(feature, datasets.List) and isinstance(feature.feature, dict) and "role" in feature.feature):
            continue
        if any("loss_weight" in message for row in rows for message in row.get(name) or []):
            features[name] = datasets.List({**feature.feature, "loss_weight": datasets.Value("float64")})
    return datasets.Dataset.from_dict({name: [row.get(name) for row in rows] for name in features}, features=features)


def rejected_features(*extra_columns: str) -> "datasets.Features":
    """Features of a ``rejected`` config: one row per rejected input row (see ``converters.rejection``)."""
    import datasets

    names = ("row_index", "id", "field", "reason", "code", "raw", *extra_columns)
    return datasets.Features({n: datasets.Value("int64" if n == "row_index" else "string") for n in names})


def preference_to_conversation(record: Preference) -> Conversation:
    """The chosen side of a preference pair as a conversation (prompt + chosen), for SFT."""
    conversation: Conversation = {
        "id": record["id"],
        "source": record["source"],
        "messages": [*record["prompt"], *record["chosen"]],
        "images": record["images"],
    }
    for name in ("tools", "metadata"):
        if name in record:
            conversation[name] = record[name]
    return conversation
