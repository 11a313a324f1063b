"""Training recipes: shipped YAMLs load, and mistakes are caught when the recipe loads, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignsmith.recipes import RecipeError, build, load_recipe

from training.preferences import PreferencesRecipe
from training.recipes import DPORecipe, PipelineRecipe, SFTRecipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "train"


def _recipe_class(path: Path) -> type:
    data = yaml.safe_load(path.read_text())
    if "stages" in data:
        return PipelineRecipe
    if "preferences" in path.stem:
        return PreferencesRecipe
    return DPORecipe if "dpo" in path.stem else SFTRecipe


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_the_tiny_ones_train_on_cpu(path):
    recipe = load_recipe(_recipe_class(path), path)
    runs = recipe.stage_recipes() if isinstance(recipe, PipelineRecipe) else [recipe]
    for run in runs:
        if path.name.startswith("tiny_") and hasattr(run, "training"):
            assert (run.training["use_cpu"], run.training["bf16"]) == (True, False)
            assert run.hub == "local"


def _sft(**overrides) -> dict:
    return {
        "base_model": {"path": "org/base"},
        "data": {"datasets": [{"path": "org/data", "revision": "v1"}]},
        "output": {"repo_id": "org/model"},
        **overrides,
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training": {"learning_rte": 1e-4}},
         "training.learning_rte: not an argument of trl's SFTConfig (did you mean 'learning_rate'?)"),
        ({"training": {"push_to_hub": True}}, "training.push_to_hub: not settable here"),
        ({"training": {"output_dir": "x"}}, "set the top-level output_dir instead"),
        ({"lora": {"rank": 8}}, "lora: unknown key 'rank'"),
        ({"lora": {"r": 8}, "unfrozen": ["self_attn"]}, "lora.modules_to_save"),
        ({"output": {"repo_id": "org/model", "merged": True}}, "output.merged: only a LoRA run has an adapter"),
        ({"data": {"datasets": []}}, "at least one dataset"),
        ({"data": {"datasets": [{"path": "org/data", "weight": 0}]}}, "weight must be positive"),
        ({"data": {"datasets": [{"path": "org/data"}], "eval_size": 2.5}}, "eval_size"),
        ({"base_model": {"path": "org/base", "dtype": "int8"}}, "base_model.dtype"),
        ({"chat_template": {"template": "x", "template_file": "y.jinja"}}, "not both"),
    ],
)
def test_recipe_mistakes_are_errors_naming_the_key(overrides, message):
    with pytest.raises(RecipeError) as raised:
        build(SFTRecipe, _sft(**overrides))
    assert message in str(raised.value)


def test_dpo_keys_are_checked_against_dpo_config():
    build(DPORecipe, _sft(training={"beta": 0.05}))
    with pytest.raises(RecipeError, match="not an argument of trl's SFTConfig"):
        build(SFTRecipe, _sft(training={"beta": 0.05}))


def _pipeline(*stages: dict, **extra) -> dict:
    return {"base_model": {"path": "org/base", "revision": "v1"}, "stages": list(stages), **extra}


def _stage(kind: str, repo: str, **extra) -> dict:
    data = {"datasets": [{"path": "org/data"}]}
    return {"kind": kind, "data": data, "output": {"repo_id": repo, "tag": "v2"}, **extra}


def test_later_stages_start_from_the_previous_stage_and_share_defaults():
    recipe = build(PipelineRecipe, _pipeline(
        _stage("sft", "org/sft"), _stage("dpo", "org/dpo", training={"beta": 0.2}),
        defaults={"training": {"use_cpu": True, "max_steps": 5}}, hub="http://127.0.0.1:1"))
    first, second = recipe.stage_recipes()
    assert (first.base_model.path, first.base_model.revision) == ("org/base", "v1")
    assert (second.base_model.path, second.base_model.revision) == ("org/sft", "v2")
    assert second.training == {"use_cpu": True, "max_steps": 5, "beta": 0.2}
    assert isinstance(second, DPORecipe) and second.hub == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"data": {}}], "stages[0]: each stage needs kind: sft or dpo"),
        ([_stage("sft", "org/a", base_model={"path": "x"})], "stages[0].base_model: set by the pipeline"),
        ([_stage("sft", "org/a"), _stage("dpo", "org/b", training={"learning_rte": 1})], "training.learning_rte"),
        ([_stage("sft", "org/a", lora={"r": 4}), _stage("dpo", "org/b", lora={"r": 4})], "output.merged: true"),
        ([_stage("sft", "org/a"), _stage("dpo", "org/b", output={"repo_id": "org/b", "merged": True})],
         "stages[1]: output.merged: only a LoRA run"),
    ],
)
def test_a_bad_stage_fails_when_the_pipeline_loads(stages, message):
    with pytest.raises(RecipeError) as raised:
        build(PipelineRecipe, _pipeline(*stages))
    assert message in str(raised.value)


def test_a_pipeline_key_in_defaults_is_named_as_coming_from_defaults():
    with pytest.raises(RecipeError) as raised:
        build(PipelineRecipe, _pipeline(_stage("sft", "org/a"), defaults={"base_model": {"path": "org/other"}}))
    assert "defaults.base_model: set by the pipeline" in str(raised.value)
