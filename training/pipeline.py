"""Multi-stage runs: SFT then DPO, or Polite Flamingo's U-shaped schedule, from one recipe.

Stages talk through the Hub like separate runs would: each stage publishes a release, and the
next stage's base model is that release pinned to its commit sha, so its card's lineage points at
exactly what it started from. A re-run after a crash skips stages whose tagged release already
exists and was made by the same stage recipe, and resumes the interrupted stage from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from alignsmith.lineage import pin
from alignsmith.publish import Release, release_of_same_recipe
from alignsmith.recipes import to_dict

from training.recipes import PipelineRecipe, TrainRecipe
from training.train import train

log = logging.getLogger(__name__)


def run(recipe: PipelineRecipe) -> list[Release]:
    """Entry point for ``alignsmith train run``: run every stage in order; returns their releases."""
    stages = recipe.stage_recipes()
    _check_data_exists(stages)
    releases: list[Release] = []
    for index, stage in enumerate(stages):
        if releases:
            stage = _starting_from(stage, releases[-1].commit_sha)
        name = f"stage {index + 1}/{len(recipe.stages)} ({stage.kind} -> {stage.output.repo_id})"
        existing = release_of_same_recipe(stage.output, "model", to_dict(stage))
        if existing is not None:
            log.info("%s: already published at %s, skipping", name, existing.commit_sha)
            releases.append(existing)
            continue
        log.info("%s: starting from %s@%s", name, stage.base_model.path, stage.base_model.revision)
        releases.append(train(stage).release)
    return releases


def _check_data_exists(stages: list[TrainRecipe]) -> None:
    """Find a later stage's missing dataset or revision before the first stage spends its compute."""
    for index, stage in enumerate(stages):
        for entry in stage.data.datasets:
            if not Path(entry.path).expanduser().exists():  # local paths win, as in load_source
                pin(f"stages[{index}].data", entry.path, "dataset", entry.revision)


def _starting_from(stage: TrainRecipe, sha: str) -> TrainRecipe:
    return dataclasses.replace(stage, base_model=dataclasses.replace(stage.base_model, revision=sha))
