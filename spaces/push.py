"""``space push``: render the Space folder and publish it as one tagged commit of a Space repo."""

from __future__ import annotations

import logging
from pathlib import Path

from alignsmith.lineage import Lineage, pin
from alignsmith.publish import Release, commit_release, ensure_tag_free
from alignsmith.recipes import RecipeError, to_dict
from spaces.config import RepoAt, SpaceRecipe
from spaces.folder import render_space

log = logging.getLogger(__name__)


def space_lineage(recipe: SpaceRecipe) -> Lineage:
    """The recipe, and every repo the Space shows pinned to the sha its revision names now."""
    show = recipe.show
    datasets = [("results", show.results)] if show.results else []
    datasets += [(role, text) for role in ("deita", "pf", "answers", "judgments") for text in getattr(show, role)]
    inputs = [pin(role, (ref := RepoAt.parse(text)).repo_id, "dataset", ref.revision) for role, text in datasets]
    models = [pin("model", ref.repo_id, "model", ref.revision) for ref in show.repos("models")]
    return Lineage(command="space push", recipe=to_dict(recipe), inputs=inputs, models=models)


def run(recipe: SpaceRecipe) -> Release:
    from huggingface_hub import CommitOperationAdd

    if recipe.output is None or recipe.output.tag is None:
        raise RecipeError("output: `space push` needs output.repo_id and output.tag (a release is a tagged commit)")
    ensure_tag_free(recipe.output.repo_id, "space", recipe.output.tag)  # before anything is rendered
    folder = render_space(recipe.show, recipe.folder, recipe.license, space_lineage(recipe))
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    ops = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in files]
    release = commit_release(recipe.output, "space", ops, f"alignsmith space push: {recipe.show.title}")
    print(f"published Space {release.repo_id} @ {release.commit_sha} (tag {release.tag}) from {folder}")
    return release
