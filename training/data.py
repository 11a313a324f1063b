"""The training mixture: published datasets read at pinned commits, validated, weighted and split.

Every row goes through alignsmith's converters before training, so a dataset with the wrong
columns, a conversation without an assistant turn or a malformed preference pair stops the run
here with the record id and field, instead of surfacing as a shape error deep inside trl. Sampling,
shuffling and the eval split are all seeded (trl's own mixer splits unseeded).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignsmith.converters import RecordKind
from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef
from alignsmith.mixtures import MixtureRecipe, mixture_ref, shuffle_and_split, weighted_sample
from alignsmith.records import IMAGE_PLACEHOLDER, RecordError
from alignsmith.sources import LoadedSource, load_source

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# the columns trl reads for each record kind; ids, sources, metadata and (empty) image lists stay behind.
# SFT hands ``tools`` to the chat template; it goes as a JSON string (trl parses one), because Arrow would
# merge the differing tool schemas of a dataset into one struct, adding null keys to each.
TRL_COLUMNS: dict[RecordKind, tuple[str, ...]] = {
    "conversation": ("messages", "tools"),
    "preference": ("prompt", "chosen", "rejected"),
}


class TrainingDataError(AlignsmithError):
    """A training dataset that cannot be trained on; the message names the dataset and records."""


@dataclass(frozen=True)
class MixturePart:
    """What one mixture entry contributed, for the model card."""

    description: str
    available: int
    used: int


@dataclass
class TrainingData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    inputs: list[ArtifactRef]
    parts: list[MixturePart]


def load_mixture(
    recipe: MixtureRecipe, kind: RecordKind, *, prompt_format: str = "chat", vision: bool = False
) -> TrainingData:
    """Load, validate, weight, mix and split ``recipe.datasets`` as ``kind`` records.

    ``prompt_format="raw"`` turns single-turn conversations into trl's standard prompt-completion
    columns; ``vision`` (an image-text-to-text base) keeps each row's images in an ``images`` column.
    Conversations keep their ``id`` and ``<image>`` placeholders until :func:`for_model`.
    """
    import datasets

    samples, inputs, parts = [], [], []
    for index, entry in enumerate(recipe.datasets):
        loaded = load_source(entry)
        rows = datasets.Dataset.from_list(_validated_rows(loaded, kind, prompt_format, vision))
        if vision:
            rows = rows.cast_column("images", datasets.List(datasets.Image()))
        sample = weighted_sample(rows, entry, seed=(recipe.seed, index))
        samples.append(sample)
        inputs.append(mixture_ref(loaded, "train"))
        parts.append(MixturePart(entry.describe(), len(rows), len(sample)))
    train, held_out = shuffle_and_split(datasets.concatenate_datasets(samples), recipe)
    return TrainingData(train, held_out, inputs, parts)


@dataclass(frozen=True)
class Multiturn:
    """Multi-turn augmentation of the training rows (:mod:`alignsmith.multiturn`) with its budgets."""

    max_img: int
    max_tokens: int
    max_draws: int
    truncate: str
    seed: int


def for_model(
    data: TrainingData,
    tokenizer: Any,
    image_token: str | None,
    *,
    raw: bool,
    multiturn: Multiturn | None = None,
    image_tokens: int = 1,
) -> TrainingData:
    """Put what the loaded model's tokenizer decides into the rows, now that it is loaded.

    Raw completions end with the EOS (the model learns to stop; trl adds it to text rows only).
    For a vision-language model, raw prompts get the processor's image token in place of each
    ``<image>`` placeholder and the BOS the tokenizer would add (trl's vision collator adds no
    special tokens, while a processor called at inference time does). Conversations are first
    augmented with random later turns when ``multiturn`` is set (training rows only; the budget
    counts the chat template's tokens and ``image_tokens`` per image), then, for a vision-language
    model, turned into structured content with each image in its turn.
    """
    if raw:
        return _each(data, _raw_renderer(tokenizer, image_token), "rendering prompts for the model")
    train = data.train if multiturn is None else _augmented(data.train, multiturn, tokenizer, image_tokens)
    data = TrainingData(train, data.eval, data.inputs, data.parts)
    if image_token is not None:
        data = _each(data, _structured, "placing images in their turns")
    return TrainingData(*(None if d is None else d.remove_columns("id") for d in (data.train, data.eval)),
                        data.inputs, data.parts)


def _each(data: TrainingData, render: Any, desc: str) -> TrainingData:
    train, held_out = (None if d is None else d.map(render, desc=desc) for d in (data.train, data.eval))
    return TrainingData(train, held_out, data.inputs, data.parts)


def _raw_renderer(tokenizer: Any, image_token: str | None) -> Any:
    bos = tokenizer.bos_token if image_token is not None and _adds_bos(tokenizer) else ""
    eos = tokenizer.eos_token

    def render(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["prompt"] if image_token is None else row["prompt"].replace(IMAGE_PLACEHOLDER, image_token)
        completion = row["completion"] if row["completion"].endswith(eos) else row["completion"] + eos
        return {"prompt": bos + prompt, "completion": completion}

    return render


def _structured(row: dict[str, Any]) -> dict[str, Any]:
    """Messages as structured content with each image part where its placeholder was (trl would otherwise put
    every image before the first user turn)."""
    return {"messages": [{"role": m["role"], "content": _parts(m["content"])} for m in row["messages"]]}


def _augmented(train: datasets.Dataset, spec: Multiturn, tokenizer: Any, image_tokens: int) -> datasets.Dataset:
    """Every single-turn training row as the first turn of a conversation padded with random single-turn rows of
    the whole mixture; rows that already hold a dialogue (or tools) stay as they are and are not drawn."""
    import datasets

    from alignsmith.multiturn import Sample, multiturn_conversation

    has_images = "images" in train.column_names
    rows = list(train.cast_column("images", datasets.List(datasets.Image(decode=False))) if has_images else train)
    single = [i for i, row in enumerate(rows)
              if [m["role"] for m in row["messages"]] == ["user", "assistant"] and not row.get("tools")]
    if len(single) < len(rows):
        log.info("multiturn: %d of %d training rows hold a dialogue (or tools) already: kept as they are, not drawn",
                 len(rows) - len(single), len(rows))
    pool = [Sample(rows[i]["id"], "mixture", rows[i]["messages"][0]["content"], rows[i]["messages"][1]["content"],
                   tuple(rows[i].get("images") or ())) for i in single]

    def count_tokens(messages: Any) -> int:
        text = [{"role": m["role"], "content": m["content"]} for m in messages]
        placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        return len(tokenizer.apply_chat_template(text, tokenize=True)) + placeholders * (image_tokens - 1)

    try:
        for i, sample in zip(single, pool):
            record = multiturn_conversation(sample, pool, seed=spec.seed, max_img=spec.max_img,
                                            max_tokens=spec.max_tokens, count_tokens=count_tokens,
                                            max_draws=spec.max_draws, truncate=spec.truncate)
            rows[i] = {**rows[i], "id": record["id"], "messages": record["messages"],
                       **({"images": record["images"]} if has_images else {})}
    except RecordError as err:
        raise TrainingDataError(f"multiturn: {err}") from None
    result = datasets.Dataset.from_list(rows)
    return result.cast_column("images", datasets.List(datasets.Image())) if has_images else result


def tokens_per_image(processor: Any, image_token: str) -> int:
    """How many tokens the processor expands one image into, probed with a 336-pixel square (the count of
    dynamic-resolution processors varies with the image: a budget then is approximate)."""
    from PIL import Image

    probe = processor(text=image_token, images=[Image.new("RGB", (336, 336))])
    image_id = processor.tokenizer.convert_tokens_to_ids(image_token)
    return max(1, sum(1 for token in probe["input_ids"][0] if token == image_id))


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _validated_rows(loaded: LoadedSource, kind: RecordKind, prompt_format: str, vision: bool) -> list[dict[str, Any]]:
    """The source's rows as canonical ``kind`` records, reduced to trl's columns; any bad row is fatal."""
    result = loaded.to_records(kind, on_invalid="reject")
    where = loaded.source.describe()
    if result.rejected:
        summary = result.summary()
        reasons = ", ".join(f"{code}: {count}" for code, count in summary["rejected_by_reason"].items())
        raise TrainingDataError(
            f"{where}: {summary['rejected']} of {summary['total']} rows are not valid {kind} records ({reasons}); "
            f"the first is {_describe_rejection(result.rejected[0])}"
        )
    if not result.records:
        raise TrainingDataError(f"{where}: no rows")
    if result.unused_columns:
        log.info("%s: columns not used for training: %s", where, ", ".join(sorted(result.unused_columns)))
    with_images = next((r for r in result.records if r["images"]), None)
    if with_images is not None and not vision:
        raise TrainingDataError(
            f"{where}: record {with_images['id']!r}, field 'images': the base model is text-only; train an "
            "image-text-to-text model on rows with images"
        )
    if prompt_format == "raw":
        return [_raw_row(record, where, vision) for record in result.records]
    if vision:
        return [_vision_chat_row(record, where) for record in result.records]
    return [{"id": record["id"], **{column: _trl_value(record, column) for column in TRL_COLUMNS[kind]}}
            for record in result.records]


def _raw_row(record: dict[str, Any], where: str, vision: bool) -> dict[str, Any]:
    """A single-turn conversation as trl's standard prompt-completion row (the text as is)."""
    roles = [message["role"] for message in record["messages"]]
    if roles != ["user", "assistant"] or record.get("tools"):
        raise TrainingDataError(
            f"{where}: record {record['id']!r}, field 'messages': prompt_format raw trains on one prompt and its "
            f"completion (a user turn, then an assistant turn, no tools); this record has roles {roles}"
        )
    prompt, completion = (message["content"] for message in record["messages"])
    if IMAGE_PLACEHOLDER in completion:
        raise TrainingDataError(f"{where}: record {record['id']!r}, field 'completion': an image in the completion "
                                "cannot be trained on; images belong in the prompt")
    row = {"prompt": prompt, "completion": completion}
    return row | {"images": record["images"]} if vision else row


def _vision_chat_row(record: dict[str, Any], where: str) -> dict[str, Any]:
    if record.get("tools"):
        raise TrainingDataError(f"{where}: record {record['id']!r}, field 'tools': tool calls are not supported "
                                "with images")
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return {"id": record["id"], "messages": messages, "images": record["images"]}


def _parts(content: str) -> list[dict[str, Any]]:
    pieces = content.split(IMAGE_PLACEHOLDER)
    parts: list[dict[str, Any]] = []
    for index, text in enumerate(pieces):
        if index:
            parts.append({"type": "image", "text": None})
        if text:
            parts.append({"type": "text", "text": text})
    return parts


def _trl_value(record: dict[str, Any], column: str) -> Any:
    if column == "tools":
        return json.dumps(record["tools"]) if "tools" in record else None
    return record[column]


def _describe_rejection(rejection: dict[str, Any]) -> str:
    where = f"record {rejection['id']!r} (row {rejection['row_index']})"
    if rejection["field"] is not None:
        where += f", field {rejection['field']!r}"
    return f"{where}: {rejection['reason']}"
