"""``alignsmith build preferences``: a DPO dataset mixed from published preference sets.

Sources may be trl-style ``prompt``/``chosen``/``rejected`` pairs or HH-RLHF-style paired
dialogues (the converters split off the shared prompt); each is read at a pinned revision and
sampled by weight, the mixture is shuffled and a test split held out with the recipe's seed. The
result is published like any alignsmith dataset: ``default`` (or ``config_name``) with ``train``
and ``test`` splits, and a ``rejected`` config keeping every row that is not a valid pair, with the
dataset it came from, the record id, field and reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from alignsmith.cards import CardContent
from alignsmith.converters import rejection
from alignsmith.lineage import Lineage
from alignsmith.mixtures import MixtureError, MixtureRecipe, mixture_ref, shuffle_and_split, weighted_sample
from alignsmith.publish import Release, publish_dataset
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text, to_dict
from alignsmith.records import RecordError, dataset_from_rows, preference_features, rejected_features
from alignsmith.sources import load_source

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PreferencesRecipe(HubRecipe):
    data: MixtureRecipe = help_text(
        "Preference sources (path, config, split, revision, format: auto|preference|hh_rlhf, weight), the seed, "
        "and eval_size: the rows held out as the test split."
    )
    config_name: str = help_text("Config name of the published pairs.", default="default")
    output: OutputRepo = help_text("Dataset repo (and tag) to publish to.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.config_name == "rejected":
            raise RecipeError("config_name: 'rejected' holds the rows that are not valid pairs; choose another name")
        for index, entry in enumerate(self.data.datasets):
            where = f"data.datasets[{index}]"
            entry.check_gives("preference", where)
            if entry.weight > 1:
                raise RecipeError(f"{where}.weight: {entry.weight} would publish repeated pairs; use at most 1")


def run(recipe: PreferencesRecipe) -> Release:
    """Read, validate, mix and split the sources, then publish pairs and rejected rows as one release."""
    import datasets

    samples, rejected, inputs = [], [], []
    statistics: dict[str, Any] = {}
    first_seen: dict[str, int] = {}  # id -> the entry that had it first: ids stay unique across sources, as within one
    for index, entry in enumerate(recipe.data.datasets):
        loaded = load_source(entry)
        result = loaded.to_records("preference", on_invalid="reject")
        where = entry.describe()
        records = []
        for record in result.records:
            other = first_seen.setdefault(record["id"], index)
            if other != index:  # entries may describe alike (same path, other data_files), so compare positions
                duplicate = RecordError(
                    f"duplicate id: data.datasets[{other}] ({recipe.data.datasets[other].describe()}) has it too",
                    code="duplicate_id",
                    record_id=record["id"],
                    field="id",
                )
                result.rejected.append(rejection(duplicate, record))
            else:
                records.append(record)
        rejected += [{**row, "dataset": where} for row in result.rejected]
        if not records:
            raise MixtureError(f"{where}: none of its {len(result.rejected)} rows is a valid preference pair")
        pairs = dataset_from_rows(records, preference_features())
        sample = weighted_sample(pairs, entry, seed=(recipe.data.seed, index))
        samples.append(sample)
        inputs.append(mixture_ref(loaded, "source"))
        label = f"data.datasets[{index}] ({loaded.name})"  # the card's: no local path, the recipe has the rest
        statistics[f"{label}: pairs used"] = f"{len(sample)} of {len(records)} valid ({len(result.rejected)} rejected)"
        statistics |= {f"{label}: {note}": columns for note, columns in result.extra_column_notes().items()}
        log.info("%s: %d valid pairs, %d used, %d rejected", where, len(records), len(sample), len(result.rejected))
    train, test = shuffle_and_split(datasets.concatenate_datasets(samples), recipe.data)
    splits = {"train": train} if test is None else {"train": train, "test": test}
    rejected_rows = dataset_from_rows(rejected, rejected_features("dataset"))
    configs = {recipe.config_name: splits, "rejected": {"train": rejected_rows}}
    statistics |= {f"{name} pairs": len(split) for name, split in splits.items()} | {"rejected rows": len(rejected)}
    content = CardContent(
        title=recipe.output.repo_id,
        summary=(
            "Preference pairs (trl's conversational format: `prompt`, `chosen`, `rejected` message lists) for DPO, "
            f"mixed from {len(samples)} source(s) with seed {recipe.data.seed}."
        ),
        tags=["alignsmith-records", "preference", "dpo"],
        statistics=statistics,
        config_descriptions={
            recipe.config_name: "the mixed, shuffled pairs; `test`, when there is one, holds out `data.eval_size` "
            "of them.",
            "rejected": "every row that is not a valid pair, with the `data.datasets` entry it came from, the record "
            "id, field and reason.",
        },
    )
    lineage = Lineage(command="build preferences", recipe=to_dict(recipe), inputs=inputs)
    return publish_dataset(recipe.output, configs, content, lineage, default_config=recipe.config_name)
