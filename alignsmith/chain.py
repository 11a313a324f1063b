"""``alignsmith chain run``: a chain of CLI commands from one recipe, each step naming a command and its recipe.

The main job is a chain (tiny models, Deita, SFT, DPO, evaluation, Polite Flamingo), so it is a recipe
like any other run rather than a shell script: every step's command and recipe (with the chain's Hub
and the step's overrides) is checked when the chain loads, so a typo in step 7 fails before step 1
spends anything. Steps run in order through the same functions the CLI calls, and talk only through
the Hub. A rerun skips a step whose tagged release exists and was made by the same recipe (a tag made
by another recipe stops the chain, since published tags are never moved); a step without a tagged
output (``train run`` and ``eval run`` skip their own published stages, ``eval metrics`` appends results)
runs again. The core names no stage: commands are found through the CLI's registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from alignsmith.cli import Command, _resolve, command_groups, load_command_recipe, run_loaded_recipe
from alignsmith.errors import AlignsmithError
from alignsmith.publish import Release
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text, to_dict

log = logging.getLogger(__name__)

_PLACE_KEYS = ("hub", "hub_root")  # where a recipe ran, not what it made: left out when recipes are compared


class ChainRecipeError(RecipeError):
    """A chain step whose command or recipe is wrong: found when the chain loads, naming the step."""


class ChainStepError(AlignsmithError):
    """A step that failed while the chain ran: the chain stops there, naming the step."""


@dataclasses.dataclass(kw_only=True)
class Step:
    """One command of the chain: a recipe command (``config`` + ``overrides``) or a plain one (``args``)."""

    name: str = help_text("A short name for the step, used in logs, errors and the summary.")
    command: str = help_text("'<group> <command>' as on the command line, e.g. 'build deita'.")
    config: str | None = help_text("The step's recipe file (recipe commands).", default=None)
    overrides: dict[str, Any] = help_text("Recipe keys to override, dotted: {output.tag: v1.0.1}.",
                                          default_factory=dict)
    args: list[str] = help_text("Command-line arguments of a command without a recipe (e.g. 'models tiny').",
                                default_factory=list)


@dataclasses.dataclass
class PlannedStep:
    """A step checked at load: its command, and its recipe (recipe commands) or its full argv (plain ones)."""

    number: int
    step: Step
    cmd: Command
    recipe: Any = None
    argv: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"step {self.number} {self.step.name!r} ({self.step.command})"


@dataclasses.dataclass(kw_only=True)
class ChainRecipe(HubRecipe):
    """Commands run in order on one Hub; the chain's ``hub``/``hub_root`` are every step's."""

    steps: list[Step] = help_text("The steps, in order: {name, command, config, overrides} or {name, command, args}.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.steps:
            raise RecipeError("steps: a chain needs at least one step")
        names = [step.name for step in self.steps]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise RecipeError(f"steps: step names must be unique; repeated: {', '.join(repeated)}")
        self._planned = [self._plan(number, step) for number, step in enumerate(self.steps, 1)]

    def planned(self) -> list[PlannedStep]:
        return self._planned

    def _plan(self, number: int, step: Step) -> PlannedStep:
        where = f"steps[{number - 1}] ({step.name})"
        group, _, name = step.command.strip().partition(" ")
        groups = command_groups()
        if group not in groups:
            raise ChainRecipeError(f"{where}: unknown group {group!r} in {step.command!r}; groups: {', '.join(groups)}")
        if name.strip() not in groups[group].commands:
            raise ChainRecipeError(f"{where}: unknown command {step.command!r}; {group} commands: "
                                   f"{', '.join(groups[group].commands)}")
        cmd = groups[group].commands[name.strip()]
        if cmd.run == f"{__name__}:run":
            raise ChainRecipeError(f"{where}: a chain cannot run a chain")
        if cmd.recipe is None:
            if step.config is not None or step.overrides:
                raise ChainRecipeError(f"{where}: {step.command} takes no recipe: give its arguments as args")
            return PlannedStep(number, step, cmd, argv=[*step.args, *self._hub_args("--hub-root")])
        if step.args:
            raise ChainRecipeError(f"{where}: {step.command} takes a recipe: give config and overrides, not args")
        if step.config is None:
            raise ChainRecipeError(f"{where}: {step.command} needs config (its recipe file)")
        overrides = [item for key, value in step.overrides.items() for item in (f"--{key}", json.dumps(value))]
        try:
            hub = self._hub_args("--hub_root") if issubclass(_resolve(cmd.recipe), HubRecipe) else []
            recipe = load_command_recipe(cmd, step.config, overrides + hub)
        except AlignsmithError as err:
            raise ChainRecipeError(f"{where}: {step.config}: {err}") from None
        return PlannedStep(number, step, cmd, recipe=recipe)

    def _hub_args(self, root_flag: str) -> list[str]:
        return ["--hub", self.hub] + ([root_flag, self.hub_root] if self.hub_root else [])


def run(recipe: ChainRecipe) -> list[tuple[PlannedStep, list[str]]]:
    """Entry point for ``alignsmith chain run``: every step in order, then a summary of what went where."""
    where = _where(recipe)
    done: list[tuple[PlannedStep, list[str]]] = []
    total = len(recipe.planned())
    for planned in recipe.planned():
        log.info("chain: %s/%d %r: %s", planned.number, total, planned.step.name, _command_line(planned))
        try:
            done.append((planned, _run_step(planned)))
        except AlignsmithError as err:
            raise ChainStepError(f"{planned.label} failed: {err}") from err
        except SystemExit as err:  # a plain command's argparse refusing its args
            raise ChainStepError(f"{planned.label}: its arguments were refused (exit {err.code})") from None
        except Exception:  # a bug: its traceback is the report, the step is named here
            log.error("chain: %s failed", planned.label)
            raise
    print(summary(done, where))
    return done


def _run_step(planned: PlannedStep) -> list[str]:
    """Run one step (or skip it when already published); return what it published, as summary lines."""
    if planned.recipe is None:
        published = _published_by_args(planned.argv)
        if published is not None:
            log.info("chain: %s: %s already exists, skipping", planned.label, published)
            return [f"{published} (already published)"]
        code = run_loaded_argv(planned)
        if code:
            raise ChainStepError(f"{planned.label} exited with {code}")
        published = _published_by_args(planned.argv)
        return [] if published is None else [published]
    existing = _release_of_same_recipe(planned)
    if existing is not None:
        log.info("chain: %s: %s already published by the same recipe, skipping", planned.label, _release_line(existing))
        return [f"{_release_line(existing)} (already published)"]
    return _releases(run_loaded_recipe(planned.cmd, planned.recipe))


def run_loaded_argv(planned: PlannedStep) -> int:
    """A plain command, as the CLI runs it: its ``run(argv)``."""
    return int(_resolve(planned.cmd.run)(planned.argv) or 0)


def _release_of_same_recipe(planned: PlannedStep) -> Release | None:
    """The step's tagged release when its recipe (as the card records it, Hub aside) made it, else None."""
    from alignsmith.endpoint import connect
    from alignsmith.lineage import portable_paths

    output = getattr(planned.recipe, "output", None)
    if not isinstance(output, OutputRepo) or output.tag is None:
        return None
    connect(planned.recipe)
    found = _tagged_lineage(output.repo_id, output.tag)
    if found is None:
        return None
    repo_type, lineage, sha = found
    mine = _what(to_dict(planned.recipe))
    recorded = None if lineage is None else _what(lineage.recipe)
    if recorded not in (mine, portable_paths(mine)):
        raise ChainStepError(f"{planned.label}: {repo_type} {output.repo_id} already has tag {output.tag!r} from a "
                             "different recipe; published tags are never moved: choose a new tag")
    return Release(output.repo_id, repo_type, sha, output.tag)


def _tagged_lineage(repo_id: str, tag: str) -> tuple[str, Any, str] | None:
    """(repo type, lineage or None, sha) of ``repo_id`` at ``tag``, model or dataset; None if no such tag."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    from alignsmith.lineage import NoLineageError, read_lineage

    for repo_type in ("model", "dataset"):
        try:
            lineage, sha = read_lineage(repo_id, repo_type, tag)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            continue
        except (EntryNotFoundError, NoLineageError):
            return repo_type, None, _tag_sha(repo_id, repo_type, tag) or "?"
        return repo_type, lineage, sha
    return None


def _what(recipe: Any) -> Any:
    return {k: v for k, v in recipe.items() if k not in _PLACE_KEYS} if isinstance(recipe, dict) else recipe


def _published_by_args(argv: Sequence[str]) -> str | None:
    """``repo@tag = sha`` when a plain command's ``--publish REPO --tag TAG`` release exists, else None."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--publish")
    parser.add_argument("--tag")
    known, _ = parser.parse_known_args(argv)
    if not known.publish or not known.tag:
        return None
    sha = _tag_sha(known.publish, "model", known.tag)
    return None if sha is None else f"model {known.publish}@{known.tag} = {sha}"


def _tag_sha(repo_id: str, repo_type: str, tag: str) -> str | None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = HfApi().list_repo_refs(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return None
    return next((t.target_commit for t in refs.tags if t.name == tag), None)


def _releases(value: Any) -> list[str]:
    """Summary lines for whatever a command returned: releases, results files, and those inside results."""
    if isinstance(value, Release):
        return [_release_line(value)]
    if isinstance(value, (list, tuple)):
        return [line for item in value for line in _releases(item)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = {f.name for f in dataclasses.fields(value)}
        if {"repo_id", "commit_sha", "path_in_repo"} <= names:  # rows appended to a results dataset
            return [f"dataset {value.repo_id} ({value.path_in_repo}) = {value.commit_sha}"]
        return [line for name in sorted(names) for line in _releases(getattr(value, name))]
    return []


def _release_line(release: Release) -> str:
    return f"{release.repo_type} {release.repo_id}@{release.revision} = {release.commit_sha}"


def _command_line(planned: PlannedStep) -> str:
    if planned.recipe is None:
        return f"alignsmith {planned.step.command} {' '.join(planned.argv)}"
    extra = " ".join(f"--{key} {json.dumps(value)}" for key, value in planned.step.overrides.items())
    return f"alignsmith {planned.step.command} --config {planned.step.config} {extra}".rstrip()


def _where(recipe: ChainRecipe) -> str:
    """The Hub the chain publishes to: its URL, and for the embedded Hub its storage folder."""
    from alignsmith.endpoint import connect

    url = connect(recipe)
    if recipe.hub != "local":
        return url
    from alignsmith.hub.storage import default_root

    return f"{url} (embedded Hub, storage {Path(recipe.hub_root or default_root()).expanduser().resolve()})"


def summary(done: Sequence[tuple[PlannedStep, list[str]]], where: str) -> str:
    """One block per step: what it published (repo@tag = sha), and the Hub it went to."""
    lines = [f"\nchain: {len(done)} steps, published to {where}"]
    for planned, published in done:
        lines.append(f"  {planned.number}. {planned.step.name} ({planned.step.command})")
        lines += [f"       {line}" for line in published] or ["       (no tagged release)"]
    return "\n".join(lines)
