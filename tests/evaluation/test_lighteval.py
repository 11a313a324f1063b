"""lighteval 0.13 on a tiny model at two tags, over a multiple-choice dataset published on the embedded Hub."""

import json
import uuid

import datasets
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from alignsmith.cards import CardContent, model_card
from alignsmith.cli import main
from alignsmith.lineage import Lineage, content_sha256
from alignsmith.models.tiny import build_causal_lm
from alignsmith.publish import publish_dataset, publish_folder
from alignsmith.recipes import OutputRepo, RecipeError, build
from alignsmith.results import lineage_path
from evaluation.lighteval_run import LEADERBOARD_TASKS, HubTask, LightevalError, LightevalRecipe, import_lighteval, run

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Rome", "Berlin"], 0),
    ("Which number is even?", ["3", "4", "7"], 1),
    ("What color is the sky on a clear day?", ["green", "red", "blue"], 2),
    ("How many legs does a dog have?", ["four", "two", "six"], 0),
    ("Which one is a fruit?", ["carrot", "apple", "potato"], 1),
    ("What do bees make?", ["milk", "silk", "honey"], 2),
    ("Which is the largest?", ["the sun", "a cat", "a cup"], 0),
    ("What is frozen water called?", ["steam", "ice", "sand"], 1),
]


def unique(name: str) -> str:
    return f"lighteval-test/{name}-{uuid.uuid4().hex[:8]}"


def publish_model(repo: str, folder, seed: int, tag: str) -> str:
    build_causal_lm(folder, seed=seed)
    lineage = Lineage(command="models tiny", recipe={"seed": seed})
    card = model_card(repo, CardContent(title="tiny", summary="s"), lineage, base_model=None)
    return publish_folder(OutputRepo(repo_id=repo, tag=tag), folder, card, lineage).commit_sha


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """A tiny model published twice (seeds 0 and 1, tags v1 and v2) and an 8-row multiple-choice dataset."""
    tmp = tmp_path_factory.mktemp("lighteval")
    model = unique("tiny")
    shas = {tag: publish_model(model, tmp / tag, seed, tag) for seed, tag in enumerate(("v1", "v2"))}
    question, choices, answer = zip(*QUESTIONS)
    rows = datasets.Dataset.from_dict({"question": question, "choices": choices, "answer": answer})
    data = unique("mc")
    data_sha = publish_dataset(OutputRepo(repo_id=data, tag="v1"), {"default": {"test": rows}},
                               CardContent(title="mc", summary="s"), Lineage(command="test", recipe={})).commit_sha
    return model, shas, data, data_sha


def recipe(model: str, revision: str, data: str, results: str, **extra) -> LightevalRecipe:
    return build(LightevalRecipe, {
        "model": model, "revision": revision, "results_repo": results, "device": "cpu", "batch_size": 4,
        "use_chat_template": False,
        "tasks": [{"name": "alignsmith_toy_mc", "repo": data, "revision": "v1", "choices_column": "choices"}], **extra})


def test_two_tags_give_rows_with_their_shas_in_the_results_dataset_and_the_model_index(published):
    model, shas, data, data_sha = published
    results = unique("results")
    for tag in ("v1", "v2"):
        run(recipe(model, tag, data, results))
    assert torch.is_grad_enabled(), "lighteval turned autograd off for the rest of the process"

    table = datasets.load_dataset(results, split="train")
    assert sorted(table["model_sha"]) == sorted(shas.values()) and len(set(table["run_id"])) == 2
    row = table[0]
    assert (row["model"], row["benchmark"], row["metric"], row["n"]) == (model, "alignsmith_toy_mc|0", "acc", 8)
    assert (row["prompt_set"], row["prompt_set_sha"], row["lighteval_version"]) == (data, data_sha, "0.13.0")
    assert 0.0 <= row["value"] <= 1.0 and row["value"] * 8 == round(row["value"] * 8) and row["judge"] is None

    by_sha = {r.metric_args["model_sha"]: r for r in ModelCard.load(model).data.eval_results}
    assert set(by_sha) == set(shas.values())
    for r in table:
        assert by_sha[r["model_sha"]].metric_value == r["value"] and by_sha[r["model_sha"]].dataset_revision == data_sha
    assert {t.name: t.target_commit for t in HfApi().list_repo_refs(model).tags} == shas

    data_files = {f for f in HfApi().list_repo_files(results, repo_type="dataset") if f.startswith("data/")}
    assert len(data_files) == 2 and all(f.startswith("data/results-") and f.endswith(".parquet") for f in data_files)
    for path in data_files:  # each run's lineage beside its rows: the model and task data it pinned
        text = open(hf_hub_download(results, lineage_path(path), repo_type="dataset"), encoding="utf-8").read()
        lineage = Lineage.from_metadata(json.loads(text))
        assert lineage.command == "eval lighteval" and lineage.models[0].sha in shas.values()
        assert [(ref.role, ref.sha) for ref in lineage.inputs] == [("tasks[alignsmith_toy_mc]", data_sha)]
    assert set(HfApi().list_repo_files(model)) == set(HfApi().list_repo_files(model, revision="v1"))  # README only


def test_a_run_reproduces_identically_from_its_results_commit_without_touching_the_model_card(hub, published,
                                                                                              capsys):
    model, shas, data, _ = published
    results = unique("results")
    run_sha = run(recipe(model, "v1", data, results)).commit_sha
    card = HfApi().repo_info(model).sha
    assert main(["reproduce", results, "--revision", run_sha, "--hub", hub.url]) == 0
    out = capsys.readouterr().out
    assert "alignsmith eval lighteval" in out and f"model: model {model} @ {shas['v1']} (pinned)" in out
    assert "identical results (metric values: 1)" in out and "result: IDENTICAL" in out
    assert HfApi().repo_info(model).sha == card and HfApi().repo_info(results, repo_type="dataset").sha == run_sha


def test_a_local_model_folder_is_left_as_it_was(published, tmp_path):
    """lighteval writes its sample cache inside a local model folder: alignsmith points it elsewhere."""
    _, _, data, _ = published
    folder = build_causal_lm(tmp_path / "local-model", seed=3)
    before = content_sha256(folder)
    results = unique("results")
    run(recipe(str(folder), None, data, results, max_samples=2))

    assert content_sha256(folder) == before
    row = datasets.load_dataset(results, split="train")[0]
    assert (row["model"], row["model_sha"], row["n"]) == ("local-model", before, 2)


def test_recipe_and_model_mistakes_are_one_line_errors(published, tmp_path):
    model, _, data, _ = published
    with pytest.raises(RecipeError, match="loglikelihood_acc needs a choices column"):
        build(HubTask, {"name": "x", "repo": data})
    with pytest.raises(RecipeError, match="at least one task"):
        build(LightevalRecipe, {"model": model, "results_repo": "a/b"})
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(LightevalError, match="is a PEFT adapter"):
        run(recipe(str(tmp_path / "adapter"), None, data, "a/b"))


def test_the_leaderboard_tasks_are_lighteval_tasks_with_the_papers_shot_counts():
    """Checked against lighteval's registry only: their data is on huggingface.co, out of the tests' reach."""
    import_lighteval()
    from lighteval.tasks.registry import Registry

    configs = Registry(tasks=",".join(LEADERBOARD_TASKS.values())).task_to_configs
    shots = {name: {config.num_fewshots for config in found} for name, found in configs.items()}
    assert (shots.pop("arc:challenge"), shots.pop("hellaswag"), shots.pop("truthfulqa:mc")) == ({25}, {10}, {0})
    assert len(shots) == 57 and all(name.startswith("mmlu:") and n == {5} for name, n in shots.items())
