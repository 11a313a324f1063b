from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from alignsmith.recipes import (
    HubRecipe,
    OutputRepo,
    RecipeError,
    describe,
    load_recipe,
    parse_overrides,
    save_resolved,
    to_dict,
)


@dataclass(kw_only=True)
class Inner:
    name: str
    size: int = 3
    ratio: float = 0.5


@dataclass(kw_only=True)
class Toy(HubRecipe):
    inner: Inner
    mode: Literal["fast", "exact"] = "exact"
    layers: list[int] = field(default_factory=lambda: [1, 2])
    maybe: int | None = None
    output: OutputRepo


def write(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"inner": {"name": "a"}, "output": {"repo_id": "org/ds", "tag": "v1"}}


def test_yaml_and_overrides_build_typed_dataclasses(tmp_path):
    recipe = load_recipe(Toy, write(tmp_path, BASE), ["--inner.size", "7", "--mode=fast", "--layers", "[4, 5]", "--inner.ratio", "1"])
    assert recipe.inner == Inner(name="a", size=7, ratio=1.0)
    assert isinstance(recipe.inner.ratio, float)
    assert recipe.mode == "fast" and recipe.layers == [4, 5] and recipe.hub == "local"
    assert recipe.output.tag == "v1" and recipe.output.private is False


def test_unknown_key_is_an_error_naming_it_and_suggesting(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'sise'.*did you mean 'size'"):
        load_recipe(Toy, write(tmp_path, {**BASE, "inner": {"name": "a", "sise": 2}}))
    with pytest.raises(RecipeError, match="unknown key 'nope'"):
        load_recipe(Toy, write(tmp_path, BASE), ["--nope", "1"])


@pytest.mark.parametrize(
    "override, message",
    [
        (["--mode", "medium"], "'medium' is not one of"),
        (["--inner.size", "big"], "expected int"),
        (["--inner.size", "true"], "expected int"),
        (["--layers", "3"], "expected a list"),
        (["--hub", "ftp://x"], "hub: expected"),
        (["--output.repo_id", "noslash"], "namespace/name"),
        (["--inner.size"], "needs a value"),
        (["--output.tag", "1.10"], "quote it"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(Toy, write(tmp_path, BASE), override)


def test_missing_required_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="missing required key"):
        load_recipe(Toy, write(tmp_path, {"output": {"repo_id": "o/d"}}))
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(Toy, tmp_path / "absent.yaml")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(Toy, write(tmp_path, BASE), ["--maybe", "4"])
    saved = save_resolved(recipe, tmp_path / "out")
    again = load_recipe(Toy, saved)
    assert again == recipe
    assert to_dict(again)["inner"]["size"] == 3


def test_override_values_are_yaml_typed():
    assert parse_overrides(["--a", "null", "--b=1.5", "--c", "x y"]) == [("a", None), ("b", 1.5), ("c", "x y")]


def test_describe_flattens_nested_keys():
    keys = {row[0]: row for row in describe(Toy)}
    assert "inner.size" in keys and keys["inner.size"][1] == "3"
    assert keys["inner.name"][1] == "(required)"
    assert "hub" in keys and keys["hub"][2]
