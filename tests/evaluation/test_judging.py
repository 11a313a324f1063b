"""`eval judge`: fake deterministic judges grade published answers; ratings, un-swapped preferences and the cache."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import HfApi, ModelCard

from alignsmith.cli import main
from alignsmith.models.generation import Completion, DecodingSettings, per_row
from alignsmith.models.tiny import build_causal_lm
from alignsmith.recipes import build
from evaluation import answers
from evaluation.judging import JudgeRecipe, MTBENCH_DECODING, pairwise_decoding, run

JUDGE_SPEC = {"model": "fake-judge", "endpoint": "http://127.0.0.1:9/v1"}  # never reached: the fake stands in


class Answerer:
    """A deterministic model answering with a prefix, the turn and the question's start."""

    def __init__(self, prefix: str, same_as_model: str | None = None) -> None:
        self.prefix, self.same_as_model = prefix, same_as_model

    def identity(self) -> dict[str, str]:
        return {"kind": "hf", "repo_id": f"fake/{self.prefix}", "sha": "0" * 40}

    def generate(self, conversations, settings) -> list[Completion]:
        replies = []
        for conversation in conversations:
            first = conversation[0]["content"]
            prefix = "turn" if self.same_as_model and first.startswith(self.same_as_model) else self.prefix
            turn = sum(m["role"] == "user" for m in conversation)
            replies.append(Completion(f"{prefix} {turn}: {conversation[-1]['content'][:20]}", "stop", 3, 3))
        return replies


class FakeJudge:
    """Rates 7 (MT-Bench) or ranks the answer starting with "turn" first (pairwise); one prompt gets no rating."""

    def __init__(self, unreadable: str) -> None:
        self.unreadable = unreadable
        self.prompts: list[list[dict]] = []
        self.settings: list[DecodingSettings] = []

    def identity(self) -> dict[str, str]:
        return {"kind": "hf", "repo_id": "fake/judge", "sha": "a" * 40}

    def generate(self, conversations: Sequence[Sequence[dict]], settings) -> list[Completion]:
        self.settings += per_row(settings, len(conversations))
        self.prompts += [list(c) for c in conversations]
        return [Completion(self._judge(c[-1]["content"]), "stop", 100, 10) for c in conversations]

    def _judge(self, prompt: str) -> str:
        if self.unreadable in prompt:
            return "Both answers have merit; I cannot decide."
        if '"model": "model_1"' not in prompt:
            return "The answer is fine.\n\nRating: [[7]]"
        first = re.search(r'"model": "model_1",\s*"answer": """(\w+)', prompt).group(1)
        ranks = (1, 2) if first == "turn" else (2, 1)
        return f"[{{'model': 'model_1', 'rank': {ranks[0]}}}, {{'model': 'model_2', 'rank': {ranks[1]}}}]"


@pytest.fixture(scope="module")
def published_answers(hub, tmp_path_factory):
    """MT-Bench answers of a model (all 80 questions) and of a baseline (first 6), on the embedded Hub."""
    folder = str(build_causal_lm(tmp_path_factory.mktemp("chat") / "tiny-chat", seed=2))
    work = tmp_path_factory.mktemp("answers")
    for repo, model, limit in (("judge-test/model-answers", Answerer("turn"), None),
                               ("judge-test/baseline-answers", Answerer("BASE", same_as_model="Compose"), 6)):
        recipe = build(answers.AnswersRecipe, {"model": {"model": folder}, "max_questions": limit,
                                               "work_dir": str(work / repo), "output": {"repo_id": repo, "tag": "v1"}})
        answers.run(recipe, load_model=lambda spec, m=model: m)
    return {"path": "judge-test/model-answers", "config": "answers", "revision": "v1"}


def judge_recipe(tmp_path, repo: str, answers_src, **overrides) -> JudgeRecipe:
    return build(JudgeRecipe, {"answers": answers_src, "judge": JUDGE_SPEC, "work_dir": str(tmp_path),
                               "output": {"repo_id": repo, "tag": "v1"}, **overrides})


def judgments(repo: str, tag: str = "v1"):
    return load_dataset(repo, "judgments", revision=tag, split="train")


def test_mtbench_grades_parse_and_aggregate_as_fastchat(tmp_path, hub, published_answers, capsys):
    judge = FakeJudge(unreadable="Compose an engaging travel blog post")  # both turns of question 81
    judged = run(judge_recipe(tmp_path, "judge-test/mtbench", published_answers), load_model=lambda spec: judge)
    rows = judgments("judge-test/mtbench")
    assert rows.num_rows == 160 and judged.calls.asked == 160 and judged.failed == 2
    failed = [r for r in rows if not r["parse_ok"]]
    assert [(r["question_id"], r["turn"], r["score"]) for r in failed] == [("81", 1, -1.0), ("81", 2, -1.0)]
    assert failed[0]["judgment"] == "Both answers have merit; I cannot decide."
    assert {r["score"] for r in rows if r["parse_ok"]} == {7.0}
    assert {(r["judge"], r["judge_sha"], r["model"]) for r in rows} == {("fake/judge", "a" * 40, "tiny-chat")}
    assert {s for s in judge.settings} == {MTBENCH_DECODING} and MTBENCH_DECODING.max_new_tokens == 2048

    # FastChat's prompts: a reference for math, both turns for turn 2
    by_hash = {r["prompt_hash"]: r for r in rows}
    assert len(by_hash) == 160
    math_turn_2 = next(p for p in judge.prompts if "<|The Start of Reference Answer|>" in p[-1]["content"]
                       and "### User:" in p[-1]["content"])
    assert "turn 1: " in math_turn_2[-1]["content"] and "turn 2: " in math_turn_2[-1]["content"]

    (summary,) = judged.summary
    assert (summary["score"], summary["n_valid"], summary["n_failed"]) == (7.0, 158, 2)
    assert summary["categories"]["writing"] == 7.0 and len(summary["categories"]) == 8
    printed = capsys.readouterr().out
    assert "tiny-chat" in printed and "humanities" in printed

    # a second run is served from the cache and publishes the same judgments
    again = FakeJudge(unreadable="never")
    rerun = run(judge_recipe(tmp_path, "judge-test/mtbench", published_answers,
                             output={"repo_id": "judge-test/mtbench", "tag": "v2"}), load_model=lambda spec: again)
    assert again.prompts == [] and (rerun.calls.asked, rerun.calls.cached) == (0, 160)
    assert judgments("judge-test/mtbench", "v2").to_list() == rows.to_list()


def test_pairwise_orders_are_unswapped_and_draws_never_asked(tmp_path, hub, published_answers):
    judge = FakeJudge(unreadable="Draft a professional email")  # question 82, turn 1
    baseline = {"path": "judge-test/baseline-answers", "config": "answers", "revision": "v1"}
    model = {**published_answers, "split": "train[:12]"}  # the baseline answered the first 6 questions
    judged = run(judge_recipe(tmp_path, "judge-test/pairwise", model, mode="alpaca_pairwise", baseline=baseline),
                 load_model=lambda spec: judge)
    rows = judgments("judge-test/pairwise")
    prefs = {(r["question_id"], r["turn"]): r["preference"] for r in rows}
    assert prefs.pop(("81", 1)) == prefs.pop(("81", 2)) == 1.5  # identical answers: a draw, never sent
    assert math.isnan(prefs.pop(("82", 1)))
    assert set(prefs.values()) == {2.0}  # the model wins every other row, however it was shown
    assert {r["switched"] for r in rows} == {True, False}
    assert judged.calls.asked == len(judge.prompts) == 10 and judged.failed == 1
    assert set(judge.settings) == {pairwise_decoding()} and pairwise_decoding().max_new_tokens == 100
    (summary,) = judged.summary
    assert (summary["n_wins"], summary["n_draws"], summary["n_total"]) == (9, 2, 11)
    assert summary["win_rate"] == pytest.approx(100 * 10 / 11)
    assert {r["baseline"] for r in rows} == {"tiny-chat"}


def test_a_question_missing_from_the_baseline_is_named(tmp_path, hub, published_answers):
    baseline = {"path": "judge-test/baseline-answers", "config": "answers", "revision": "v1"}
    with pytest.raises(Exception, match="record 12: question 87 turn 1 has no baseline answer"):
        run(judge_recipe(tmp_path, "judge-test/unmatched", published_answers, mode="alpaca_pairwise",
                         baseline=baseline), load_model=lambda spec: FakeJudge("never"))


GOOD = {"question_id": "1", "turn": 1, "category": "writing", "messages": [{"role": "user", "content": "q"}],
        "answer": "a", "model": "m"}
NO_ANSWER = {k: v for k, v in GOOD.items() if k != "answer"}


@pytest.mark.parametrize(("rows", "message"), [
    ([NO_ANSWER], "record 0: missing field 'answer'"),  # no such column at all
    ([GOOD, NO_ANSWER], "record 1: field 'answer' must be str, got None"),  # the column, null on one row
    ([GOOD, {**GOOD, "messages": [{"role": "assistant", "content": "a"}]}],
     "record 1: field 'messages' must be a list of {role, content} ending with the user turn"),
    ([GOOD, GOOD], "record 1: question 1 turn 1 of m is already answered in record 0"),
])
def test_bad_answers_name_file_record_and_field(tmp_path, hub, capsys, rows, message):
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "judge.yaml"
    recipe.write_text(yaml.safe_dump({"hub": hub.url, "answers": {"path": str(path)}, "judge": JUDGE_SPEC,
                                      "work_dir": str(tmp_path), "output": {"repo_id": "judge-test/bad"}}))
    assert main(["eval", "judge", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert f"answers dataset {str(path)!r} (split 'train'): {message}" in err and "Traceback" not in err


def test_pairwise_needs_a_baseline_and_only_pairwise_takes_one(tmp_path):
    from alignsmith.recipes import RecipeError

    with pytest.raises(RecipeError, match="baseline: required by mode 'alpaca_pairwise'"):
        judge_recipe(tmp_path, "o/r", {"path": "a/b"}, mode="alpaca_pairwise")
    with pytest.raises(RecipeError, match="baseline"):
        judge_recipe(tmp_path, "o/r", {"path": "a/b"}, baseline={"path": "c/d"})


class Counting:
    """Wraps a real chat model, counting the conversations it is asked."""

    def __init__(self, model) -> None:
        self.model, self.asked = model, 0

    def identity(self) -> dict[str, str]:
        return self.model.identity()

    def generate(self, conversations, settings):
        self.asked += len(conversations)
        return self.model.generate(conversations, settings)


def test_end_to_end_with_a_tiny_hf_model_answering_and_judging(tmp_path, hub):
    """A real (random-weights) model from the embedded Hub answers two MT-Bench questions, then judges them."""
    from alignsmith.lineage import read_lineage

    folder = build_causal_lm(tmp_path / "tiny", seed=4, max_position_embeddings=4096)
    api = HfApi()
    api.create_repo("judge-test/tiny-chat", exist_ok=True)
    sha = api.upload_folder(repo_id="judge-test/tiny-chat", folder_path=str(folder)).oid
    api.create_tag("judge-test/tiny-chat", tag="v1", revision=sha)

    config = tmp_path / "answers.yaml"
    config.write_text(yaml.safe_dump({
        "hub": hub.url, "model": {"model": "judge-test/tiny-chat", "revision": "v1", "dtype": "float32"},
        "max_questions": 2, "shard_size": 1, "decoding": {"max_new_tokens": 8}, "work_dir": str(tmp_path / "work"),
        "output": {"repo_id": "judge-test/tiny-answers", "tag": "v1"}}))
    assert main(["eval", "answers", "--config", str(config)]) == 0
    rows = load_dataset("judge-test/tiny-answers", "answers", revision="v1", split="train")
    assert rows.num_rows == 4 and set(rows["model_sha"]) == {sha} and set(rows["model"]) == {"judge-test/tiny-chat"}
    assert rows[1]["messages"][1] == {"role": "assistant", "content": rows[0]["answer"]}
    assert all(0 < r["completion_tokens"] <= 8 for r in rows)
    lineage, _ = read_lineage("judge-test/tiny-answers", "dataset", "v1")
    assert [(m.role, m.sha) for m in lineage.models] == [("model", sha)]

    answers_src = {"path": "judge-test/tiny-answers", "config": "answers", "revision": "v1"}
    judge_spec = {"model": "judge-test/tiny-chat", "revision": "v1", "dtype": "float32"}
    first, again = [], []
    for tag, calls in (("v1", first), ("v2", again)):
        recipe = build(JudgeRecipe, {"answers": answers_src, "judge": judge_spec, "work_dir": str(tmp_path / "judge"),
                                     "output": {"repo_id": "judge-test/tiny-judgments", "tag": tag}})
        judged = run(recipe, load_model=lambda spec: calls.append(Counting(answers.load_chat(spec))) or calls[0])
        assert judged.failed + judged.summary[0]["n_valid"] == 4  # a random judge's text rarely holds a rating
    assert (first[0].asked, again[0].asked) == (4, 0)
    v1, v2 = (judgments("judge-test/tiny-judgments", t).to_list() for t in ("v1", "v2"))
    assert v1 == v2 and {r["judge_sha"] for r in v1} == {sha}

    # the scores as results rows and in the answering model's card, by a fake judge that always rates 7
    recipe = build(JudgeRecipe, {"answers": answers_src, "judge": JUDGE_SPEC, "work_dir": str(tmp_path / "fake"),
                                 "output": {"repo_id": "judge-test/tiny-judgments", "tag": "v3"},
                                 "results_repo": "judge-test/results"})
    run(recipe, load_model=lambda spec: FakeJudge(unreadable="no prompt holds this"))
    results = load_dataset("judge-test/results", split="train")
    assert {(r["model"], r["model_sha"], r["benchmark"], r["metric"], r["value"], r["n"]) for r in results} == {
        ("judge-test/tiny-chat", sha, "mt_bench", metric, 7.0, n) for metric, n in (("score", 4), ("turn_1", 2),
                                                                                   ("turn_2", 2))}
    assert {(r["judge"], r["judge_sha"], r["prompt_set"]) for r in results} == {
        ("fake/judge", "a" * 40, "judge-test/tiny-judgments")}
    card = ModelCard.load("judge-test/tiny-chat")
    assert {(e.dataset_name, e.metric_type, e.metric_value) for e in card.data.eval_results} == {
        ("mt_bench", "score", 7.0), ("mt_bench", "turn_1", 7.0), ("mt_bench", "turn_2", 7.0)}
    assert HfApi().list_repo_refs("judge-test/tiny-chat").tags[0].target_commit == sha  # the tag did not move


def test_logprob_rating_is_the_expected_rating_of_the_judges_own_distribution(tmp_path):
    """Each candidate's score is the judge's log-probability of writing it after the verdict prefix, as a plain
    forward pass over the whole text gives it; the verdict is their probability-weighted mean rating."""
    import torch

    from alignsmith.models.hf_chat import HFChatModel
    from evaluation.mtbench import RATING_CANDIDATES, VERDICT_PREFIX, expected_rating, parse_rating

    judge = HFChatModel(str(build_causal_lm(tmp_path / "judge", seed=5)), dtype="float32", device="cpu")
    chats = [[{"role": "user", "content": "Rate this answer: 'Paris'."}],
             [{"role": "system", "content": "Be strict."}, {"role": "user", "content": "Rate: 'two'."}]]
    scores = judge.continuation_logprobs(chats, VERDICT_PREFIX, RATING_CANDIDATES)
    tokenizer, model = judge.tokenizer, judge.model
    for chat, got in zip(chats, scores):
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) + VERDICT_PREFIX
        context = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for candidate, value in zip(RATING_CANDIDATES, got):
            ids = tokenizer(text + candidate, add_special_tokens=False)["input_ids"]
            assert ids[:context] == tokenizer(text, add_special_tokens=False)["input_ids"]  # no merge across here
            with torch.inference_mode():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            expected = sum(logprobs[j - 1, ids[j]].item() for j in range(context, len(ids)))
            assert value == pytest.approx(expected, abs=1e-4)
    assert scores[0] != scores[1]

    probabilities = torch.softmax(torch.tensor(scores[0], dtype=torch.float64), 0).tolist()
    text = expected_rating(scores[0])
    assert parse_rating(text) == pytest.approx(sum(p * r for p, r in zip(probabilities, range(1, 11))), abs=0.005)
    assert 1 <= parse_rating(text) <= 10 and expected_rating([0.0] * 9 + [50.0]).startswith("Rating: [[10.00]]")


def test_logprob_rating_judges_every_answer_and_is_cached_apart_from_generated_judgments(tmp_path, hub):
    from alignsmith.models.hf_chat import HFChatModel

    folder = str(build_causal_lm(tmp_path / "tiny", seed=6, max_position_embeddings=4096))
    recipe = build(answers.AnswersRecipe, {"model": {"model": folder}, "max_questions": 2,
                                           "work_dir": str(tmp_path / "answers"),
                                           "output": {"repo_id": "judge-test/logprob-answers", "tag": "v1"}})
    answers.run(recipe, load_model=lambda spec: Answerer("turn"))
    source = {"path": "judge-test/logprob-answers", "config": "answers", "revision": "v1"}
    judge = Counting(HFChatModel(folder, dtype="float32", device="cpu"))
    judge.continuation_logprobs = judge.model.continuation_logprobs
    for tag, rating in (("v1", "logprobs"), ("v2", "generate")):
        run(build(JudgeRecipe, {"answers": source, "judge": {"model": folder}, "rating": rating,
                                "work_dir": str(tmp_path / "judge"),
                                "output": {"repo_id": "judge-test/logprob-judgments", "tag": tag}}),
            load_model=lambda spec: judge)
    assert judge.asked == 4  # the generated judgments were not served from the logprob verdicts' cache
    rows = judgments("judge-test/logprob-judgments", "v1")
    assert all(rows["parse_ok"]) and all(1 <= s <= 10 for s in rows["score"])  # a random judge: about 5
    assert all(r.startswith("Rating: [[") and "probabilities of each rating" in r for r in rows["judgment"])


def test_logprob_rating_needs_single_grading_and_an_in_process_judge(tmp_path):
    from alignsmith.recipes import RecipeError

    with pytest.raises(RecipeError, match="rating: 'logprobs' reads the judge's probabilities in this process"):
        judge_recipe(tmp_path, "o/r", {"path": "a/b"}, rating="logprobs")
    with pytest.raises(RecipeError, match="rating: 'logprobs' grades mtbench_single only"):
        judge_recipe(tmp_path, "o/r", {"path": "a/b"}, judge={"model": "a/judge"}, rating="logprobs",
                     mode="alpaca_pairwise", baseline={"path": "c/d"})
