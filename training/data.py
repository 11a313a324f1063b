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


def load_mixture(recipe: MixtureRecipe, kind: RecordKind) -> TrainingData:
    """Load, validate, weight, mix and split ``recipe.datasets`` as ``kind`` records in trl's columns."""
    import datasets

    samples, inputs, parts = [], [], []
    for index, entry in enumerate(recipe.datasets):
        loaded = load_source(entry)
        rows = datasets.Dataset.from_list(_validated_rows(loaded, kind))
        sample = weighted_sample(rows, entry, seed=(recipe.seed, index))
        samples.append(sample)
        inputs.append(mixture_ref(loaded, "train"))
        parts.append(MixturePart(entry.describe(), len(rows), len(sample)))
    train, held_out = shuffle_and_split(datasets.concatenate_datasets(samples), recipe)
    return TrainingData(train, held_out, inputs, parts)


def _validated_rows(loaded: LoadedSource, kind: RecordKind) -> list[dict[str, Any]]:
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
    if with_images is not None:
        raise TrainingDataError(
            f"{where}: record {with_images['id']!r}, field 'images': text-only training cannot use images"
        )
    return [{column: _trl_value(record, column) for column in TRL_COLUMNS[kind]} for record in result.records]


def _trl_value(record: dict[str, Any], column: str) -> Any:
    if column == "tools":
        return json.dumps(record["tools"]) if "tools" in record else None
    return record[column]


def _describe_rejection(rejection: dict[str, Any]) -> str:
    where = f"record {rejection['id']!r} (row {rejection['row_index']})"
    if rejection["field"] is not None:
        where += f", field {rejection['field']!r}"
    return f"{where}: {rejection['reason']}"
