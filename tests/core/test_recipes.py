from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from alignsmith.errors import AlignsmithError
from alignsmith.recipes import (
    HubRecipe,
    OutputRepo,
    RecipeError,
    build,
    describe,
    help_text,
    load_recipe,
    non_default,
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
        (["--inner.size"], "needs a value"),
        (["--output.tag", "1.10"], "quote it"),
        (["--output.tag", "5"], r"^output\.tag: expected a string, got the number 5; quote it"),
        (["--output.tag", "1.0"], r"^output\.tag: expected a string, got the number 1\.0; quote it"),
        (["--output.tag", "0755"], "got the number 493; quote it"),  # what YAML made of it
        (["--inner.name", "7"], r"^inner\.name: expected a string, got the number 7; quote it"),
        (["--output.repo_id", "noslash"], r"^output\.repo_id: expected 'namespace/name'"),
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


def test_a_string_field_takes_quoted_digits_and_booleans_stay_errors(tmp_path):
    recipe = load_recipe(Toy, write(tmp_path, BASE), ["--output.tag", "'5'", "--inner.name", "'1.10'"])
    assert (recipe.output.tag, recipe.inner.name) == ("5", "1.10")
    with pytest.raises(RecipeError, match=r"output\.tag: .* got True"):
        load_recipe(Toy, write(tmp_path, BASE), ["--output.tag", "true"])


class Refused(AlignsmithError):
    pass


@dataclass(kw_only=True)
class Part:
    count: int = help_text("At least one.", default=1, minimum=1)
    ratio: float = help_text("A fraction.", default=0.5, minimum=0, maximum=1)
    rate: float | None = help_text("Positive when given.", default=None, exclusive_minimum=0)
    share: float = help_text("Below one.", default=0.0, minimum=0, exclusive_maximum=1)
    ids: list[int] = help_text("Non-negative ids.", default_factory=list, minimum=0)
    label: str = "a"

    def __post_init__(self) -> None:
        if self.label == "bad":
            raise RecipeError("label: may not be 'bad'")
        if self.label == "refused":
            raise Refused("refused by the class")


@dataclass(kw_only=True)
class Ranged:
    part: Part = field(default_factory=Part)
    parts: list[Part] = field(default_factory=list)
    top: int = help_text("Non-negative.", default=0, minimum=0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"top": -5}, "top: must be at least 0, got -5"),
        ({"part": {"count": 0}}, "part.count: must be at least 1, got 0"),
        ({"part": {"ratio": 1.5}}, "part.ratio: must be between 0 and 1, got 1.5"),
        ({"part": {"ratio": -0.1}}, "part.ratio: must be between 0 and 1, got -0.1"),
        ({"part": {"rate": 0}}, "part.rate: must be above 0, got 0.0"),
        ({"part": {"share": 1}}, "part.share: must be at least 0 and below 1, got 1.0"),
        ({"part": {"ids": [0, 3, -1]}}, r"part.ids[2]: must be at least 0, got -1"),
        ({"part": {"ratio": float("nan")}}, "part.ratio: must be a finite number between 0 and 1, got nan"),
        ({"part": {"rate": float("inf")}}, "part.rate: must be a finite number above 0, got inf"),
        ({"parts": [{}, {"count": -2}]}, "parts[1].count: must be at least 1, got -2"),
        ({"parts": [{}, {"label": "bad"}]}, "parts[1].label: may not be 'bad'"),
        ({"part": {"label": "refused"}}, "part: refused by the class"),
    ],
)
def test_declared_ranges_and_post_init_refusals_name_the_dotted_key(data, message):
    with pytest.raises(RecipeError) as raised:
        build(Ranged, data)
    assert str(raised.value) == message


def test_values_on_a_bound_and_absent_optional_values_pass():
    recipe = build(Ranged, {"top": 0, "part": {"count": 1, "ratio": 1, "share": 0, "rate": None, "ids": [0]}})
    assert recipe.part.ratio == 1.0 and recipe.part.rate is None


def test_describe_shows_the_declared_range():
    rows = {key: text for key, _, text in describe(Ranged)}
    assert rows["part.count"] == "At least one. (at least 1)"
    assert rows["part.ratio"] == "A fraction. (between 0 and 1)"
    assert rows["part.rate"] == "Positive when given. (above 0)"
    assert rows["part.share"] == "Below one. (at least 0 and below 1)"
    assert rows["part.label"] == ""


def test_non_default_lists_the_options_set_on_purpose():
    part = build(Part, {"count": 2, "ratio": 0.5, "ids": [1]})
    assert non_default(part, ["count", "ratio", "ids", "label"]) == ["count", "ids"]


RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "build"


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [
        ("convert/hh_rlhf_preferences.yaml", ["--source.format", "sharegpt"],
         "source.format: 'sharegpt' holds conversations, not preference pairs"),
        ("convert/hh_rlhf_preferences.yaml", ["--require_assistant", "false"], "require_assistant: applies to kind"),
        ("convert/hh_rlhf_pool.yaml", ["--config_name", "rejected"], "config_name: 'rejected' holds the rows"),
        ("preferences/tiny.yaml", ["--data.datasets", "[{path: a.jsonl, format: alpaca}]"],
         "data.datasets[0].format: 'alpaca' holds conversations"),
        ("preferences/tiny.yaml", ["--data.datasets", "[{path: a.jsonl, weight: 2}]"],
         "data.datasets[0].weight: 2.0 would publish repeated pairs"),
        ("preferences/tiny.yaml", ["--data.datasets", "[{path: a.jsonl, weight: -1}]"],
         "data.datasets[0].weight: must be positive and finite, got -1.0"),
        ("preferences/tiny.yaml", ["--data.eval_size", "-0.1"], "data.eval_size: expected a fraction below 1"),
        ("preferences/tiny.yaml", ["--output.tag", "2"], "output.tag: expected a string, got the number 2; quote it"),
    ],
)
def test_convert_and_preferences_recipes_refuse_bad_values_at_load(recipe, overrides, message):
    from builders.convert import ConvertRecipe
    from builders.preferences import PreferencesRecipe

    cls = ConvertRecipe if recipe.startswith("convert/") else PreferencesRecipe
    load_recipe(cls, RECIPES / recipe)
    with pytest.raises(RecipeError) as raised:
        load_recipe(cls, RECIPES / recipe, overrides)
    assert str(raised.value).startswith(message)
