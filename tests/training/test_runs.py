"""SFT, DPO, LoRA and multi-stage runs against the embedded Hub, on tiny seeded models.

A tiny base model and a small question-answering task it can learn are published to the Hub once per module;
every run reads them back by repo id and revision, exactly as it would read real ones.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from alignsmith.models import tiny
from alignsmith.cards import CardContent, model_card
from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import ArtifactNotFoundError, Lineage, read_lineage
from alignsmith.models.loading import ModelLoadError
from alignsmith.publish import Release, TagExistsError, publish_dataset, publish_folder
from alignsmith.recipes import OutputRepo, RecipeError, build, to_dict
from alignsmith.sources import SourceError

from training.chat import ChatTemplateError
from training.data import TrainingDataError
from training.pipeline import run as run_pipeline
from training.recipes import DPORecipe, PipelineRecipe, SFTRecipe
from training.train import CheckpointMismatchError, TrainingResult, train

REPO = Path(__file__).resolve().parents[2]
NS = "train-tests"
QUESTIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Why is the sky blue?", "Sunlight is scattered by the air, and blue light scatters most."),
    ("How do I sort a list of numbers in Python?", "Use sorted(numbers) or numbers.sort()."),
    ("Is it safe to eat raw cookie dough?", "It can contain raw eggs and uncooked flour."),
    ("Write a short poem about the sea.", "The sea and the wind at night."),
    ("Give me three tips for staying healthy.", "Sleep well, eat well and walk every day."),
    ("Translate into German: I like reading books.", "Ich lese gern Bücher."),
    ("When is the meeting?", "The meeting is scheduled for 3 pm on Tuesday."),
]
# a plain template without {% generation %} markers, like most base models ship
UNMARKED_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
CPU = {"use_cpu": True, "bf16": False, "activation_checkpointing": False, "report_to": "none",
       "dataloader_num_workers": 0}


def _publish_records(repo: str, records: list[dict[str, Any]], tag: str = "v1") -> Release:
    content = CardContent(title=repo, summary="test data")
    lineage = Lineage(command="test", recipe={})
    return publish_dataset(
        OutputRepo(repo_id=repo, tag=tag), {"default": {"train": datasets.Dataset.from_list(records)}}, content, lineage
    )


def _publish_model(repo: str, folder: Path, tag: str = "v1") -> None:
    lineage = Lineage(command="models tiny", recipe={})
    card = model_card(repo, CardContent(title=repo, summary="tiny"), lineage, base_model=None)
    publish_folder(OutputRepo(repo_id=repo, tag=tag), folder, card, lineage)


def _conversation(i: int, question: str, answer: str) -> dict[str, Any]:
    return {
        "id": f"q{i}",
        "source": "qa",
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "images": [],
    }


def _preference(i: int, question: str, answer: str) -> dict[str, Any]:
    return {
        "id": f"p{i}",
        "source": "qa",
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": answer}],
        "rejected": [{"role": "assistant", "content": "I'm sorry, but I can't help with that request."}],
        "images": [],
    }


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory) -> dict[str, str]:
    """Tiny base models and datasets on the Hub, as repo ids."""
    base_dir = tiny.build_causal_lm(tmp_path_factory.mktemp("base"), seed=0)
    unmarked_dir = tiny.build_causal_lm(tmp_path_factory.mktemp("unmarked"), seed=0)
    (unmarked_dir / "chat_template.jinja").write_text(UNMARKED_TEMPLATE)
    _publish_model(f"{NS}/tiny-base", base_dir)
    _publish_model(f"{NS}/tiny-unmarked", unmarked_dir)
    _publish_records(f"{NS}/qa", [_conversation(i, q, a) for i, (q, a) in enumerate(QUESTIONS)])
    _publish_records(f"{NS}/qa-prefs", [_preference(i, q, a) for i, (q, a) in enumerate(QUESTIONS)])
    _publish_records(f"{NS}/qa-short", [_conversation(i, q, a.split()[-1]) for i, (q, a) in enumerate(QUESTIONS)])
    prompts_only = [
        {"id": f"u{i}", "source": "prompts", "messages": [{"role": "user", "content": q}], "images": []}
        for i, (q, _) in enumerate(QUESTIONS)
    ]
    _publish_records(f"{NS}/prompts-only", prompts_only)
    _publish_records(f"{NS}/wrong-columns", [{"question": q, "answer_text": a} for q, a in QUESTIONS])
    return {"base": f"{NS}/tiny-base", "unmarked": f"{NS}/tiny-unmarked", "sft": f"{NS}/qa",
            "dpo": f"{NS}/qa-prefs", "short": f"{NS}/qa-short"}


def _recipe(cls: type, published: dict[str, str], tmp_path: Path, repo: str, **overrides: Any) -> Any:
    data = {
        "base_model": {"path": published["base"], "revision": "v1"},
        "data": {"datasets": [{"path": published[cls.kind], "revision": "v1"}], "seed": 0},
        "training": {**CPU, "max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 6,
                     "logging_steps": 5, "save_strategy": "no", "max_length": 64},
        "output": {"repo_id": f"{NS}/{repo}", "tag": "v1"},
        "output_dir": str(tmp_path / repo),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return build(cls, data)


def _chat(repo: str, revision: str, question: str) -> tuple[str, bool]:
    """Greedy reply to ``question`` from the published model, and whether it ended with EOS."""
    model = AutoModelForCausalLM.from_pretrained(repo, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new = output[0][inputs["input_ids"].shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new[-1] == tokenizer.eos_token_id


def _readme(repo: str, revision: str) -> str:
    return Path(hf_hub_download(repo, "README.md", revision=revision)).read_text()


def _card(repo: str, revision: str) -> dict[str, Any]:
    return card_metadata(_readme(repo, revision))


@pytest.fixture(scope="module")
def sft_full(published, tmp_path_factory) -> TrainingResult:
    """Full SFT of the random tiny base on the QA task; later runs start from this release."""
    recipe = _recipe(SFTRecipe, published, tmp_path_factory.mktemp("runs"), "sft-full",
                     training={"max_steps": 60, "learning_rate": 1e-2, "per_device_train_batch_size": 8})
    return train(recipe)


def test_full_sft_learns_the_task_and_the_published_model_chats_and_stops(published, sft_full):
    result = sft_full

    assert result.metrics["final_train_loss"] < 0.5 * result.metrics["first_train_loss"]
    reply, stopped = _chat(result.release.repo_id, "v1", QUESTIONS[3][0])
    assert reply == QUESTIONS[3][1]
    assert stopped
    card = _card(result.release.repo_id, "v1")
    assert card["base_model"] == published["base"]
    assert card["datasets"] == [published["sft"]]
    assert card["library_name"] == "transformers"
    assert {"alignsmith", "trl", "sft"} <= set(card["tags"]) and "lora" not in card["tags"]
    lineage, sha = read_lineage(result.release.repo_id, "model", "v1")
    assert sha == result.release.commit_sha
    assert lineage.inputs[0].sha == HfApi().dataset_info(published["sft"], revision="v1").sha
    assert lineage.models[0].sha == HfApi().model_info(published["base"], revision="v1").sha
    assert lineage.recipe["training"]["max_steps"] == 60


@pytest.fixture(scope="module")
def lora_runs(published, sft_full, tmp_path_factory) -> dict[bool, TrainingResult]:
    """LoRA SFT from the fully fine-tuned model (as from a pretrained one) on shorter answers, published as an
    adapter (False) and as merged weights (True)."""
    runs = tmp_path_factory.mktemp("lora")
    lora = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    return {
        merged: train(_recipe(SFTRecipe, published, runs, f"sft-lora-{'merged' if merged else 'adapter'}",
                              lora=lora, output={"merged": merged},
                              base_model={"path": sft_full.release.repo_id, "revision": sft_full.release.commit_sha},
                              data={"datasets": [{"path": published["short"], "revision": "v1"}]},
                              training={"max_steps": 60, "learning_rate": 1e-2}))
        for merged in (False, True)
    }


@pytest.mark.parametrize("merged", [False, True], ids=["adapter", "merged"])
def test_lora_sft_publishes_an_adapter_or_merged_weights_that_load_by_tag(lora_runs, merged):
    result = lora_runs[merged]
    assert result.metrics["final_train_loss"] < 0.8 * result.metrics["first_train_loss"]
    reply, stopped = _chat(result.release.repo_id, "v1", QUESTIONS[0][0])
    assert (reply, stopped) == ("Paris.", True)
    card = _card(result.release.repo_id, "v1")
    assert card["library_name"] == ("transformers" if merged else "peft")
    assert {"trl", "sft", "lora"} <= set(card["tags"])
    files = set(HfApi().list_repo_files(result.release.repo_id, revision="v1"))
    assert ("adapter/adapter_config.json" if merged else "adapter_config.json") in files
    assert ("model.safetensors" in files) == merged
    assert "training_args.bin" not in files and "adapter/training_args.bin" not in files
    # an adapter has no generation config of its own, so its card's chat snippet names the stop token
    assert ("eos_token_id=tokenizer.eos_token_id" in _readme(result.release.repo_id, "v1")) != merged


def test_a_run_from_a_lora_adapter_release_merges_it_into_its_base_first(published, sft_full, lora_runs, tmp_path):
    adapter = lora_runs[False].release
    recipe = _recipe(SFTRecipe, published, tmp_path, "sft-after-adapter", training={"max_steps": 2},
                     base_model={"path": adapter.repo_id, "revision": "v1"})
    result = train(recipe)

    lineage, _ = read_lineage(result.release.repo_id, "model", "v1")
    assert [(m.role, m.repo_id, m.sha) for m in lineage.models] == [
        ("base_model", adapter.repo_id, adapter.commit_sha),
        ("adapter_base", sft_full.release.repo_id, sft_full.release.commit_sha),
    ]
    assert _card(result.release.repo_id, "v1")["base_model"] == adapter.repo_id

    with pytest.raises(RecipeError, match="set output.merged: true"):
        train(_recipe(SFTRecipe, published, tmp_path, "lora-on-adapter", lora={"r": 4},
                      base_model={"path": adapter.repo_id, "revision": "v1"}))


def test_dpo_prefers_the_chosen_answers_and_reports_eval_metrics(published, sft_full, tmp_path):
    recipe = _recipe(DPORecipe, published, tmp_path, "dpo-full",
                     base_model={"path": sft_full.release.repo_id, "revision": "v1"},
                     data={"eval_size": 2},
                     training={"max_steps": 12, "learning_rate": 2e-4, "beta": 0.1, "logging_steps": 1})
    result = train(recipe)

    assert result.metrics["first_train_loss"] == pytest.approx(0.693, abs=0.02)  # log(2): policy == reference
    assert result.metrics["final_train_loss"] < 0.4
    assert "eval_loss" in result.metrics and result.metrics["eval_rewards/accuracies"] > 0.5
    card = _card(result.release.repo_id, "v1")
    assert card["base_model"] == sft_full.release.repo_id
    assert card["datasets"] == [published["dpo"]]
    assert {"trl", "dpo"} <= set(card["tags"])
    assert card["training_metrics"]["eval_loss"] == pytest.approx(result.metrics["eval_loss"], rel=1e-4)
    # the implicit rewards, as final values and as curves, next to the loss curve
    readme = _readme(result.release.repo_id, "v1")
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert card["training_metrics"][key] == pytest.approx(result.metrics[key], rel=1e-4)
        assert f"| {key} | " in readme
    assert result.metrics["rewards/margins"] > 0
    files = set(HfApi().list_repo_files(result.release.repo_id, revision="v1"))
    assert {"assets/loss.png", "assets/rewards.png", "assets/reward_accuracy.png"} <= files
    assert "](assets/rewards.png)" in readme
    assert "license" not in card  # neither the recipe nor the base model's card names one
    assert _chat(result.release.repo_id, "v1", QUESTIONS[0][0]) == (QUESTIONS[0][1], True)


def test_the_card_inherits_the_base_license_lists_framework_versions_and_plots_the_loss(published, tmp_path):
    licensed = f"{NS}/tiny-licensed"
    lineage = Lineage(command="models tiny", recipe={})
    content = CardContent(title=licensed, summary="tiny", license="other",
                          metadata={"license_name": "tiny-license", "license_link": "LICENSE"})
    publish_folder(OutputRepo(repo_id=licensed, tag="v1"), tiny.build_causal_lm(tmp_path / "licensed", seed=0),
                   model_card(licensed, content, lineage, base_model=None), lineage)
    base = {"path": licensed, "revision": "v1"}
    inherited = train(_recipe(SFTRecipe, published, tmp_path, "sft-licensed", base_model=base, data={"eval_size": 2},
                              training={"max_steps": 2, "logging_steps": 1}))
    chosen = train(_recipe(SFTRecipe, published, tmp_path, "sft-relicensed", base_model=base,
                           output={"license": "apache-2.0"}, training={"max_steps": 1}))

    card = _card(inherited.release.repo_id, "v1")
    assert (card["license"], card["license_name"], card["license_link"]) == ("other", "tiny-license", "LICENSE")
    relicensed = _card(chosen.release.repo_id, "v1")
    assert relicensed["license"] == "apache-2.0" and "license_name" not in relicensed
    readme = _readme(inherited.release.repo_id, "v1")
    assert "## Framework versions" in readme
    for package in ("transformers", "trl", "peft", "torch", "datasets"):
        assert f"- {package}: {importlib.metadata.version(package)}" in readme
    assert "](assets/loss.png)" in readme
    assert "assets/loss.png" in HfApi().list_repo_files(inherited.release.repo_id, revision="v1")
    # evaluated, but without trl's eval_num_tokens (the tokens seen by training, not by the evaluation)
    assert "eval_loss" in card["training_metrics"] and "eval_num_tokens" not in card["training_metrics"]
    assert "eval_num_tokens" not in readme


@pytest.fixture(scope="module")
def moved_on(published, tmp_path_factory) -> str:
    """A model repo whose tag v1 is one model and whose main has since moved on to another."""
    repo = f"{NS}/moved-on"
    for tag, seed in (("v1", 0), ("v2", 1)):
        _publish_model(repo, tiny.build_causal_lm(tmp_path_factory.mktemp(f"moved-on-{tag}"), seed=seed), tag)
    return repo


@pytest.mark.parametrize("start", ["tag-behind-main", "lora-adapter"])
def test_full_dpo_compares_against_exactly_the_model_it_starts_from(published, lora_runs, moved_on, tmp_path, start):
    base = {"path": moved_on, "revision": "v1"} if start == "tag-behind-main" else {
        "path": lora_runs[False].release.repo_id, "revision": "v1"}
    recipe = _recipe(DPORecipe, published, tmp_path, f"dpo-reference-{start}", base_model=base,
                     training={"max_steps": 1, "logging_steps": 1, "beta": 0.1})
    result = train(recipe)

    # the first step's loss is -log sigmoid(0) = log 2 only when the reference scores exactly like the policy
    assert result.metrics["first_train_loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_two_stage_pipeline_chains_sft_into_dpo_through_the_hub(published, tmp_path):
    recipe = build(PipelineRecipe, {
        "base_model": {"path": published["base"], "revision": "v1"},
        "defaults": {"training": {**CPU, "max_steps": 4, "logging_steps": 1, "save_strategy": "no", "max_length": 64}},
        "stages": [
            {"kind": "sft", "data": {"datasets": [{"path": published["sft"], "revision": "v1"}]},
             "training": {"learning_rate": 1e-2}, "output": {"repo_id": f"{NS}/chain-sft", "tag": "v1"},
             "output_dir": str(tmp_path / "sft")},
            {"kind": "dpo", "data": {"datasets": [{"path": published["dpo"], "revision": "v1"}]},
             "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
             "training": {"learning_rate": 1e-3}, "output": {"repo_id": f"{NS}/chain-dpo", "tag": "v1"},
             "output_dir": str(tmp_path / "dpo")},
        ],
    })
    first, second = run_pipeline(recipe)

    card = _card(second.repo_id, "v1")
    assert card["base_model"] == first.repo_id
    assert {"dpo", "lora"} <= set(card["tags"])
    lineage, _ = read_lineage(second.repo_id, "model", "v1")
    assert (lineage.models[0].repo_id, lineage.models[0].sha) == (first.repo_id, first.commit_sha)
    assert lineage.recipe["base_model"]["revision"] == first.commit_sha
    first_lineage, _ = read_lineage(first.repo_id, "model", "v1")
    assert first_lineage.models[0].repo_id == published["base"]

    # a re-run finds both stages published by the same recipes and trains nothing
    assert run_pipeline(recipe) == [first, second]


def test_a_later_stage_with_missing_data_stops_the_pipeline_before_it_trains(published, tmp_path):
    recipe = build(PipelineRecipe, {
        "base_model": {"path": published["base"], "revision": "v1"},
        "defaults": {"training": {**CPU, "max_steps": 2, "save_strategy": "no", "max_length": 64}},
        "stages": [
            {"kind": "sft", "data": {"datasets": [{"path": published["sft"], "revision": "v1"}]},
             "output": {"repo_id": f"{NS}/never-sft", "tag": "v1"}, "output_dir": str(tmp_path / "sft")},
            {"kind": "dpo", "data": {"datasets": [{"path": published["dpo"], "revision": "v404"}]},
             "output": {"repo_id": f"{NS}/never-dpo", "tag": "v1"}, "output_dir": str(tmp_path / "dpo")},
        ],
    })
    with pytest.raises(ArtifactNotFoundError, match=r"stages\[1\]\.data: dataset .* has no revision 'v404'"):
        run_pipeline(recipe)
    assert not (tmp_path / "sft").exists()
    with pytest.raises(RepositoryNotFoundError):
        HfApi().repo_info(f"{NS}/never-sft")


KILL_AT_STEP = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from alignsmith.recipes import load_recipe
    from training.recipes import SFTRecipe
    from training.train import train

    class KillAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    train(load_recipe(SFTRecipe, sys.argv[1]), callbacks=[KillAfter()])
    """
)


def test_a_killed_run_resumes_from_its_last_checkpoint(published, tmp_path):

    recipe = _recipe(SFTRecipe, published, tmp_path, "sft-resumed",
                     training={"max_steps": 6, "save_strategy": "steps", "save_steps": 2})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(to_dict(recipe)))
    script = tmp_path / "kill_at_step.py"
    script.write_text(KILL_AT_STEP)

    killed = subprocess.run([sys.executable, str(script), str(recipe_file), "3"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in recipe.run_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not HfApi().repo_exists(recipe.output.repo_id)

    steps_run = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    result = train(recipe, callbacks=[CountSteps()])
    assert result.resumed_from_step == 2
    assert steps_run == [3, 4, 5, 6]
    assert result.metrics["global_step"] == 6
    lineage, _ = read_lineage(recipe.output.repo_id, "model", "v1")
    assert lineage.recipe == to_dict(recipe)


class _StopAt(TrainerCallback):
    """Stops a run with an error at ``step``, before it saves; like a kill, nothing is published."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"stopped at step {self.step}")


def test_resume_skips_half_written_checkpoints_and_refuses_a_different_recipe(published, tmp_path, caplog):
    recipe = _recipe(SFTRecipe, published, tmp_path, "sft-half-written",
                     training={"max_steps": 6, "save_strategy": "steps", "save_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        train(recipe, callbacks=[_StopAt(5)])
    checkpoints = recipe.run_dir
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (checkpoints / "checkpoint-2" / "alignsmith_recipe.yaml").is_file()  # the recipe travels with it
    # killed while writing checkpoint-4 (no trainer_state.json yet) and while finishing a checkpoint-6
    (checkpoints / "checkpoint-4" / "trainer_state.json").unlink()
    shutil.copytree(checkpoints / "checkpoint-2", checkpoints / "checkpoint-6")
    (checkpoints / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hi')

    steps_run = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    with caplog.at_level("INFO", logger="training.train"):
        result = train(recipe, callbacks=[CountSteps()])
    assert result.resumed_from_step == 2
    assert steps_run == [3, 4, 5, 6]
    log = caplog.text
    assert "checkpoint-6: incomplete (no readable trainer_state.json)" in log
    assert "checkpoint-4: incomplete (no trainer_state.json)" in log
    assert "resuming from" in log and "checkpoint-2 (step 2), the newest complete checkpoint" in log

    # another learning rate: the checkpoints are not this recipe's weights
    other = _recipe(SFTRecipe, published, tmp_path, "sft-half-written", output={"tag": "v2"},
                    training={"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "learning_rate": 1e-3})
    with pytest.raises(CheckpointMismatchError) as raised:
        train(other)
    message = str(raised.value)
    assert "checkpoint-6 was trained by a different recipe" in message
    assert "training.learning_rate: 0.003 -> 0.001" in message
    assert "choose another output_dir, or set resume: false" in message
    # the same training under a new tag would publish v1's weights again as v2
    retagged = _recipe(SFTRecipe, published, tmp_path, "sft-half-written", output={"tag": "v2"},
                       training={"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "logging_steps": 1})
    with pytest.raises(CheckpointMismatchError) as raised:
        train(retagged)
    assert "already finished training (step 6 of 6) for output" in str(raised.value)
    assert f"{NS}/sft-half-written@v1" in str(raised.value) and f"{NS}/sft-half-written@v2" in str(raised.value)
    assert [t.name for t in HfApi().list_repo_refs(recipe.output.repo_id).tags] == ["v1"]


def test_two_process_data_parallel_run_publishes_once(published, hub, tmp_path):
    recipe = _recipe(SFTRecipe, published, tmp_path, "sft-ddp", training={"max_steps": 4, "logging_steps": 1})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({**to_dict(recipe), "hub": hub.url}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
               "--config_file", str(REPO / "recipes" / "accelerate" / "ddp.yaml"),
               "-m", "alignsmith.cli", "train", "sft", "--config", str(recipe_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]

    commits = HfApi().list_repo_commits(recipe.output.repo_id)
    assert sum(c.title.startswith("alignsmith train sft") for c in commits) == 1
    card = _card(recipe.output.repo_id, "v1")
    # the 8 rows are split 4 + 4 between the processes: one step per epoch (one process would need 2)
    assert card["training_metrics"]["epoch"] == 4
    assert "| processes | 2 |" in _readme(recipe.output.repo_id, "v1")


MARKS_THE_USER = tiny.CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "").replace(
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}",
    "{{ '<|' + message['role'] + '|>' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}",
)
EOS_OUTSIDE = tiny.CHAT_TEMPLATE.replace(
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}",
    "{% generation %}{{ message['content'] }}{% endgeneration %}{{ eos_token }}",
)


@pytest.mark.parametrize(
    ("kind", "overrides", "error", "expected"),
    [
        (SFTRecipe, {"data": {"datasets": [{"path": f"{NS}/prompts-only", "revision": "v1"}]}},
         TrainingDataError, ["record 'u0'", "field 'messages'", "no assistant message", f"{NS}/prompts-only"]),
        (SFTRecipe, {"data": {"datasets": [{"path": f"{NS}/wrong-columns", "revision": "v1"}]}},
         TrainingDataError, ["8 of 8 rows", "matches no conversation format", "answer_text"]),
        (DPORecipe, {"data": {"datasets": [{"path": f"{NS}/qa", "revision": "v1"}]}},
         TrainingDataError, ["not valid preference records", "record 'q0'", "matches no preference format"]),
        (SFTRecipe, {"data": {"datasets": [{"path": f"{NS}/qa", "revision": "v9"}]}},
         SourceError, [f"{NS}/qa", "no such revision 'v9'"]),
        (SFTRecipe, {"base_model": {"path": f"{NS}/tiny-base", "revision": "v9"}},
         ModelLoadError, ["base_model", f"{NS}/tiny-base", "has no revision 'v9'"]),
        (SFTRecipe, {"base_model": {"path": f"{NS}/tiny-unmarked", "revision": "v1"}},
         ChatTemplateError, ["no {% generation %} markers", "chat_template.template"]),
        (SFTRecipe, {"chat_template": {"template": MARKS_THE_USER}},
         ChatTemplateError, ["does not mark the assistant's reply", "The sky is blue."]),
        (SFTRecipe, {"chat_template": {"template": EOS_OUTSIDE}},
         ChatTemplateError, ["never learn to stop"]),
        (DPORecipe, {"chat_template": {"template": "{% for m in messages %}{{ m.content }"}},
         ChatTemplateError, ["does not render a user/assistant dialogue"]),
        (SFTRecipe, {"output": {"repo_id": f"{NS}/sft-full", "tag": "v1"}},
         TagExistsError, [f"{NS}/sft-full", "already has tag 'v1'"]),
    ],
    ids=["no-assistant", "wrong-columns", "sft-data-for-dpo", "missing-dataset-revision", "missing-model-revision",
         "unmarked-base-template", "template-marks-user", "eos-outside-span", "dpo-template-broken", "tag-taken"],
)
def test_bad_input_stops_before_training_with_a_clear_message(published, sft_full, tmp_path, kind, overrides,
                                                                error, expected):
    recipe = _recipe(kind, published, tmp_path, "never-published", **overrides)
    with pytest.raises(error) as raised:
        train(recipe)
    for text in expected:
        assert text in str(raised.value)
    assert not recipe.run_dir.exists()  # nothing was trained or saved


def test_a_supplied_template_replaces_a_base_template_without_markers(published, tmp_path):
    recipe = _recipe(SFTRecipe, published, tmp_path, "sft-supplied-template",
                     base_model={"path": published["unmarked"], "revision": "v1"},
                     chat_template={"template": tiny.CHAT_TEMPLATE}, training={"max_steps": 2})
    result = train(recipe)

    assert AutoTokenizer.from_pretrained(result.release.repo_id, revision="v1").chat_template == tiny.CHAT_TEMPLATE
    assert "| chat template | recipe |" in _readme(result.release.repo_id, "v1")


def _weights(repo: str, revision: str) -> dict[str, Any]:
    return load_file(hf_hub_download(repo, "model.safetensors", revision=revision))


def test_u_shaped_schedule_trains_lora_then_named_modules_then_lora_at_a_lower_rate(published, tmp_path):
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}
    stage = {"kind": "sft", "data": {"datasets": [{"path": published["sft"], "revision": "v1"}]}}
    recipe = build(PipelineRecipe, {
        "base_model": {"path": published["base"], "revision": "v1"},
        "defaults": {"training": {**CPU, "max_steps": 3, "logging_steps": 1, "save_strategy": "no", "max_length": 64}},
        "stages": [
            {**stage, "lora": lora, "training": {"learning_rate": 1e-2},
             "output": {"repo_id": f"{NS}/u-style", "tag": "v1", "merged": True}, "output_dir": str(tmp_path / "1")},
            {**stage, "unfrozen": ["self_attn"], "training": {"learning_rate": 1e-2},
             "output": {"repo_id": f"{NS}/u-align", "tag": "v1"}, "output_dir": str(tmp_path / "2")},
            {**stage, "lora": lora, "training": {"learning_rate": 1e-3},
             "output": {"repo_id": f"{NS}/u-polite", "tag": "v1"}, "output_dir": str(tmp_path / "3")},
        ],
    })
    style, align, polite = run_pipeline(recipe)

    before, after = _weights(style.repo_id, "v1"), _weights(align.repo_id, "v1")
    changed = {name for name in before if not before[name].equal(after[name])}
    assert changed and all("self_attn" in name for name in changed)
    assert {n for n in before if ".self_attn.q_proj." in n} <= changed
    card = _card(polite.repo_id, "v1")
    assert (card["base_model"], card["library_name"]) == (align.repo_id, "peft")
    lineage, _ = read_lineage(polite.repo_id, "model", "v1")
    assert lineage.recipe["training"]["learning_rate"] == 1e-3
    assert lineage.models[0].sha == align.commit_sha
