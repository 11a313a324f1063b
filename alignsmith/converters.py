r"""Converters from the common chat, instruction and preference formats to canonical records.

A row's format is detected from the columns that hold a value (``None`` counts as absent, because
Arrow gives every row every column), trying the formats in this order, or forced with ``fmt``:

``sharegpt``
    ``conversations: [{"from", "value"}]``. Speakers ``human``/``user`` → user, ``gpt``/``assistant``
    → assistant, ``system`` → system, ``tool`` → tool; LLaMA-Factory's ``function_call`` (the call,
    written by the model) → assistant and ``observation`` (the tool's answer) → tool. Optional
    top-level ``system`` string, images in ``image`` (one) or ``images`` (a list).
``messages``
    OpenAI-style ``messages: [{"role", "content"}]``; content is a string or a list of typed parts
    (``text`` with its text in ``text``, or in ``value`` as LLaMA-Factory writes it; ``image_url`` with
    ``{"url"}``; ``image`` with ``image``/``url``/``path`` or none). Parts are joined with ``"\n"``,
    each image part becoming an ``<image>`` placeholder. An image part with its own source (a file
    path, a ``data:`` URI, bytes) brings its image along; a bare ``{"type": "image"}`` refers to the row's ``images`` column in order. A row may not mix the two.
``alpaca``
    ``instruction``, optional ``input``, ``output``; optional ``system`` and LLaMA-Factory's
    ``history`` (``[[user, assistant], ...]`` before the instruction). A non-empty ``input`` is
    appended to the instruction after a blank line (``instruction + "\n\n" + input``), the way
    Alpaca-format pools are turned into single user turns for Deita scoring.
``mt_bench``
    FastChat question files (MT-Bench, Vicuna-bench): ``question_id``, ``turns`` → a prompt-only
    conversation with one user message per turn (the replies are generated at evaluation time).
``preference``
    ``prompt``/``chosen``/``rejected``: strings (a user prompt, assistant answers) or message lists
    (trl's explicit-prompt conversational format).
``hh_rlhf``
    ``chosen``/``rejected`` as whole dialogues, either HH-RLHF transcripts
    (``"\n\nHuman: ...\n\nAssistant: ..."``, each turn stripped of surrounding whitespace) or message
    lists (trl's implicit-prompt format). The shared prefix becomes the prompt and the final
    assistant turn of each side becomes chosen/rejected; dialogues that differ earlier are rejected.
``prompt_completion``
    ``prompt``/``completion``: strings (a user turn, an assistant turn) or message lists.

A message (ShareGPT turn or ``messages`` item) may carry LLaMA-Factory's ``loss_weight``; it is kept
in the canonical message. Preference formats also convert to conversations (prompt + chosen) for
SFT. Every format also reads:

* the id: the row's own id column (``id``, ``question_id``, ``conversation_id``, ``prompt_id``), else
  ``f"{source}-{row_index}"``;
* ``source``, when present (so re-converting alignsmith's own output keeps provenance), else the
  caller's ``source``;
* ``tools``: tool schemas (a JSON string or a list of objects, as in Glaive and LLaMA-Factory data),
  kept as the record's ``tools`` for the chat template;
* ``metadata``: a JSON object string (alignsmith's own output), the base of the record's metadata.

Any other column with a value is an extra column, handled by ``extra_columns``: ``carry`` adds it to
the record's ``metadata`` JSON, ``drop`` leaves it out, ``error`` stops the run naming it. Either way
:class:`ConversionResult` counts it, so nothing is dropped without the card saying so.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from alignsmith.recipes import check_choice
from alignsmith.records import (
    IMAGE_PLACEHOLDER,
    RecordError,
    RecordRef,
    UniqueIds,
    check_text,
    preference_to_conversation,
    type_name,
    validate_conversation,
    validate_preference,
)

RecordKind = Literal["conversation", "preference"]
OnInvalid = Literal["error", "reject"]
ExtraColumns = Literal["carry", "drop", "error"]
EXTRA_COLUMNS: tuple[ExtraColumns, ...] = ("carry", "drop", "error")
Row = Mapping[str, Any]

ID_COLUMNS = ("id", "question_id", "conversation_id", "prompt_id")
SOURCE_COLUMN = "source"
TOOLS_COLUMN = "tools"
METADATA_COLUMN = "metadata"
COMMON_COLUMNS = (*ID_COLUMNS, SOURCE_COLUMN, TOOLS_COLUMN, METADATA_COLUMN)
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
}
IMAGE_COLUMNS = ("image", "images")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class UndecodableRow(dict):
    """A row whose stored text is not valid UTF-8, shown with replacement characters.

    Readers yield it in place of the row, so the converter rejects that row alone (naming the field)
    instead of the whole read crashing.
    """

    def __init__(self, row: Mapping[str, Any], field: str, reason: str) -> None:
        super().__init__(row)
        self.field = field
        self.reason = reason


class _Messages:
    """Messages being assembled, each remembering the input fields it came from."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.origins: list[tuple[str, str]] = []

    def add(self, role: Any, content: Any, *, role_from: str, content_from: str, item: Row | None = None) -> None:
        """``item``: the input message, whose ``loss_weight`` (when set) the message keeps."""
        message = {"role": role, "content": content}
        if item is not None and item.get("loss_weight") is not None:
            message["loss_weight"] = item["loss_weight"]
        self.items.append(message)
        self.origins.append((role_from, content_from))

    def take(self, ref: RecordRef, field: str, part: slice = slice(None)) -> list[dict[str, Any]]:
        """The messages in ``part``, registered in ``ref`` as the canonical ``field``."""
        for i, (role_from, content_from) in enumerate(self.origins[part]):
            ref.fields[f"{field}[{i}].role"] = role_from
            ref.fields[f"{field}[{i}].content"] = content_from
            ref.fields[f"{field}[{i}].loss_weight"] = f"{role_from.rpartition('.')[0] or role_from}.loss_weight"
        return self.items[part]


class _Images:
    """A row's images in placeholder order: its image column, or the images inlined in content parts."""

    def __init__(self, row: Row, ref: RecordRef) -> None:
        self.ref = ref
        self.column = _column_images(row, ref)
        self.inline: list[tuple[Any, str]] = []

    def add_part(self, part: Mapping[str, Any], path: str) -> None:
        if part.get("type") == "image_url":
            url = part.get("image_url")
            if isinstance(url, Mapping):
                url, path = url.get("url"), f"{path}.image_url.url"
            else:
                path = f"{path}.image_url"
            if url is None:
                raise self.ref.error(path, "missing", "missing_field")
            self.inline.append((_image_from_url(url, self.ref, path), path))
            return
        for key in ("image", "url", "path"):
            if part.get(key) is not None:
                self.inline.append((_image_from_url(part[key], self.ref, f"{path}.{key}"), f"{path}.{key}"))
                return
        # a bare {"type": "image"}: the image comes from the row's image column

    def take(self) -> list[Any]:
        if not self.inline:
            return self.column
        if self.column:
            raise self.ref.error(
                "images",
                "images inlined in content parts and an image column cannot be mixed (their order is ambiguous)",
                "unsupported",
            )
        for k, (_, path) in enumerate(self.inline):
            self.ref.fields[f"images[{k}]"] = path
        return [image for image, _ in self.inline]


def _image_from_url(value: Any, ref: RecordRef, path: str) -> Any:
    """A ``data:`` URI becomes bytes, ``file://`` a path; anything else is left to image validation."""
    if not isinstance(value, str):
        return value
    if value.startswith("data:"):
        _, _, payload = value.partition(",")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise ref.error(path, "undecodable image: the data URI is not valid base64", "image_undecodable") from None
    return value.removeprefix("file://")


def _column_images(row: Row, ref: RecordRef) -> list[Any]:
    single, many = row.get("image"), row.get("images")
    if single is not None and many is not None:
        raise ref.error("image", "both 'image' and 'images' are given; use one", "unsupported")
    if single is not None:
        ref.fields["images"] = ref.fields["images[0]"] = "image"
        return [single]
    if many is None:
        return []
    if not isinstance(many, list):
        raise ref.error("images", f"expected a list of images, got {type_name(many)}", "wrong_type")
    return many


def _object(value: Any, ref: RecordRef, path: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """A nested object with only ``keys`` set: anything else would be lost in the canonical record."""
    if not isinstance(value, Mapping):
        raise ref.error(path, f"expected an object, got {type_name(value)}", "wrong_type")
    extra = sorted(k for k in value.keys() - set(keys) if value[k] is not None)
    if extra:
        raise ref.error(path, f"unsupported key(s) {extra} (expected {', '.join(keys)})", "unsupported")
    return value


def _join_parts(parts: list[Any], path: str, ref: RecordRef, images: _Images) -> str:
    pieces = []
    for k, part in enumerate(parts):
        part_path = f"{path}[{k}]"
        if not isinstance(part, Mapping):
            raise ref.error(part_path, f"expected a content part object, got {type_name(part)}", "wrong_type")
        kind = part.get("type")
        if kind == "text":
            pieces.append(_part_text(part, part_path, ref))
        elif kind in ("image", "image_url"):
            images.add_part(part, part_path)
            pieces.append(IMAGE_PLACEHOLDER)
        else:
            raise ref.error(
                f"{part_path}.type",
                f"unsupported content part type {kind!r} (expected text, image or image_url)",
                "unsupported",
            )
    return "\n".join(pieces)


def _part_text(part: Mapping[str, Any], path: str, ref: RecordRef) -> str:
    """A text part's text: in ``text`` (OpenAI) or ``value`` (LLaMA-Factory), never both."""
    given = [key for key in ("text", "value") if part.get(key) is not None]
    if len(given) != 1:
        found = "both 'text' and 'value'" if given else "neither"
        raise ref.error(path, f"a text part holds its text in 'text' or 'value'; found {found}", "malformed")
    text = part[given[0]]
    if not isinstance(text, str):
        raise ref.error(f"{path}.{given[0]}", f"expected a string, got {type_name(text)}", "wrong_type")
    return text


def _add_message_list(value: Any, path: str, out: _Messages, ref: RecordRef, images: _Images) -> None:
    if not isinstance(value, list):
        raise ref.error(path, f"expected a list of messages, got {type_name(value)}", "wrong_type")
    if not value:
        raise ref.error(path, "no messages", "empty")
    for j, item in enumerate(value):
        item_path = f"{path}[{j}]"
        message = _object(item, ref, item_path, ("role", "content", "loss_weight"))
        content = message.get("content")
        if isinstance(content, list):
            content = _join_parts(content, f"{item_path}.content", ref, images)
        out.add(
            message.get("role"),
            content,
            role_from=f"{item_path}.role",
            content_from=f"{item_path}.content",
            item=message,
        )


def _add_turns(row: Row, column: str, role: str, out: _Messages, ref: RecordRef, images: _Images) -> None:
    """A column holding either one turn as a string or a list of messages."""
    value = row.get(column)
    if isinstance(value, list):
        _add_message_list(value, column, out, ref, images)
    elif value is None or isinstance(value, str):
        out.add(role, value, role_from=column, content_from=column)
    else:
        raise ref.error(column, f"expected a string or a list of messages, got {type_name(value)}", "wrong_type")


def _add_transcript(text: str, column: str, out: _Messages, ref: RecordRef) -> None:
    pieces = _HH_TURN.split(text)
    if len(pieces) == 1:
        raise ref.error(column, "no '\\n\\nHuman:' or '\\n\\nAssistant:' turns in the transcript", "malformed")
    if pieces[0].strip():
        raise ref.error(column, "text before the first '\\n\\nHuman:' turn", "malformed")
    for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True):
        out.add("user" if speaker == "Human" else "assistant", content.strip(), role_from=column, content_from=column)


def _system(row: Row, out: _Messages) -> None:
    if row.get("system") is not None:
        out.add("system", row["system"], role_from="system", content_from="system")


def _parse_sharegpt(row: Row, ref: RecordRef) -> dict[str, Any]:
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise ref.error("conversations", f"expected a list of turns, got {type_name(turns)}", "wrong_type")
    ref.fields["messages"] = "conversations"
    out = _Messages()
    _system(row, out)
    for j, turn in enumerate(turns):
        path = f"conversations[{j}]"
        item = _object(turn, ref, path, ("from", "value", "loss_weight"))
        speaker = item.get("from")
        if speaker is None:
            raise ref.error(f"{path}.from", "missing", "missing_field")
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise ref.error(
                f"{path}.from",
                f"unknown speaker {speaker!r} (expected one of {', '.join(SHAREGPT_ROLES)})",
                "unknown_role",
            )
        out.add(role, item.get("value"), role_from=f"{path}.from", content_from=f"{path}.value", item=item)
    return {"messages": out.take(ref, "messages"), "images": _column_images(row, ref)}


def _parse_messages(row: Row, ref: RecordRef) -> dict[str, Any]:
    out, images = _Messages(), _Images(row, ref)
    _add_message_list(row["messages"], "messages", out, ref, images)
    return {"messages": out.take(ref, "messages"), "images": images.take()}


def _parse_alpaca(row: Row, ref: RecordRef) -> dict[str, Any]:
    out = _Messages()
    _system(row, out)
    history = row.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise ref.error(
                "history", f"expected a list of [instruction, response] pairs, got {type_name(history)}", "wrong_type"
            )
        for h, pair in enumerate(history):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ref.error(
                    f"history[{h}]", f"expected an [instruction, response] pair, got {type_name(pair)}", "wrong_type"
                )
            out.add("user", pair[0], role_from=f"history[{h}]", content_from=f"history[{h}][0]")
            out.add("assistant", pair[1], role_from=f"history[{h}]", content_from=f"history[{h}][1]")
    instruction = check_text(row["instruction"], ref, "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise ref.error("input", f"expected a string, got {type_name(extra)}", "wrong_type")
    if extra and extra.strip():
        instruction = f"{instruction}\n\n{extra}"
    out.add("user", instruction, role_from="instruction", content_from="instruction")
    out.add("assistant", row["output"], role_from="output", content_from="output")
    return {"messages": out.take(ref, "messages"), "images": _column_images(row, ref)}


def _parse_mt_bench(row: Row, ref: RecordRef) -> dict[str, Any]:
    turns = row["turns"]
    if not isinstance(turns, list):
        raise ref.error("turns", f"expected a list of strings, got {type_name(turns)}", "wrong_type")
    ref.fields["messages"] = "turns"
    out = _Messages()
    for k, turn in enumerate(turns):
        out.add("user", turn, role_from=f"turns[{k}]", content_from=f"turns[{k}]")
    return {"messages": out.take(ref, "messages"), "images": []}


def _parse_prompt_completion(row: Row, ref: RecordRef) -> dict[str, Any]:
    out, images = _Messages(), _Images(row, ref)
    _add_turns(row, "prompt", "user", out, ref, images)
    _add_turns(row, "completion", "assistant", out, ref, images)
    return {"messages": out.take(ref, "messages"), "images": images.take()}


def _parse_preference(row: Row, ref: RecordRef) -> dict[str, Any]:
    images = _Images(row, ref)
    draft: dict[str, Any] = {}
    for column, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
        out = _Messages()
        _add_turns(row, column, role, out, ref, images)
        draft[column] = out.take(ref, column)
    draft["images"] = images.take()
    return draft


def _parse_hh_rlhf(row: Row, ref: RecordRef) -> dict[str, Any]:
    images = _Images(row, ref)
    sides: dict[str, _Messages] = {}
    for column in ("chosen", "rejected"):
        out = sides[column] = _Messages()
        value = row[column]
        if isinstance(value, str):
            _add_transcript(value, column, out, ref)
        elif isinstance(value, list):
            _add_message_list(value, column, out, ref, images)
        else:
            raise ref.error(
                column, f"expected a transcript string or a list of messages, got {type_name(value)}", "wrong_type"
            )
        if out.items[-1]["role"] != "assistant":
            raise ref.error(out.origins[-1][0], "the dialogue must end with an assistant turn", "role_order")
    chosen_prompt, rejected_prompt = sides["chosen"].items[:-1], sides["rejected"].items[:-1]
    if chosen_prompt != rejected_prompt:
        pairs = zip(chosen_prompt, rejected_prompt, strict=False)
        turn = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(chosen_prompt), len(rejected_prompt)))
        raise ref.error(
            "rejected",
            f"the rejected dialogue does not share the chosen one's prompt (they differ at turn {turn + 1})",
            "prompt_mismatch",
        )
    return {
        "prompt": sides["chosen"].take(ref, "prompt", slice(None, -1)),
        "chosen": sides["chosen"].take(ref, "chosen", slice(-1, None)),
        "rejected": sides["rejected"].take(ref, "rejected", slice(-1, None)),
        "images": images.take(),
    }


@dataclass(frozen=True)
class RowFormat:
    """A row format: the columns that identify it, the ones it also reads, and its parser."""

    name: str
    kind: RecordKind
    required: tuple[str, ...]
    optional: tuple[str, ...]
    parse: Callable[[Row, RecordRef], dict[str, Any]] = field(repr=False)

    def matches(self, present: set[str]) -> bool:
        return present.issuperset(self.required)

    def extra_columns(self, row: Row) -> list[str]:
        """The columns holding a value that no field of this format (or of every format) reads."""
        used = (*self.required, *self.optional, *COMMON_COLUMNS)
        return [key for key, value in row.items() if value is not None and key not in used]


FORMATS: dict[str, RowFormat] = {
    f.name: f
    for f in (
        RowFormat("sharegpt", "conversation", ("conversations",), ("system", *IMAGE_COLUMNS), _parse_sharegpt),
        RowFormat("messages", "conversation", ("messages",), IMAGE_COLUMNS, _parse_messages),
        RowFormat(
            "alpaca",
            "conversation",
            ("instruction", "output"),
            ("input", "system", "history", *IMAGE_COLUMNS),
            _parse_alpaca,
        ),
        RowFormat("mt_bench", "conversation", ("question_id", "turns"), (), _parse_mt_bench),
        RowFormat("preference", "preference", ("prompt", "chosen", "rejected"), IMAGE_COLUMNS, _parse_preference),
        RowFormat("hh_rlhf", "preference", ("chosen", "rejected"), IMAGE_COLUMNS, _parse_hh_rlhf),
        RowFormat(
            "prompt_completion", "conversation", ("prompt", "completion"), IMAGE_COLUMNS, _parse_prompt_completion
        ),
    )
}


def _candidates(kind: RecordKind) -> list[RowFormat]:
    # every format yields a conversation (preference pairs via prompt + chosen); only pairs yield preferences
    return [f for f in FORMATS.values() if kind == "conversation" or f.kind == "preference"]


def detect_format(row: Row, *, kind: RecordKind = "conversation") -> str | None:
    """Name of the first format (in :data:`FORMATS` order) whose identifying columns hold values."""
    present = {key for key, value in row.items() if value is not None}
    return next((f.name for f in _candidates(kind) if f.matches(present)), None)


def _row_id(row: Row, ref: RecordRef) -> str:
    for column in ID_COLUMNS:
        value = row.get(column)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ref.error(column, f"expected a string or integer id, got {type_name(value)}", "wrong_type")
        return check_text(str(value), ref, column)
    assert ref.record_id is not None  # the caller's fallback id
    return ref.record_id


class ExtraColumnsError(RecordError):
    """Columns no format field reads, under ``extra_columns: error``.

    It stops the run even with ``on_invalid: reject``: the choice is about the dataset, not one row.
    """


def _metadata(row: Row, extras: list[str], ref: RecordRef) -> str | None:
    """The record's metadata: the row's own ``metadata`` object plus the ``extras`` columns, as JSON."""
    base = row.get(METADATA_COLUMN)
    if base is None and not extras:
        return None
    if isinstance(base, str):
        try:
            base = json.loads(base)
        except json.JSONDecodeError as err:
            raise ref.error(METADATA_COLUMN, f"not valid JSON: {err}", "malformed") from None
    base = {} if base is None else base
    if not isinstance(base, Mapping):
        raise ref.error(METADATA_COLUMN, f"expected a JSON object, got {type_name(base)}", "wrong_type")
    clash = sorted(base.keys() & set(extras))
    if clash:
        raise ref.error(METADATA_COLUMN, f"key(s) {clash} are also columns of the row; rename one", "unsupported")
    merged = base | {key: row[key] for key in extras}
    return json.dumps(merged, ensure_ascii=False, sort_keys=True, default=_json_default)


@dataclass(frozen=True)
class _RowConverter:
    kind: RecordKind
    fmt: RowFormat | None
    source: str
    require_assistant: bool
    image_root: str | os.PathLike[str] | None
    extra_columns: ExtraColumns

    def __call__(self, row: Any, row_index: int) -> tuple[dict[str, Any], RowFormat, list[str]]:
        """The record, the row's format and its extra columns."""
        ref = RecordRef(f"{self.source}-{row_index}", row_index)
        if not isinstance(row, Mapping):
            raise ref.error(None, f"expected a row object, got {type_name(row)}", "wrong_type")
        ref.record_id = _row_id(row, ref)
        if isinstance(row, UndecodableRow):
            raise ref.error(row.field, row.reason, "malformed")
        source = self.source if row.get(SOURCE_COLUMN) is None else check_text(row[SOURCE_COLUMN], ref, SOURCE_COLUMN)
        row_format = self.fmt or self._detect(row, ref)
        missing = next((key for key in row_format.required if row.get(key) is None), None)
        if missing is not None:
            raise ref.error(missing, f"missing (required by the {row_format.name!r} format)", "missing_field")
        extras = row_format.extra_columns(row)
        if extras and self.extra_columns == "error":
            raise ExtraColumnsError(
                f"column(s) {extras} are not read by the {row_format.name!r} format; set extra_columns: carry "
                "to keep them in each record's metadata, or extra_columns: drop to leave them out",
                code="unsupported",
                record_id=ref.record_id,
                row_index=row_index,
            )
        draft = {"id": ref.record_id, "source": source, **row_format.parse(row, ref)}
        draft["tools"] = row.get(TOOLS_COLUMN)
        draft["metadata"] = _metadata(row, extras if self.extra_columns == "carry" else [], ref)
        if row_format.kind == "conversation":
            return validate_conversation(
                draft, require_assistant=self.require_assistant, ref=ref, image_root=self.image_root
            ), row_format, extras
        preference = validate_preference(draft, ref=ref, image_root=self.image_root)
        if self.kind == "preference":
            return preference, row_format, extras
        # image paths are resolved already, so image_root must not apply twice
        return validate_conversation(
            preference_to_conversation(preference), require_assistant=self.require_assistant, ref=ref
        ), row_format, extras

    def _detect(self, row: Row, ref: RecordRef) -> RowFormat:
        present = {key for key, value in row.items() if value is not None}
        candidates = _candidates(self.kind)
        found = next((f for f in candidates if f.matches(present)), None)
        if found is None:
            tried = "; ".join(f"{f.name} ({', '.join(f.required)})" for f in candidates)
            raise ref.error(
                None, f"matches no {self.kind} format: columns {sorted(present)}; tried {tried}", "unknown_format"
            )
        return found


@dataclass
class ConversionResult:
    """Converted records plus every rejected row, kept whole so it can be published as a split."""

    kind: RecordKind
    extra_columns: ExtraColumns = "carry"  # what happened to the columns no format field reads
    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)  # converted rows per detected format
    unused_columns: Counter[str] = field(default_factory=Counter)  # converted rows with a value in an extra column

    @property
    def carried_columns(self) -> Counter[str]:
        """Extra columns kept in the records' ``metadata`` (converted rows with a value there)."""
        return self.unused_columns if self.extra_columns == "carry" else Counter()

    @property
    def dropped_columns(self) -> Counter[str]:
        """Extra columns left out of the records, as ``extra_columns: drop`` asked."""
        return self.unused_columns if self.extra_columns == "drop" else Counter()

    def extra_column_notes(self) -> dict[str, str]:
        """What happened to the extra columns, for logs and cards: ``{"columns carried in metadata": "a, b"}``."""
        policy = {"carry": "carried in metadata", "drop": "dropped"}.get(self.extra_columns)
        return {f"columns {policy}": ", ".join(sorted(self.unused_columns))} if policy and self.unused_columns else {}

    def first_rejections(self, count: int = 3) -> list[str]:
        """The first rejected rows in full (record, row, field, reason): counts by code alone do not say what to fix."""
        return [
            str(RecordError(r["reason"], code=r["code"], record_id=r["id"], row_index=r["row_index"], field=r["field"]))
            for r in self.rejected[:count]
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "total": len(self.records) + len(self.rejected),
            "converted": len(self.records),
            "rejected": len(self.rejected),
            "rejected_by_reason": dict(Counter(r["code"] for r in self.rejected).most_common()),
            "formats": dict(self.formats.most_common()),
            "carried_columns": dict(self.carried_columns.most_common()),
            "dropped_columns": dict(self.dropped_columns.most_common()),
        }


def _converter(
    kind: RecordKind,
    fmt: str,
    source: str,
    require_assistant: bool,
    image_root: str | os.PathLike[str] | None,
    extra_columns: ExtraColumns,
) -> _RowConverter:
    check_choice("kind", kind, ("conversation", "preference"))
    check_choice("fmt", fmt, ("auto", *FORMATS))
    check_choice("extra_columns", extra_columns, EXTRA_COLUMNS)
    row_format = None if fmt == "auto" else FORMATS[fmt]
    if row_format is not None and kind == "preference" and row_format.kind != "preference":
        raise ValueError(f"format {fmt!r} holds conversations, not preference pairs")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty dataset name, got {source!r}")
    return _RowConverter(kind, row_format, source, require_assistant, image_root, extra_columns)


def convert_row(
    row: Row,
    *,
    kind: RecordKind,
    fmt: str = "auto",
    source: str,
    row_index: int = 0,
    require_assistant: bool = True,
    image_root: str | os.PathLike[str] | None = None,
    extra_columns: ExtraColumns = "carry",
) -> dict[str, Any]:
    """One row as a canonical record; raises :class:`RecordError` when it cannot be one."""
    return _converter(kind, fmt, source, require_assistant, image_root, extra_columns)(row, row_index)[0]


def convert_rows(
    rows: Iterable[Row],
    *,
    kind: RecordKind,
    fmt: str = "auto",
    source: str,
    on_invalid: OnInvalid = "error",
    require_assistant: bool = True,
    image_root: str | os.PathLike[str] | None = None,
    extra_columns: ExtraColumns = "carry",
) -> ConversionResult:
    """Convert and validate rows; ids must be unique across the run.

    ``on_invalid="error"`` raises the first :class:`RecordError`; ``"reject"`` keeps each bad row in
    :attr:`ConversionResult.rejected` (row index, id, field, reason, code, and the row as JSON).
    ``extra_columns`` says what happens to columns no format field reads (see the module docstring);
    ``"error"`` raises :class:`ExtraColumnsError` in either ``on_invalid`` mode. ``image_root``
    resolves relative image paths (usually the dataset's folder). For a ``datasets.Dataset``, pass
    ``alignsmith.sources.iter_rows(dataset)``: it reads Arrow in batches and leaves images encoded.
    """
    check_choice("on_invalid", on_invalid, ("error", "reject"))
    convert = _converter(kind, fmt, source, require_assistant, image_root, extra_columns)
    ids = UniqueIds()
    result = ConversionResult(kind, extra_columns)
    for row_index, row in enumerate(rows):
        try:
            record, row_format, extras = convert(row, row_index)
            ids.claim(record["id"], row_index)
        except RecordError as err:
            if on_invalid == "error" or isinstance(err, ExtraColumnsError):
                raise
            result.rejected.append(rejection(err, row))
            continue
        result.records.append(record)
        result.formats[row_format.name] += 1
        result.unused_columns.update(extras)
    return result


def rejection(err: RecordError, row: Any) -> dict[str, Any]:
    """A rejected row as a flat dict (one row of a ``rejected`` split)."""
    return {
        "row_index": err.row_index,
        "id": err.record_id,
        "field": err.field,
        "reason": err.reason,
        "code": err.code,
        "raw": json.dumps(row, ensure_ascii=False, default=_json_default),
    }


def _json_default(value: Any) -> Any:
    """JSON for what rows hold besides JSON types: bytes and PIL images as base64, arrays as lists."""
    import PIL.Image

    if isinstance(value, PIL.Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format=value.format or "PNG")
        value = buffer.getvalue()
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
