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

from alignsmith.lineage import NoLineageError, pin, read_lineage
from alignsmith.publish import Release, TagExistsError
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
        existing = _published_release(stage)
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


def _published_release(stage: TrainRecipe) -> Release | None:
    """This stage's tagged release, when a previous run of the same stage recipe published it."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    tag = stage.output.tag
    if tag is None:
        return None
    try:
        lineage, sha = read_lineage(stage.output.repo_id, "model", tag)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return None
    except NoLineageError:
        lineage = None
    if lineage is None or lineage.recipe != to_dict(stage):
        raise TagExistsError(
            f"model {stage.output.repo_id} already has tag {tag!r} from a different recipe; published tags are "
            "never moved: choose a new tag for this stage"
        )
    return Release(stage.output.repo_id, "model", sha, tag)
