"""Every recipe shipped under ``recipes/<group>/<command>/`` loads with that command's recipe class."""

from pathlib import Path

import pytest

from alignsmith.cli import _resolve, command_groups
from alignsmith.recipes import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = sorted(p for p in RECIPES.glob("*/*/*.yaml") if p.parts[-3] != "accelerate")


def test_recipes_live_under_their_command():
    groups = command_groups()
    assert SHIPPED, "no recipes found"
    for path in SHIPPED:
        group, command = path.parts[-3], path.parts[-2]
        assert group in groups and command in groups[group].commands, f"{path}: no command {group} {command}"
        assert groups[group].commands[command].recipe, f"{path}: {group} {command} takes no recipe"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: "/".join(p.parts[-3:]))
def test_shipped_recipes_load_and_the_tiny_ones_run_on_cpu(path):
    command = command_groups()[path.parts[-3]].commands[path.parts[-2]]
    recipe = load_recipe(_resolve(command.recipe), path)
    runs = recipe.stage_recipes() if hasattr(recipe, "stage_recipes") else [recipe]
    for run in runs:
        if path.name.startswith("tiny") and hasattr(run, "training"):
            assert (run.training["use_cpu"], run.training["bf16"]) == (True, False)
        if path.name.startswith(("tiny", "demo", "hh_rlhf_")):
            assert run.hub == "local"
