"""``alignsmith build convert``: any supported dataset -> validated alignsmith records on the Hub.

The published dataset's ``default`` config holds the canonical records (conversations, or trl-style
preference pairs); its ``rejected`` config keeps every row that could not be converted, with the
record id, field and reason, and the row itself as JSON.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from alignsmith.publish import Release
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text
from alignsmith.sources import DatasetSource

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ConvertRecipe(HubRecipe):
    source: DatasetSource = help_text("The dataset to convert.")
    kind: Literal["conversation", "preference"] = help_text(
        "Record kind: 'conversation' (messages) or 'preference' (prompt/chosen/rejected).", default="conversation"
    )
    require_assistant: bool = help_text(
        "Conversations must contain an assistant reply (false for prompt-only evaluation sets).", default=True
    )
    on_invalid: Literal["error", "reject"] = help_text(
        "Malformed rows: stop at the first ('error') or keep them in the 'rejected' config ('reject').", default="reject"
    )
    config_name: str = help_text("Config name of the published records.", default="default")
    output: OutputRepo = help_text("Dataset repo (and tag) to publish to.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.source.check_gives(self.kind, "source")
        if self.kind == "preference" and not self.require_assistant:
            raise RecipeError("require_assistant: applies to kind 'conversation'; a preference pair always has replies")
        if self.config_name == "rejected":  # it would overwrite the config of the rows that could not be converted
            raise RecipeError("config_name: 'rejected' holds the rows that could not be converted; choose another name")


def run(recipe: ConvertRecipe) -> Release:
    from alignsmith.cards import CardContent
    from alignsmith.lineage import Lineage
    from alignsmith.publish import publish_dataset
    from alignsmith.recipes import to_dict
    from alignsmith.records import conversation_features, dataset_from_rows, preference_features, rejected_features
    from alignsmith.sources import load_source

    loaded = load_source(recipe.source)
    result = loaded.to_records(recipe.kind, on_invalid=recipe.on_invalid, require_assistant=recipe.require_assistant)
    summary = result.summary()
    log.info("%s: %d rows, %d converted, %d rejected %s", loaded.name, summary["total"], summary["converted"],
             summary["rejected"], summary["rejected_by_reason"] or "")
    for note, columns in result.extra_column_notes().items():
        log.info("%s: %s: %s", loaded.name, note, columns)
    features = conversation_features() if recipe.kind == "conversation" else preference_features()
    configs = {
        recipe.config_name: {"train": dataset_from_rows(result.records, features)},
        "rejected": {"train": dataset_from_rows(result.rejected, rejected_features())},
    }
    lineage = Lineage(command="build convert", recipe=to_dict(recipe), inputs=[loaded.artifact_ref("source")])
    stats = {key: value for key, value in summary.items() if not isinstance(value, dict)}
    stats.update({f"rejected: {code}": n for code, n in summary["rejected_by_reason"].items()})
    stats.update({f"format: {name}": n for name, n in summary["formats"].items()})
    stats.update({f"column carried in metadata: {name}": n for name, n in summary["carried_columns"].items()})
    stats.update({f"column dropped: {name}": n for name, n in summary["dropped_columns"].items()})
    content = CardContent(
        title=f"{recipe.output.repo_id}",
        summary=f"`{loaded.name}` converted to alignsmith {recipe.kind} records and validated.",
        license=recipe.output.license,
        tags=["alignsmith-records", recipe.kind],
        statistics=stats,
        config_descriptions={
            recipe.config_name: f"the validated alignsmith {recipe.kind} records.",
            "rejected": "every row that could not be converted, with the record id, field and reason, and the row "
            "itself as JSON.",
        },
    )
    return publish_dataset(recipe.output, configs, content, lineage,
                           default_config=recipe.config_name)
