"""The ``alignsmith`` command: ``alignsmith <stage> <command> --config RECIPE [--key value ...]``.

Commands are registered by import path and imported only when run, so ``alignsmith --help`` is
instant and a stage's heavy dependencies load only for that stage. Recipe commands share one
shape: read the recipe, apply overrides, connect to the Hub the recipe names, run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from alignsmith import __version__
from alignsmith.recipes import describe, load_recipe

log = logging.getLogger("alignsmith")


@dataclass(frozen=True)
class Command:
    """A CLI command: either a recipe command (``recipe`` + ``run``) or a plain one (``main``)."""

    help: str
    run: str  # "module:function"; recipe commands take the recipe, plain ones take argv
    recipe: str | None = None  # "module:DataclassName"
    example: str | None = None


COMMANDS: dict[str, dict[str, Command]] = {
    "hub": {
        "serve": Command("Run the embedded Hub server in the foreground.", "alignsmith.hub.cli:serve"),
        "start": Command("Start the embedded Hub in the background (or find the running one).", "alignsmith.hub.cli:start"),
        "stop": Command("Stop the background embedded Hub of a storage folder.", "alignsmith.hub.cli:stop"),
        "token": Command("Create an access token for the embedded Hub.", "alignsmith.hub.cli:token"),
    },
    "models": {
        "tiny": Command("Build a tiny offline model (seeded) and optionally publish it.", "alignsmith.tiny_cli:main"),
    },
    "data": {
        "convert": Command(
            "Convert a dataset (ShareGPT, Alpaca, messages, prompt/completion, preference) to alignsmith "
            "records, validate it, and publish it.",
            "builders.convert:run",
            recipe="builders.convert:ConvertRecipe",
            example="recipes/data/hh_rlhf_pool.yaml",
        ),
    },
    "deita": {
        "build": Command(
            "Score, embed and select a pool (resumable, sharded), then publish the dataset.",
            "builders.deita.build:run",
            recipe="builders.deita.recipe:DeitaRecipe",
            example="recipes/deita/demo.yaml",
        ),
        "merge": Command(
            "After a multi-machine build: check every shard is present, then select and publish.",
            "builders.deita.build:merge",
            recipe="builders.deita.recipe:DeitaRecipe",
            example="recipes/deita/released_scorers.yaml",
        ),
    },
    "train": {
        "sft": Command(
            "Supervised fine-tuning (full or LoRA) on published datasets; pushes the model with its card.",
            "training.train:run",
            recipe="training.recipes:SFTRecipe",
            example="recipes/train/tiny_sft.yaml",
        ),
        "dpo": Command(
            "Direct preference optimisation on published preference data; pushes the model.",
            "training.train:run",
            recipe="training.recipes:DPORecipe",
            example="recipes/train/tiny_dpo.yaml",
        ),
        "run": Command(
            "A multi-stage run (e.g. SFT then DPO, or the U-shaped schedule), each stage reading the last.",
            "training.pipeline:run",
            recipe="training.recipes:PipelineRecipe",
            example="recipes/train/tiny_sft_then_dpo.yaml",
        ),
        "preferences": Command(
            "Mix, validate and publish a DPO preference dataset from published sets.",
            "training.preferences:run",
            recipe="training.preferences:PreferencesRecipe",
            example="recipes/train/tiny_preferences.yaml",
        ),
    },
    "lineage": {
        "show": Command("Print the lineage recorded in a published artifact's card.", "alignsmith.lineage:cli"),
    },
}

STAGE_HELP = {
    "hub": "the embedded Hub (file-backed, Hub-compatible server)",
    "models": "tiny offline models for tests, demos and benchmarks",
    "data": "convert and validate datasets into alignsmith records",
    "deita": "Deita: score, embed and select instruction data",
    "train": "SFT, DPO, LoRA and multi-stage training",
    "eval": "lighteval and LLM-judge evaluation",
    "space": "the Gradio Space",
    "lineage": "read lineage back from published artifacts",
}


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _print_recipe_help(stage: str, name: str, cmd: Command) -> None:
    recipe_cls = _resolve(cmd.recipe)
    print(f"usage: alignsmith {stage} {name} --config RECIPE.yaml [--key value ...]\n")
    print(cmd.help + "\n")
    if cmd.example:
        print(f"example: alignsmith {stage} {name} --config {cmd.example}\n")
    print("Recipe keys (YAML, or --key value on the command line; nested keys with dots):")
    for key, default, text in describe(recipe_cls):
        print(f"  {key:<32} {text}  [default: {default}]")


def _top_help() -> str:
    lines = [f"alignsmith {__version__}: Hub-integrated dataset and model builder for data-efficient alignment.", ""]
    lines.append("usage: alignsmith <stage> <command> [--config RECIPE.yaml] [--key value ...]")
    lines.append("       alignsmith <stage> <command> --help\n")
    for stage, cmds in COMMANDS.items():
        lines.append(f"{stage}: {STAGE_HELP.get(stage, '')}")
        for name, cmd in cmds.items():
            lines.append(f"  {name:<10} {cmd.help}")
    return "\n".join(lines)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_recipe_command(cmd: Command, argv: Sequence[str]) -> Any:
    """Parse ``--config`` + overrides, connect to the recipe's Hub, and run."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=None)
    known, overrides = parser.parse_known_args(argv)
    recipe = load_recipe(_resolve(cmd.recipe), known.config, overrides)
    from alignsmith.endpoint import connect

    connect(recipe)
    return _resolve(cmd.run)(recipe)


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
    stage, rest = argv[0], argv[1:]
    if stage not in COMMANDS:
        print(f"alignsmith: unknown stage {stage!r}; stages: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if not rest or rest[0] in ("-h", "--help"):
        print(f"usage: alignsmith {stage} <command> ...\n\n{STAGE_HELP.get(stage, '')}\n")
        for name, cmd in COMMANDS[stage].items():
            print(f"  {name:<10} {cmd.help}")
        return 0
    name, rest = rest[0], rest[1:]
    if name not in COMMANDS[stage]:
        print(f"alignsmith: unknown command {stage} {name!r}; commands: {', '.join(COMMANDS[stage])}", file=sys.stderr)
        return 2
    cmd = COMMANDS[stage][name]
    if cmd.recipe and ("-h" in rest or "--help" in rest):
        _print_recipe_help(stage, name, cmd)
        return 0
    _setup_logging(verbose)
    import httpx  # the Hub clients' transport: its errors are not all OSErrors

    try:
        if cmd.recipe:
            run_recipe_command(cmd, rest)
        else:
            runner: Callable[[Sequence[str]], int | None] = _resolve(cmd.run)
            return int(runner(rest) or 0)
    except (ValueError, OSError, httpx.HTTPError) as err:  # bad input, unreachable/missing resources
        if verbose:
            raise
        print(f"alignsmith {stage} {name}: error: {_describe(err)}\n(run with --verbose for the traceback)",
              file=sys.stderr)
        return 1
    return 0


def _describe(err: Exception) -> str:
    """The error's message; for a failed connection, also the URL that could not be reached."""
    import httpx

    if isinstance(err, httpx.TransportError):
        try:
            return f"cannot reach {err.request.url}: {err}"
        except RuntimeError:  # raised by httpx when the error carries no request
            return f"cannot reach the Hub: {err}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
