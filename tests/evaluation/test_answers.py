"""`eval answers`: MT-Bench's two turns and prompt datasets answered, resumed after a kill, published and read back."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from datasets import load_dataset

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import read_lineage
from alignsmith.models.generation import Completion, DecodingSettings, per_row
from alignsmith.models.tiny import build_causal_lm, build_tokenizer
from alignsmith.recipes import build
from evaluation.answers import AnswersError, AnswersRecipe, Question, run, turn_messages


class EchoModel:
    """A deterministic chat model: answers with the question's start and the turn; counts every conversation."""

    def __init__(self) -> None:
        self.asked: list[list[dict]] = []
        self.settings: list[DecodingSettings] = []

    def identity(self) -> dict[str, str]:
        return {"kind": "hf", "repo_id": "fake/echo", "sha": "e" * 40}

    def generate(self, conversations: Sequence[Sequence[dict]], settings) -> list[Completion]:
        self.settings += per_row(settings, len(conversations))
        replies = []
        for conversation in conversations:
            self.asked.append(list(conversation))
            turn = sum(m["role"] == "user" for m in conversation)
            replies.append(Completion(f"turn {turn}: {conversation[-1]['content'][:24]}", "stop", 10 * turn, 5))
        return replies


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return str(build_causal_lm(tmp_path_factory.mktemp("chat") / "tiny-chat", seed=1))


def recipe(tmp_path, model: str, repo: str, **overrides) -> AnswersRecipe:
    data = {"model": {"model": model}, "max_questions": 5, "shard_size": 2, "work_dir": str(tmp_path / "work"),
            "output": {"repo_id": repo, "tag": "v1"}, **overrides}
    return build(AnswersRecipe, data)


def published(repo: str, tag: str = "v1"):
    return load_dataset(repo, "answers", revision=tag, split="train")


def test_turn_two_follows_the_models_own_first_answer():
    question = Question("q", None, [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    assert turn_messages(question, 2, ["mine"]) == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "mine"}, {"role": "user", "content": "two"}]
    dataset = Question("d", None, [{"role": "system", "content": "s"}, {"role": "user", "content": "one"},
                                   {"role": "assistant", "content": "theirs"}, {"role": "user", "content": "two"}])
    assert [m["content"] for m in turn_messages(dataset, 2, None)] == ["s", "one", "theirs", "two"]
    assert [m["content"] for m in turn_messages(dataset, 1, None)] == ["s", "one"]


def test_mt_bench_two_turns_published_and_read_back(tmp_path, hub, chat_folder):
    model = EchoModel()
    release = run(recipe(tmp_path, chat_folder, "answers-test/mt-bench"), load_model=lambda spec: model)
    rows = published("answers-test/mt-bench")
    assert release.tag == "v1" and rows.num_rows == 10  # 5 questions x 2 turns
    assert [(r["question_id"], r["turn"]) for r in rows] == [(str(q), t) for q in range(81, 86) for t in (1, 2)]
    first, second = rows[0], rows[1]
    assert first["messages"] == [{"role": "user", "content": first["messages"][0]["content"]}]
    assert second["messages"][:2] == [first["messages"][0], {"role": "assistant", "content": first["answer"]}]
    assert second["messages"][2]["role"] == "user" and second["answer"].startswith("turn 2: ")
    assert first["category"] == "writing" and first["prompt_set"] == "mt_bench" and first["reference"] is None
    assert first["model"] == "tiny-chat" and first["model_sha"] is None  # a local folder: pinned by content in lineage
    assert json.loads(first["decoding"]) == DecodingSettings(temperature=0.7, max_new_tokens=1024).to_dict()
    assert (first["finish_reason"], first["prompt_tokens"], first["completion_tokens"]) == ("stop", 10, 5)
    lineage, _ = read_lineage("answers-test/mt-bench", "dataset", "v1")
    assert [r.role for r in lineage.inputs] == ["prompts", "reference_answers"]
    assert all(len(r.sha) == 64 for r in lineage.inputs) and lineage.models[0].repo_type == "local"


def test_math_gets_greedy_decoding_and_its_reference(tmp_path, hub, chat_folder):
    model = EchoModel()
    run(recipe(tmp_path, chat_folder, "answers-test/math", max_questions=None, shard_size=40),
        load_model=lambda spec: model)
    rows = [r for r in published("answers-test/math") if r["category"] == "math"]
    assert rows and all(r["reference"] for r in rows)
    assert {json.loads(r["decoding"])["temperature"] for r in rows} == {0.0}
    assert {s.temperature for s in model.settings} == {0.0, 0.1, 0.7}  # FastChat's per-category temperatures
    assert sum(r["reference"] is not None for r in published("answers-test/math")) == 60  # math, reasoning, coding


def test_a_killed_run_recomputes_only_its_missing_shard(tmp_path, hub, chat_folder):
    model = EchoModel()
    run(recipe(tmp_path, chat_folder, "answers-test/resumed"), load_model=lambda spec: model)
    assert len(model.asked) == 10
    shards = sorted((tmp_path / "work" / "answers").glob("shard-*.npz"))
    assert len(shards) == 3  # 5 questions, 2 per shard
    kept = {p.name: p.stat().st_mtime_ns for p in shards if p != shards[1]}
    shards[1].unlink()  # as if the run had been killed while answering shard 1

    again = EchoModel()
    run(recipe(tmp_path, chat_folder, "answers-test/resumed", output={"repo_id": "answers-test/resumed", "tag": "v2"}),
        load_model=lambda spec: again)
    assert len(again.asked) == 4  # shard 1's two questions, two turns each
    assert {m[0]["content"] for m in again.asked} == {r["messages"][0]["content"] for r in published("answers-test/resumed")
                                                      if r["question_id"] in ("83", "84")}
    assert all(p.stat().st_mtime_ns == mtime for name, mtime in kept.items() for p in [tmp_path / "work" / "answers" / name])
    assert published("answers-test/resumed", "v2").to_list() == published("answers-test/resumed", "v1").to_list()


def test_other_settings_in_the_same_work_dir_are_refused(tmp_path, hub, chat_folder):
    from alignsmith.shards import ShardMismatchError

    run(recipe(tmp_path, chat_folder, "answers-test/first"), load_model=lambda spec: EchoModel())
    with pytest.raises(ShardMismatchError, match="different job"):
        run(recipe(tmp_path, chat_folder, "answers-test/other", decoding={"temperature": 1.0}),
            load_model=lambda spec: EchoModel())


def test_a_model_without_a_chat_template_is_refused_before_generating(tmp_path, hub):
    plain = build_causal_lm(tmp_path / "plain", tokenizer=build_tokenizer(seed=0, chat_template=None))
    with pytest.raises(AlignsmithError, match="has no chat template"):
        run(recipe(tmp_path, str(plain), "answers-test/plain"))
    assert list((tmp_path / "work" / "answers").glob("shard-*")) == []


def test_prompt_datasets_alpaca_instructions_and_conversations(tmp_path, hub, chat_folder):
    alpaca = tmp_path / "alpaca_eval.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": "ref", "generator": "davinci",
                                          "dataset": "helpful_base"}) + "\n" for w in ("hi", "bye")))
    run(recipe(tmp_path, chat_folder, "answers-test/alpaca", prompts={"path": str(alpaca)}, work_dir=str(tmp_path / "a")),
        load_model=lambda spec: EchoModel())
    rows = published("answers-test/alpaca")
    assert [(r["question_id"], r["turn"], r["category"]) for r in rows] == [("0", 1, "helpful_base"), ("1", 1, "helpful_base")]
    assert rows[0]["messages"] == [{"role": "user", "content": "Say hi."}] and rows[0]["prompt_set"] == "alpaca_eval"
    assert json.loads(rows[0]["decoding"])["temperature"] == 0.0  # greedy unless the recipe says otherwise

    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"id": "c1", "messages": [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "theirs"},
        {"role": "user", "content": "second"}, {"role": "assistant", "content": "theirs again"}]}) + "\n")
    run(recipe(tmp_path, chat_folder, "answers-test/chats", prompts={"path": str(chats)}, work_dir=str(tmp_path / "c")),
        load_model=lambda spec: EchoModel())
    rows = published("answers-test/chats")
    assert [r["turn"] for r in rows] == [1, 2]
    assert [m["content"] for m in rows[1]["messages"]] == ["first", "theirs", "second"]  # the dataset's own context


def test_an_instruction_that_is_not_text_is_named(tmp_path, hub, chat_folder):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "ok"}) + "\n" + json.dumps({"instruction": " "}) + "\n")
    with pytest.raises(AnswersError, match=r"bad.jsonl.*record 1: field 'instruction'"):
        run(recipe(tmp_path, chat_folder, "answers-test/bad", prompts={"path": str(bad)}),
            load_model=lambda spec: EchoModel())
