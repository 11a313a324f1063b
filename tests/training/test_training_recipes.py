"""Training recipes: mistakes are caught when the recipe loads, naming the key."""

from __future__ import annotations

import pytest
from transformers.integrations import integration_utils

from alignsmith.recipes import RecipeError, build, describe

from training.recipes import DPORecipe, PipelineRecipe, SFTRecipe


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
        ({"data": {"datasets": [{"path": "org/data", "weight": 0}]}}, "data.datasets[0].weight: must be positive"),
        ({"data": {"datasets": [{"path": "org/data"}], "eval_size": 2.5}}, "eval_size"),
        ({"base_model": {"path": "org/base", "dtype": "int8"}}, "base_model.dtype"),
        ({"chat_template": {"template": "x", "template_file": "y.jinja"}}, "chat_template.template_file: give template or"),
        ({"data": {"datasets": [{"path": "org/data", "weight": float("nan")}]}}, "data.datasets[0].weight: must be pos"),
        ({"data": {"datasets": [{"path": "org/data", "weight": float("inf")}]}}, "data.datasets[0].weight: must be pos"),
        ({"data": {"datasets": [{"path": "org/data"}], "eval_size": float("nan")}}, "data.eval_size: expected a fraction"),
        ({"data": {"datasets": [{"path": "org/data"}], "eval_size": -1}}, "data.eval_size: expected a fraction"),
        ({"data": {"datasets": [{"path": "org/data", "format": "csv"}]}}, "data.datasets[0]: dataset 'org/data'"),
        ({"output": {"repo_id": "org/model", "tag": 2}}, "output.tag: expected a string, got the number 2; quote it"),
        ({"base_model": {"path": "org/base", "revision": 1.0}}, "base_model.revision: expected a string, got the number"),
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


@pytest.mark.parametrize("fmt", ["sharegpt", "messages", "alpaca"])
def test_dpo_refuses_a_conversation_format_when_it_loads(fmt):
    build(SFTRecipe, _sft(data={"datasets": [{"path": "org/data", "format": fmt}]}))  # pairs become conversations
    with pytest.raises(RecipeError) as raised:
        build(DPORecipe, _sft(data={"datasets": [{"path": "org/a"}, {"path": "org/b", "format": fmt}]}))
    assert f"data.datasets[1].format: {fmt!r} holds conversations, not preference pairs" in str(raised.value)


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
         "stages[1].output.merged: only a LoRA run"),
        ([_stage("sft", "org/a"), _stage("dpo", "org/a")], "stages[1].output.tag: stages[0] already publishes org/a at 'v2'"),
        ([_stage("sft", "org/a"), _stage("dpo", "org/b", data={"datasets": [{"path": "org/c", "format": "alpaca"}]})],
         "stages[1].data.datasets[0].format: 'alpaca' holds conversations"),
    ],
)
def test_a_bad_stage_fails_when_the_pipeline_loads(stages, message):
    with pytest.raises(RecipeError) as raised:
        build(PipelineRecipe, _pipeline(*stages))
    assert message in str(raised.value)


def test_stages_may_share_a_repo_under_different_tags():
    second = _stage("dpo", "org/a") | {"output": {"repo_id": "org/a", "tag": "v3"}}
    first, _ = build(PipelineRecipe, _pipeline(_stage("sft", "org/a"), second)).stage_recipes()
    assert first.output.tag == "v2"


def test_a_pipeline_key_in_defaults_is_named_as_coming_from_defaults():
    with pytest.raises(RecipeError) as raised:
        build(PipelineRecipe, _pipeline(_stage("sft", "org/a"), defaults={"base_model": {"path": "org/other"}}))
    assert "defaults.base_model: set by the pipeline" in str(raised.value)


def test_report_to_reaches_the_trainer_unchanged(monkeypatch):
    cpu = {"use_cpu": True, "bf16": False}
    assert build(SFTRecipe, _sft(training={**cpu, "report_to": "none"})).trainer_config().report_to == []
    # as if tensorboard were installed: alignsmith neither drops nor replaces the recipe's tracker
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    recipe = build(SFTRecipe, _sft(training={**cpu, "report_to": ["tensorboard"]}))
    assert recipe.trainer_config().report_to == ["tensorboard"]


@pytest.mark.parametrize(
    ("report_to", "message"),
    [
        ("tensorbord", "training.report_to: unknown tracker 'tensorbord'; expected none, all or one of"),
        pytest.param(["tensorboard"], "training.report_to: tensorboard not installed",
                     marks=pytest.mark.skipif(integration_utils.is_tensorboard_available(),
                                              reason="tensorboard is installed")),
        pytest.param("trackio", "training.report_to: trackio not installed",
                     marks=pytest.mark.skipif(integration_utils.is_trackio_available(),
                                              reason="trackio is installed")),
    ],
)
def test_an_unknown_or_missing_tracker_is_refused_when_the_recipe_loads(report_to, message):
    with pytest.raises(RecipeError) as raised:
        build(SFTRecipe, _sft(training={"report_to": report_to}))
    assert message in str(raised.value)


def test_help_gives_a_model_repo_as_the_output_example():
    rows = {key: text for key, _, text in describe(SFTRecipe)}
    assert "e.g. 'my-org/qwen2.5-0.5b-sft'" in rows["output.repo_id"]
    assert "deita" not in rows["output.repo_id"]
