"""The ``alignsmith`` command: ``alignsmith <group> <command> --config RECIPE [--key value ...]``.

Each package declares its command group in its own ``commands.py`` and registers it under the
``alignsmith.commands`` entry point (see ``pyproject.toml``), so a new stage never touches this
module. A group is named for its folder (``build`` is ``builders/``, ``train`` is ``training/``),
and a command's ``run`` points at the module that implements it. Commands are imported only when
run, so ``alignsmith --help`` is instant and a stage's heavy dependencies load only for that stage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Callable, Sequence

from alignsmith import __version__
from alignsmith.errors import AlignsmithError
from alignsmith.recipes import describe, load_recipe

log = logging.getLogger("alignsmith")

ENTRY_POINT_GROUP = "alignsmith.commands"


@dataclass(frozen=True)
class Command:
    """A CLI command: a recipe command (``recipe`` + ``run(recipe)``) or a plain one (``run(argv)``)."""

    help: str
    run: str  # "module:function"
    recipe: str | None = None  # "module:DataclassName"
    example: str | None = None  # a recipe file to show in --help
    deprecated: tuple[str, ...] = ()  # old spellings ("deita build") that still work, with a warning


@dataclass(frozen=True)
class CommandGroup:
    """The commands one package owns, under one name: ``alignsmith <name> <command>``."""

    name: str
    help: str
    package: str  # the folder the commands live in, shown in --help
    commands: dict[str, Command] = field(default_factory=dict)


@cache
def command_groups() -> dict[str, CommandGroup]:
    """Every registered group, by name (the core's own groups register the same way as the stages')."""
    groups: dict[str, CommandGroup] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        group = ep.load()
        if not isinstance(group, CommandGroup) or group.name != ep.name:
            raise TypeError(f"entry point {ep.name} = {ep.value} must be the CommandGroup named {ep.name!r}")
        groups[group.name] = group
    return groups


def _deprecated_spellings() -> dict[tuple[str, str], tuple[str, str]]:
    """(old group, old command) -> (group, command) for every spelling kept for one release."""
    return {
        tuple(old.split()): (group.name, name)
        for group in command_groups().values()
        for name, cmd in group.commands.items()
        for old in cmd.deprecated
    }


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _print_recipe_help(group: str, name: str, cmd: Command) -> None:
    recipe_cls = _resolve(cmd.recipe)
    print(f"usage: alignsmith {group} {name} --config RECIPE.yaml [--key value ...]\n")
    print(cmd.help + "\n")
    if cmd.example:
        print(f"example: alignsmith {group} {name} --config {cmd.example}\n")
    print("Recipe keys (YAML, or --key value on the command line; nested keys with dots):")
    for key, default, text in describe(recipe_cls):
        print(f"  {key:<32} {text}  [default: {default}]")


def _group_lines(group: CommandGroup) -> list[str]:
    width = max(len(name) for g in command_groups().values() for name in g.commands)  # one column for all groups
    lines = [f"{group.name}: {group.help} ({group.package})"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in group.commands.items()]
    return lines


def _top_help() -> str:
    lines = [f"alignsmith {__version__}: Hub-integrated dataset and model builder for data-efficient alignment.", ""]
    lines.append("usage: alignsmith <group> <command> [--config RECIPE.yaml] [--key value ...]")
    lines.append("       alignsmith <group> <command> --help\n")
    for group in command_groups().values():
        lines += _group_lines(group)
    return "\n".join(lines)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_command_recipe(cmd: Command, config: str | None, overrides: Sequence[str] = ()) -> Any:
    """``cmd``'s recipe from ``config`` + ``--key value`` overrides, checked whole (shared with ``chain run``)."""
    return load_recipe(_resolve(cmd.recipe), config, overrides)


def run_loaded_recipe(cmd: Command, recipe: Any) -> Any:
    """Connect to the recipe's Hub and run ``cmd`` on it: what the CLI (and each chain step) does."""
    from alignsmith.endpoint import connect

    connect(recipe)
    return _resolve(cmd.run)(recipe)


def run_recipe_command(cmd: Command, argv: Sequence[str]) -> Any:
    """Parse ``--config`` + overrides (the whole recipe is checked here), connect to its Hub, and run."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=None)
    known, overrides = parser.parse_known_args(argv)
    return run_loaded_recipe(cmd, load_command_recipe(cmd, known.config, overrides))


def _find(argv: list[str]) -> tuple[str, str, Command, list[str]] | int:
    """The command ``argv`` names and its arguments (old spellings with a warning), or the exit code after help
    or an error. A group whose one command has the group's name is that command: ``alignsmith reproduce REPO``."""
    groups = command_groups()
    name, rest = argv[0], argv[1:]
    if rest and rest[0] not in ("-h", "--help") and (name, rest[0]) in _deprecated_spellings():
        new_group, new_name = _deprecated_spellings()[name, rest[0]]
        print(f"alignsmith: '{name} {rest[0]}' is deprecated and will be removed in the next release; "
              f"use 'alignsmith {new_group} {new_name}'", file=sys.stderr)
        return new_group, new_name, groups[new_group].commands[new_name], rest[1:]
    if name not in groups:
        print(f"alignsmith: unknown group {name!r}; groups: {', '.join(groups)}", file=sys.stderr)
        return 2
    group = groups[name]
    if list(group.commands) == [name]:
        return name, name, group.commands[name], rest
    if not rest or rest[0] in ("-h", "--help"):
        print("usage: alignsmith " + name + " <command> ...\n\n" + "\n".join(_group_lines(group)))
        return 0
    if rest[0] not in group.commands:
        print(f"alignsmith: unknown command {name} {rest[0]!r}; commands: {', '.join(group.commands)}", file=sys.stderr)
        return 2
    return name, rest[0], group.commands[rest[0]], rest[1:]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or "-v" in argv
    argv = [a for a in argv if a not in ("--verbose", "-v")]
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    found = _find(argv)
    if isinstance(found, int):
        return found
    group, name, cmd, rest = found
    if cmd.recipe and ("-h" in rest or "--help" in rest):
        _print_recipe_help(group, name, cmd)
        return 0
    _setup_logging(verbose)
    try:
        if cmd.recipe:
            run_recipe_command(cmd, rest)
            return 0
        runner: Callable[[Sequence[str]], int | None] = _resolve(cmd.run)
        return int(runner(rest) or 0)
    except AlignsmithError as err:  # anything else is a bug: its traceback is the report
        if verbose:
            raise
        label = group if name == group else f"{group} {name}"
        print(f"alignsmith {label}: error: {err}\n(run with --verbose for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # `python -m alignsmith.cli` (e.g. under accelerate launch)
    from alignsmith.cli import main as _main  # the imported module, whose classes the command groups use

    sys.exit(_main())
