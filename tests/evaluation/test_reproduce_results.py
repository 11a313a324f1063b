"""``alignsmith reproduce`` of an evaluation run: given its results-dataset commit, the run is re-run and compared."""

import dataclasses
import json
import secrets

import pytest
import yaml
from datasets import Dataset
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

from alignsmith.cards import CardContent
from alignsmith.cli import main
from alignsmith.lineage import Lineage
from alignsmith.publish import commit_release, publish_dataset
from alignsmith.recipes import OutputRepo
from alignsmith.reproduce import ATOL, RTOL, compare_results
from alignsmith.results import ResultRow, append_results, lineage_path

POPE = [("p1", "Is there a dog?", "Yes, there is.", "yes"), ("p2", "Is there a cat?", "No.", "yes"),
        ("p3", "Is there a car?", "There is not a car.", "no"), ("p4", "Is there a bus?", "Yes", "no")]


@dataclasses.dataclass(frozen=True)
class Published:
    org: str
    model: str
    model_head: str  # the model's main after the run wrote its model-index
    results: str
    plain_sha: str  # a run appended without lineage
    run_sha: str  # the `eval metrics` run
    run_file: str


def head(repo: str, repo_type: str = "model") -> str:
    return HfApi().repo_info(repo, repo_type=repo_type).sha


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory) -> Published:
    """A model (a card only: the answers stand for it), its POPE answers with references, and an `eval metrics` run
    of pope and rouge_l appended to a results dataset after a run appended without lineage."""
    org = f"repro-results-{secrets.token_hex(3)}"
    model, answers, results = f"{org}/chat", f"{org}/pope-answers", f"{org}/eval-results"
    model_sha = commit_release(OutputRepo(repo_id=model, tag="v1"), "model",
                               [CommitOperationAdd("README.md", b"# chat\n")], "a model").commit_sha
    rows = [{"question_id": qid, "turn": 1, "answer": answer, "reference": reference, "model": model,
             "model_sha": model_sha, "prompt_set": "pope_questions",
             "messages": [{"role": "user", "content": f"<image>\n{question}"}]}
            for qid, question, answer, reference in POPE]
    publish_dataset(OutputRepo(repo_id=answers, tag="v1"), {"answers": {"train": Dataset.from_list(rows)}},
                    CardContent(title="answers", summary="POPE answers"), Lineage(command="test", recipe={}),
                    default_config="answers")
    plain = append_results(results, [ResultRow(model, model_sha, "mt_bench", "score", 7.0, 4)])
    recipe = tmp_path_factory.mktemp("metrics") / "pope.yaml"
    recipe.write_text(yaml.safe_dump({"hub": hub.url, "device": "cpu", "results_repo": results, "benchmark": "pope",
                                      "answers": {"path": answers, "config": "answers", "revision": "v1"},
                                      "metrics": ["pope", "rouge_l"]}))
    assert main(["eval", "metrics", "--config", str(recipe)]) == 0
    run_sha = head(results, "dataset")
    added = set(HfApi().list_repo_files(results, repo_type="dataset")) - set(
        HfApi().list_repo_files(results, repo_type="dataset", revision=plain.commit_sha))
    (run_file,) = (path for path in added if path.endswith(".parquet"))
    return Published(org, model, head(model), results, plain.commit_sha, run_sha, run_file)


def test_the_run_commit_adds_its_lineage_beside_its_rows(published):
    assert lineage_path(published.run_file) == f"lineage/{published.run_file[5:-8]}.json"
    path = hf_hub_download(published.results, lineage_path(published.run_file), repo_type="dataset",
                           revision=published.run_sha)
    lineage = Lineage.from_metadata(json.loads(open(path, encoding="utf-8").read()))
    answers_sha = HfApi().dataset_info(f"{published.org}/pope-answers", revision="v1").sha
    assert lineage.command == "eval metrics" and lineage.recipe["metrics"] == ["pope", "rouge_l"]
    assert [(ref.role, ref.sha) for ref in lineage.inputs] == [("answers", answers_sha)] and lineage.models == []
    files = HfApi().list_repo_files(published.results, repo_type="dataset", revision=published.plain_sha)
    assert not any(path.startswith("lineage/") for path in files)  # appended without lineage: none


def test_an_eval_metrics_run_reproduces_identically_from_its_results_commit(hub, published, capsys):
    assert main(["reproduce", published.results, "--revision", published.run_sha, "--hub", hub.url]) == 0
    out = capsys.readouterr().out
    assert f"reproduce dataset {published.results}@{published.run_sha} ({published.run_sha}), the results run " \
           f"{published.run_file} its commit appended: alignsmith eval metrics" in out
    assert f"answers: dataset {published.org}/pope-answers @ " in out and "(pinned)" in out
    assert "identical results (metric values: 6)" in out and "result: IDENTICAL" in out

    scratch = f"{published.org}-reproduce/eval-results"
    reproduction = out.split(f"reproduction: dataset {scratch}@")[1].split()[0]
    assert reproduction == head(scratch, "dataset")
    path = hf_hub_download(scratch, lineage_path(out.split(f"{reproduction} (")[1].split(")")[0]),
                           repo_type="dataset", revision=reproduction)
    again = json.loads(open(path, encoding="utf-8").read())["recipe"]
    assert again["model_index"] is False and again["results_repo"] == scratch
    # nothing written where the original run wrote: no model-index commit, no new results run
    assert head(published.model) == published.model_head and head(published.results, "dataset") == published.run_sha


def test_a_results_run_appended_without_lineage_is_a_clear_error(hub, published, capsys):
    assert main(["reproduce", published.results, "--revision", published.plain_sha, "--hub", hub.url]) == 1
    err = capsys.readouterr().err
    assert f"dataset {published.results}@{published.plain_sha} has no alignsmith lineage in its card, and its " \
           f"commit {published.plain_sha} appended no results run with a lineage file" in err


def test_results_runs_compare_metric_by_metric(published):
    """The first differing (model, sha, benchmark, metric) is named; a float nudge is within the stated tolerance."""
    original = (published.results, published.run_sha, published.run_file)
    table = Dataset.from_parquet(hf_hub_download(published.results, published.run_file, repo_type="dataset",
                                                  revision=published.run_sha))
    rows = [ResultRow(**{f.name: row[f.name] for f in dataclasses.fields(ResultRow)}) for row in table]

    def appended(name: str, edit) -> tuple[str, str, str]:
        run = append_results(f"{published.org}/{name}", [edit(row) for row in rows])
        return run.repo_id, run.commit_sha, run.path_in_repo

    same = appended("same", lambda row: row)
    changed = appended("changed", lambda row: dataclasses.replace(row, value=0.0) if row.metric == "pope_f1" else row)
    nudged = appended("nudged", lambda row: dataclasses.replace(row, value=row.value * (1 + 1e-7)))
    assert [c.status for c in compare_results(original, same, 0.0, 0.0)] == ["identical"]
    (check,) = compare_results(original, changed, RTOL, ATOL)
    assert check.status == "differs" and check.detail.startswith(
        f"first differing metric pope/pope_f1 of {published.model}@") and check.detail.endswith(
        " vs 0.0 in the reproduction")
    assert [c.status for c in compare_results(original, nudged, RTOL, ATOL)] == ["close"]
    assert [c.status for c in compare_results(original, nudged, 0.0, 0.0)] == ["differs"]


def test_a_judge_run_reproduces_its_scores_and_its_judgments_beside_them(hub, tmp_path, capsys):
    """An `eval judge` run appends its scores and publishes its judgments: reproducing the results commit re-runs the
    judge (a real tiny model, verdicts read from its probabilities: deterministic) into scratch repos for both."""
    from alignsmith.models.tiny import build_causal_lm

    org = f"repro-judge-{secrets.token_hex(3)}"
    folder = build_causal_lm(tmp_path / "judge", seed=7, max_position_embeddings=4096)
    api = HfApi()
    api.create_repo(f"{org}/judge")
    api.create_tag(f"{org}/judge", tag="v1", revision=api.upload_folder(repo_id=f"{org}/judge",
                                                                       folder_path=str(folder)).oid)
    chat_sha = commit_release(OutputRepo(repo_id=f"{org}/chat", tag="v1"), "model",
                              [CommitOperationAdd("README.md", b"# chat\n")], "a model").commit_sha
    rows = [{"question_id": "81", "turn": 1, "category": "writing", "answer": "Steam rises, calm.",
             "model": f"{org}/chat", "model_sha": chat_sha,
             "messages": [{"role": "user", "content": "Write a haiku about tea."}]}]
    publish_dataset(OutputRepo(repo_id=f"{org}/answers", tag="v1"), {"answers": {"train": Dataset.from_list(rows)}},
                    CardContent(title="answers", summary="answers"), Lineage(command="test", recipe={}),
                    default_config="answers")
    recipe = tmp_path / "judge.yaml"
    recipe.write_text(yaml.safe_dump({
        "hub": hub.url, "answers": {"path": f"{org}/answers", "config": "answers", "revision": "v1"},
        "judge": {"model": f"{org}/judge", "revision": "v1", "dtype": "float32"}, "rating": "logprobs",
        "work_dir": str(tmp_path / "work"), "output": {"repo_id": f"{org}/judgments", "tag": "v1"},
        "results_repo": f"{org}/results"}))
    assert main(["eval", "judge", "--config", str(recipe)]) == 0
    run, chat_head = head(f"{org}/results", "dataset"), head(f"{org}/chat")
    assert chat_head != chat_sha  # the run merged its scores into the model's card
    capsys.readouterr()
    assert main(["reproduce", f"{org}/results", "--revision", run, "--hub", hub.url]) == 0
    out = capsys.readouterr().out
    assert "alignsmith eval judge" in out and "identical results (metric values: 2)" in out  # score and turn_1
    assert f"judge: model {org}/judge @ " in out and "result: IDENTICAL" in out
    (tag,) = [t.name for t in api.list_repo_refs(f"{org}-reproduce/judgments", repo_type="dataset").tags]
    again = Dataset.from_parquet(hf_hub_download(f"{org}-reproduce/judgments", "judgments/train-00000-of-00001.parquet",
                                                 repo_type="dataset", revision=tag))
    first = Dataset.from_parquet(hf_hub_download(f"{org}/judgments", "judgments/train-00000-of-00001.parquet",
                                                 repo_type="dataset", revision="v1"))
    assert again["judgment"] == first["judgment"] and head(f"{org}/results", "dataset") == run
    assert head(f"{org}/chat") == chat_head  # the reproduction wrote no model-index
