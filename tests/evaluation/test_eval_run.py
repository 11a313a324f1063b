"""`eval run`: two tiny Hub models answered, judged and scored from one recipe; reruns publish nothing."""

from __future__ import annotations

import pytest
from datasets import load_dataset
from huggingface_hub import HfApi
from test_judging import JUDGE_SPEC, Answerer, FakeJudge

from alignsmith.lineage import read_lineage
from alignsmith.models.tiny import build_causal_lm
from alignsmith.publish import TagExistsError
from alignsmith.recipes import RecipeError, build
from evaluation import answers
from evaluation.run import EvalRunRecipe, run

MODELS = ("eval-run-test/tiny-a", "eval-run-test/tiny-b")


@pytest.fixture(scope="module")
def tiny_models(hub, tmp_path_factory) -> dict[str, str]:
    """Two random-weights chat models on the embedded Hub, tagged v1; their commit shas by repo."""
    api, shas = HfApi(), {}
    for seed, repo in enumerate(MODELS):
        folder = build_causal_lm(tmp_path_factory.mktemp("tiny") / repo.split("/")[1], seed=seed,
                                 max_position_embeddings=4096)
        api.create_repo(repo, exist_ok=True)
        shas[repo] = api.upload_folder(repo_id=repo, folder_path=str(folder)).oid
        api.create_tag(repo, tag="v1", revision=shas[repo])
    return shas


def entry(repo: str, prefix: str, judged: bool = True) -> dict:
    name = repo.split("/")[1]
    return {"model": repo, "revision": "v1", "dtype": "float32",
            "answers": {"repo_id": f"eval-run-test/{prefix}-{name}-answers", "tag": "v1"},
            **({"judgments": {"repo_id": f"eval-run-test/{prefix}-{name}-judgments", "tag": "v1"}} if judged else {})}


def recipe_data(tmp_path, prefix: str, **overrides) -> dict:
    return {"models": [entry(repo, prefix) for repo in MODELS], "max_questions": 2, "shard_size": 1,
            "decoding": {"max_new_tokens": 8}, "judge": JUDGE_SPEC, "results_repo": f"eval-run-test/{prefix}-results",
            "work_dir": str(tmp_path / "work"), **overrides}


class Loader:
    """Real tiny models answer (or the given fakes); the fake judge stands in for the endpoint judge."""

    def __init__(self, answerers: dict | None = None) -> None:
        self.judge, self.answerers, self.loaded = FakeJudge(unreadable="no prompt holds this"), answerers, []

    def __call__(self, spec):
        self.loaded.append(spec.model)
        if spec.endpoint is not None:
            return self.judge
        return self.answerers[spec.model] if self.answerers else answers.load_chat(spec)


def commits(repos) -> dict[str, list[str]]:
    api = HfApi()
    return {repo: [c.commit_id for c in api.list_repo_commits(repo, repo_type=kind)] for repo, kind in repos}


def test_two_models_answered_judged_and_scored_then_a_rerun_publishes_nothing(tmp_path, hub, tiny_models):
    recipe = build(EvalRunRecipe, recipe_data(tmp_path, "single"))
    loader = Loader()
    done = run(recipe, load_model=loader)
    assert done.published == 4 and loader.loaded == [*MODELS, "fake-judge"]  # the judge is loaded once
    assert len(loader.judge.prompts) == 8  # 2 models x 2 questions x 2 turns

    for repo, answered, judged in zip(MODELS, done.answers, done.judgments):
        rows = load_dataset(answered.repo_id, "answers", revision="v1", split="train")
        assert rows.num_rows == 4 and set(rows["model"]) == {repo} and set(rows["model_sha"]) == {tiny_models[repo]}
        graded = load_dataset(judged.repo_id, "judgments", revision="v1", split="train")
        assert graded.num_rows == 4 and set(graded["score"]) == {7.0} and set(graded["model"]) == {repo}
        lineage, _ = read_lineage(judged.repo_id, "dataset", "v1")
        assert lineage.recipe["answers"]["revision"] == answered.commit_sha  # judged at the commit published

    results = load_dataset("eval-run-test/single-results", split="train")
    assert {(r["model"], r["model_sha"], r["metric"], r["value"]) for r in results} == {
        (repo, tiny_models[repo], metric, 7.0) for repo in MODELS for metric in ("score", "turn_1", "turn_2")}

    touched = [*((r.repo_id, "dataset") for r in done.answers + done.judgments),
               ("eval-run-test/single-results", "dataset"), *((m, "model") for m in MODELS)]  # cards' model-index
    before = commits(touched)
    again = Loader()
    rerun = run(build(EvalRunRecipe, recipe_data(tmp_path, "single")), load_model=again)
    assert rerun.published == 0 and again.loaded == [] and again.judge.prompts == []
    assert (rerun.answers, rerun.judgments) == (done.answers, done.judgments)
    assert commits(touched) == before

    # the same tags from another recipe are refused before any model loads
    changed = Loader()
    with pytest.raises(TagExistsError, match="single-tiny-a-answers already has tag 'v1' from a different recipe"):
        run(build(EvalRunRecipe, recipe_data(tmp_path, "single", decoding={"max_new_tokens": 9})), load_model=changed)
    assert changed.loaded == []


def test_pairwise_ranks_every_model_against_the_baseline(tmp_path, hub, tiny_models):
    baseline, judged = MODELS
    data = recipe_data(tmp_path, "pairwise", mode="alpaca_pairwise", baseline=baseline,
                       models=[entry(baseline, "pairwise", judged=False), entry(judged, "pairwise")])
    loader = Loader({judged: Answerer("turn"), baseline: Answerer("BASE")})
    done = run(build(EvalRunRecipe, data), load_model=loader)
    assert len(done.answers) == 2 and [r.repo_id for r in done.judgments] == ["eval-run-test/pairwise-tiny-b-judgments"]
    rows = load_dataset(done.judgments[0].repo_id, "judgments", revision="v1", split="train")
    assert set(rows["preference"]) == {2.0} and set(rows["baseline"]) == {baseline}  # "turn ..." always wins
    results = load_dataset("eval-run-test/pairwise-results", split="train")
    assert {(r["model"], r["benchmark"], r["metric"], r["value"]) for r in results} == {
        (judged, "alpaca_eval", "win_rate", 100.0), (judged, "alpaca_eval", "discrete_win_rate", 100.0)}


def bad_model(**changes) -> list[dict]:
    second = {**entry(MODELS[1], "bad"), **changes}
    return [entry(MODELS[0], "bad"), {k: v for k, v in second.items() if v is not None}]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"models": bad_model(dtpye="float32")}, "models[1]: unknown key 'dtpye' (did you mean 'dtype'?)"),
    ({"models": bad_model(batch_size=0)}, "models[1].batch_size: must be at least 1, got 0"),
    ({"models": bad_model(answers={"repo_id": "no-slash"})}, "models[1].answers.repo_id: expected 'namespace/name'"),
    ({"models": bad_model(judgments=None)}, "models[1].judgments: required"),
    ({"models": bad_model(answers=entry(MODELS[0], "bad")["answers"])}, "published by two stages"),
    ({"mode": "alpaca_pairwise", "baseline": "eval-run-test/other"}, "baseline: 'eval-run-test/other' names no entry"),
    ({"mode": "alpaca_pairwise", "baseline": MODELS[0]}, "models[0].judgments: the baseline is not judged"),
    ({"baseline": MODELS[0]}, "baseline: required by mode 'alpaca_pairwise' and used by no other mode"),
    ({"decoding": {"top_p": 0}}, "decoding.top_p: must be above 0"),
])
def test_a_bad_entry_fails_at_load_naming_it(tmp_path, overrides, message):
    with pytest.raises(RecipeError) as err:
        build(EvalRunRecipe, recipe_data(tmp_path, "bad", **overrides))
    assert message in str(err.value)
