"""The training mixture: published datasets read at pinned commits, validated, weighted and split.

Every row goes through alignsmith's converters before training, so a dataset with the wrong
columns, a conversation without an assistant turn or a malformed preference pair stops the run
here with the record id and field, instead of surfacing as a shape error deep inside trl. Sampling,
shuffling and the eval split are all seeded (trl's own mixer splits unseeded).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignsmith.converters import Kind
from alignsmith.lineage import ArtifactRef
from alignsmith.sources import LoadedSource, load_source

from training.recipes import DataRecipe, MixtureEntry

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

# the columns trl reads for each record kind; ids, sources and (empty) image lists stay behind
TRL_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "conversation": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
}


class TrainingDataError(ValueError):
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


def load_mixture(recipe: DataRecipe, kind: Kind) -> TrainingData:
    """Load, validate, weight, mix and split ``recipe.datasets`` as ``kind`` records in trl's columns."""
    import datasets

    samples, inputs, parts = [], [], []
    for index, entry in enumerate(recipe.datasets):
        loaded = load_source(entry)
        rows = datasets.Dataset.from_list(_validated_rows(loaded, kind))
        sample = weighted_sample(rows, entry, seed=(recipe.seed, index))
        samples.append(sample)
        inputs.append(artifact_ref(loaded, "train"))
        parts.append(MixturePart(entry.describe(), len(rows), len(sample)))
    train, held_out = shuffle_and_split(datasets.concatenate_datasets(samples), recipe)
    return TrainingData(train, held_out, inputs, parts)


def shuffle_and_split(mixed: datasets.Dataset, recipe: DataRecipe) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The mixture shuffled, and ``recipe.eval_size`` rows held out (both seeded with ``recipe.seed``)."""
    mixed = mixed.shuffle(seed=recipe.seed)
    if recipe.eval_size == 0:
        return mixed, None
    # a fraction rounds up, as train_test_split itself does
    held_out = math.ceil(recipe.eval_size * len(mixed)) if recipe.eval_size < 1 else int(recipe.eval_size)
    if held_out >= len(mixed):
        raise TrainingDataError(
            f"data.eval_size: {recipe.eval_size} holds out {held_out} of the mixture's {len(mixed)} rows, "
            "leaving none to train on"
        )
    split = mixed.train_test_split(test_size=held_out, seed=recipe.seed)
    return split["train"], split["test"]


def _validated_rows(loaded: LoadedSource, kind: Kind) -> list[dict[str, Any]]:
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
    return [{column: record[column] for column in TRL_COLUMNS[kind]} for record in result.records]


def _describe_rejection(rejection: dict[str, Any]) -> str:
    where = f"record {rejection['id']!r} (row {rejection['row_index']})"
    if rejection["field"] is not None:
        where += f", field {rejection['field']!r}"
    return f"{where}: {rejection['reason']}"


def weighted_sample(rows: datasets.Dataset, entry: MixtureEntry, seed: tuple[int, int]) -> datasets.Dataset:
    """A seeded sample of ``weight * len(rows)`` rows; weights above 1 cycle through a permutation."""
    import numpy as np

    count = round(len(rows) * entry.weight)
    if count == 0:
        raise TrainingDataError(f"{entry.describe()}: weight {entry.weight} of {len(rows)} rows selects none")
    order = np.random.default_rng(list(seed)).permutation(len(rows))
    return rows.select(np.resize(order, count))


def artifact_ref(loaded: LoadedSource, purpose: str) -> ArtifactRef:
    """The source pinned for lineage (Hub commit, or a local path's content hash), role ``purpose:config/split``."""
    src = loaded.source
    return loaded.artifact_ref(f"{purpose}:{src.config or 'default'}/{src.split}")
