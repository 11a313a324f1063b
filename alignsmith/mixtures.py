"""Dataset mixtures: published datasets sampled by weight, shuffled and split, all seeded.

Training mixes its inputs this way and so does the preference-dataset builder; trl's own mixer
splits unseeded, so a rerun would train and evaluate on other rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef
from alignsmith.recipes import RecipeError, help_text
from alignsmith.sources import DatasetSource, LoadedSource

if TYPE_CHECKING:
    import datasets


class MixtureError(AlignsmithError):
    """A mixture that cannot be built from its datasets; the message names the dataset."""


@dataclass
class MixtureEntry(DatasetSource):
    """One dataset of a mixture."""

    weight: float = help_text(
        "Fraction of this dataset's rows to use (seeded sample); above 1 repeats rows (2.0 = every row twice).",
        default=1.0,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.weight < math.inf:  # NaN fails too
            raise RecipeError(f"weight: must be positive and finite, got {self.weight}")


@dataclass(kw_only=True)
class MixtureRecipe:
    """The datasets to mix and the held-out evaluation split (both seeded)."""

    datasets: list[MixtureEntry] = help_text("Datasets to mix: path, config, split, revision, weight.")
    seed: int = help_text("Seed for sampling, shuffling and the eval split.", default=42)
    eval_size: float = help_text(
        "Held-out evaluation rows: a fraction (< 1) or a row count (>= 1) of the mixture; 0 for none.", default=0.0
    )

    def __post_init__(self) -> None:
        if not self.datasets:
            raise RecipeError("datasets: at least one dataset is required")
        if not self.eval_size >= 0 or (self.eval_size >= 1 and not float(self.eval_size).is_integer()):  # NaN fails
            raise RecipeError(f"eval_size: expected a fraction below 1 or a whole row count, got {self.eval_size}")


def weighted_sample(rows: datasets.Dataset, entry: MixtureEntry, seed: tuple[int, int]) -> datasets.Dataset:
    """A seeded sample of ``weight * len(rows)`` rows; weights above 1 cycle through a permutation."""
    import numpy as np

    count = round(len(rows) * entry.weight)
    if count == 0:
        raise MixtureError(f"{entry.describe()}: weight {entry.weight} of {len(rows)} rows selects none")
    order = np.random.default_rng(list(seed)).permutation(len(rows))
    return rows.select(np.resize(order, count))


def shuffle_and_split(
    mixed: datasets.Dataset, recipe: MixtureRecipe
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The mixture shuffled, and ``recipe.eval_size`` rows held out (both seeded with ``recipe.seed``)."""
    mixed = mixed.shuffle(seed=recipe.seed)
    if recipe.eval_size == 0:
        return mixed, None
    # a fraction rounds up, as train_test_split itself does
    held_out = math.ceil(recipe.eval_size * len(mixed)) if recipe.eval_size < 1 else int(recipe.eval_size)
    if held_out >= len(mixed):
        raise MixtureError(
            f"data.eval_size: {recipe.eval_size} holds out {held_out} of the mixture's {len(mixed)} rows, "
            "leaving none to train on"
        )
    split = mixed.train_test_split(test_size=held_out, seed=recipe.seed)
    return split["train"], split["test"]


def mixture_ref(loaded: LoadedSource, purpose: str) -> ArtifactRef:
    """The source pinned for lineage (Hub commit, or a local path's content hash), role ``purpose:config/split``."""
    src = loaded.source
    return loaded.artifact_ref(f"{purpose}:{src.config or 'default'}/{src.split}")
