"""Results on the Hub: an append-only results dataset and model-index merged into the model's card."""

import math
import uuid

import datasets
import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from alignsmith.cards import CardContent, model_card
from alignsmith.lineage import LINEAGE_KEY, Lineage
from alignsmith.publish import publish_folder
from alignsmith.recipes import OutputRepo
from alignsmith.results import ResultRow, ResultsError, append_results, write_model_index


def unique(name: str) -> str:
    return f"results-test/{name}-{uuid.uuid4().hex[:8]}"


def row(model: str = "org/m", sha: str = "a" * 40, metric: str = "acc", value: float = 0.5, **kw) -> ResultRow:
    return ResultRow(model=model, model_sha=sha, benchmark="toy|0", metric=metric, value=value, n=8, **kw)


def test_each_run_is_a_new_file_in_a_new_commit_and_earlier_files_never_change(hub):
    repo = unique("results")
    first = append_results(repo, [row(stderr=0.1), row(metric="acc_norm", value=0.25)],
                           run_id="run1", date="2026-01-02T03:04:05+00:00")
    first_file = hf_hub_download(repo, first.path_in_repo, repo_type="dataset", revision=first.commit_sha)
    first_bytes = open(first_file, "rb").read()
    second = append_results(repo, [row(sha="b" * 40, value=0.75, judge="org/judge", judge_sha="c" * 40,
                                       prompt_set="org/prompts", prompt_set_sha="d" * 40, lighteval_version="0.13.0")],
                            run_id="run2")

    assert first.path_in_repo == "data/results-20260102T030405Z-run1.parquet" != second.path_in_repo
    assert second.commit_sha != first.commit_sha
    assert open(hf_hub_download(repo, first.path_in_repo, repo_type="dataset"), "rb").read() == first_bytes
    commits = HfApi().list_repo_commits(repo, repo_type="dataset")
    assert [c.commit_id for c in commits[:2]] == [second.commit_sha, first.commit_sha]

    table = datasets.load_dataset(repo, split="train").sort(["run_id", "metric"])
    assert table["run_id"] == ["run1", "run1", "run2"] and table["model_sha"] == ["a" * 40, "a" * 40, "b" * 40]
    assert table["value"] == [0.5, 0.25, 0.75] and table["stderr"] == [0.1, None, None] and table["n"] == [8, 8, 8]
    assert table[2]["judge_sha"] == "c" * 40 and table[2]["prompt_set"] == "org/prompts"
    assert table[2]["lighteval_version"] == "0.13.0" and table[0]["lighteval_version"] is None
    assert table[0]["date"] == "2026-01-02T03:04:05+00:00" and table[0]["alignsmith_version"]
    assert datasets.load_dataset(repo, split="train", revision=first.commit_sha).num_rows == 2  # the table back then

    with pytest.raises(ResultsError, match="already has data/results-20260102T030405Z-run1.parquet"):
        append_results(repo, [row()], run_id="run1", date="2026-01-02T03:04:05+00:00")


def test_rows_that_cannot_be_published_are_refused_naming_the_result():
    with pytest.raises(ResultsError, match="org/m@a+ toy\\|0/acc: value must be a finite number"):
        row(value=math.nan)
    with pytest.raises(ResultsError, match="model_sha is empty"):
        row(sha="")
    with pytest.raises(ResultsError, match="not an ISO 8601 time with a time zone"):
        append_results("results-test/never", [row()], date="yesterday")


def test_model_index_is_merged_into_the_card_by_a_new_commit_and_tags_stay(hub, tmp_path):
    repo = unique("model")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 10)
    lineage = Lineage(command="test results", recipe={"x": 1})
    card = model_card(repo, CardContent(title="M", summary="s", license="mit"), lineage, base_model=None)
    v1 = publish_folder(OutputRepo(repo_id=repo, tag="v1"), tmp_path / "model", card, lineage)
    (tmp_path / "model" / "weights.bin").write_bytes(b"\1" * 10)
    v2 = publish_folder(OutputRepo(repo_id=repo, tag="v2"), tmp_path / "model", card, lineage)

    write_model_index(repo, v1.commit_sha, [row(repo, v1.commit_sha, value=0.5, stderr=0.1, prompt_set="org/mc",
                                                prompt_set_sha="d" * 40), row(repo, v1.commit_sha, "em", 0.0)])
    head = write_model_index(repo, v2.commit_sha, [row(repo, v2.commit_sha, value=0.625)])
    write_model_index(repo, v1.commit_sha, [row(repo, v1.commit_sha, "em", 0.125)])  # measured again: replaces

    refs = HfApi().list_repo_refs(repo)
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": v1.commit_sha, "v2": v2.commit_sha}
    assert refs.branches[0].target_commit != head  # the last write is a commit after `head`
    loaded = ModelCard.load(repo)
    found = {(r.metric_args["model_sha"], r.metric_type): r for r in loaded.data.eval_results}
    assert {key: r.metric_value for key, r in found.items()} == {
        (v1.commit_sha, "acc"): 0.5, (v1.commit_sha, "em"): 0.125, (v2.commit_sha, "acc"): 0.625}
    acc = found[v1.commit_sha, "acc"]
    assert (acc.dataset_type, acc.dataset_revision, acc.metric_args["n"], acc.metric_args["stderr"]) == (
        "org/mc", "d" * 40, 8, 0.1)
    assert loaded.data.license == "mit" and LINEAGE_KEY in loaded.data.to_dict()  # the rest of the card is kept
    assert "# M" in loaded.text
    assert ModelCard.load(hf_hub_download(repo, "README.md", revision="v1")).data.eval_results is None  # tag untouched

    with pytest.raises(ResultsError, match="rows of other models or revisions"):
        write_model_index(repo, v1.commit_sha, [row(repo, v2.commit_sha)])
    with pytest.raises(ResultsError, match=f"has no commit {'e' * 40}"):
        write_model_index(repo, "e" * 40, [row(repo, "e" * 40)])
