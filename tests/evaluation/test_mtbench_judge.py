"""MT-Bench single-answer grading against FastChat's own prompts, regexes and show_result arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignsmith.cli import main
from evaluation.mtbench import (
    FAILED,
    QUESTIONS,
    aggregate,
    judge_prompt_name,
    parse_rating,
    read_judgments,
    reference_answers,
    render_judge_messages,
)

FASTCHAT = Path("/work/shared/data/eval_prompts/fastchat")
BUNDLED = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fastchat"


def _prompts() -> dict[str, dict]:
    return {row["name"]: row for row in map(json.loads, (BUNDLED / "judge_prompts.jsonl").read_text().splitlines())}


def _question(category: str) -> dict:
    return next(q for q in map(json.loads, QUESTIONS.read_text().splitlines()) if q["category"] == category)


@pytest.mark.skipif(not FASTCHAT.exists(), reason="the shared FastChat data is not on this machine")
@pytest.mark.parametrize("name", ["LICENSE", "judge_prompts.jsonl", "mt_bench/question.jsonl", "mt_bench/reference_answer/gpt-4.jsonl"])
def test_bundled_data_is_fastchats_byte_for_byte(name):
    assert (BUNDLED / name).read_bytes() == (FASTCHAT / name).read_bytes()


@pytest.mark.parametrize(("text", "rating"), [
    ("The answer is helpful and accurate.\n\nRating: [[8]]", 8),
    ("Overall a solid answer. Rating: [8]", 8),
    ("The assistant's answer is mostly correct but misses the edge case.", FAILED),
    ("Rating: [[8.5]]", 8.5),
    ("The code `return arr[0]` ignores empty input, so the answer is incomplete.", 0),
    ("The code `return arr[0]` is wrong.\nRating: [[3]]", 3),
    ("Rating: [[10]] (an earlier draft said [[2]])", 10),
    ("Rating: [[08]]", FAILED),  # FastChat's literal_eval rejects it
    ("Rating: [[ 7 ]]", FAILED),
])
def test_rating_parser_follows_fastchats_regexes(text, rating):
    parsed = parse_rating(text)
    assert parsed == rating and type(parsed) is type(rating)


@pytest.mark.parametrize(("category", "turn", "name"), [
    ("writing", 1, "single-v1"), ("writing", 2, "single-v1-multi-turn"),
    ("math", 1, "single-math-v1"), ("coding", 2, "single-math-v1-multi-turn"),
    ("reasoning", 1, "single-math-v1"), ("stem", 2, "single-v1-multi-turn"),
])
def test_prompt_choice_matches_fastchats_resolver(category, turn, name):
    assert judge_prompt_name(category, turn) == name


def test_single_v1_rendering():
    q, p = _question("writing"), _prompts()["single-v1"]
    expected_user = (
        p["prompt_template"].split("{question}")[0] + q["turns"][0]
        + "\n\n[The Start of Assistant's Answer]\nA {braced} answer.\n[The End of Assistant's Answer]"
    )
    assert render_judge_messages(q, ["A {braced} answer.", "second"], 1) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": expected_user},
    ]


def test_single_math_v1_rendering():
    q, p = _question("math"), _prompts()["single-math-v1"]
    ref = reference_answers()[q["question_id"]]
    expected_user = (
        p["prompt_template"].split("{question}")[0] + q["turns"][0]
        + "\n\n[The Start of Reference Answer]\n" + ref[0] + "\n[The End of Reference Answer]"
        + "\n\n[The Start of Assistant's Answer]\n42\n[The End of Assistant's Answer]"
    )
    messages = render_judge_messages(q, ["42", "43"], 1, ref)
    assert messages == [{"role": "system", "content": p["system_prompt"]}, {"role": "user", "content": expected_user}]


def test_single_v1_multi_turn_rendering():
    q, p = _question("roleplay"), _prompts()["single-v1-multi-turn"]
    expected_user = (
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n" + q["turns"][0]
        + "\n\n### Assistant A:\nfirst\n\n### User:\n" + q["turns"][1]
        + "\n\n### Assistant A:\nsecond\n\n<|The End of Assistant A's Conversation with User|>"
    )
    messages = render_judge_messages(q, ["first", "second"], 2)
    assert messages[0] == {"role": "system", "content": p["system_prompt"]}
    assert messages[0]["content"].endswith('"Rating: [[5]]".\n\n')
    assert messages[1] == {"role": "user", "content": expected_user}


def test_single_math_v1_multi_turn_rendering():
    q, p = _question("coding"), _prompts()["single-math-v1-multi-turn"]
    ref = reference_answers()[q["question_id"]]
    expected_user = (
        "<|The Start of Reference Answer|>\n\n### User:\n" + q["turns"][0] + "\n\n### Reference answer:\n" + ref[0]
        + "\n\n### User:\n" + q["turns"][1] + "\n\n### Reference answer:\n" + ref[1]
        + "\n\n<|The End of Reference Answer|>\n\n\n"
        + "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n" + q["turns"][0]
        + "\n\n### Assistant A:\ndef f(): pass\n\n### User:\n" + q["turns"][1]
        + "\n\n### Assistant A:\nreturn arr[0]\n\n<|The End of Assistant A's Conversation with User|>"
    )
    messages = render_judge_messages(q, ["def f(): pass", "return arr[0]"], 2, ref)
    assert messages == [{"role": "system", "content": p["system_prompt"]}, {"role": "user", "content": expected_user}]


def _row(question_id, model, turn, score, judgment="Rating: [[5]]"):
    prompt = "single-v1" if turn == 1 else "single-v1-multi-turn"
    return {"question_id": question_id, "model": model, "judge": ["gpt-4", prompt], "user_prompt": "...",
            "judgment": judgment, "score": score, "turn": turn, "tstamp": 1700000000.0}


@pytest.fixture
def judgments(tmp_path) -> Path:
    """Model a: turn 1 scores 10, 8, 6 (one failed), turn 2 scores 2 => rows mean 6.5, turn means 8 and 2 (mean 5)."""
    rows = [
        _row(81, "a", 1, 10, "Rating: [[10]]"), _row(82, "a", 1, 8, "Rating: [[8]]"), _row(101, "a", 1, 6, "Rating: [[6]]"),
        _row(130, "a", 1, -1, "I cannot rate this."), _row(81, "a", 2, 2, "Rating: [[2]]"),
        _row(81, "b", 1, 7, "[7]"), _row(81, "b", 2, 9.5, "Rating: [[9.5]]"),
        _row(82, "b", 2, 3, "Code `x[0]` is wrong."),  # stored 3, but FastChat's parser reads 0
    ]
    path = tmp_path / "gpt-4_single.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_aggregation_is_the_mean_of_rows_not_of_turn_means(judgments):
    a, b = aggregate(read_judgments(judgments))
    assert a == {"model": "a", "score": 6.5, "turn_1": 8.0, "turn_2": 2.0, "n_valid": 4, "n_failed": 1}
    assert (a["turn_1"] + a["turn_2"]) / 2 == 5.0 != a["score"]
    assert b == {"model": "b", "score": pytest.approx(19.5 / 3), "turn_1": 7.0, "turn_2": 6.25, "n_valid": 3, "n_failed": 0}


def test_reparse_reads_the_judgment_text(judgments):
    rows = {(j.model, j.question_id, j.turn): j.score for j in read_judgments(judgments, reparse=True)}
    assert rows[("b", 82, 2)] == 0 and rows[("a", 130, 1)] == FAILED


def test_cli_json_with_categories(judgments, capsys):
    assert main(["eval", "mtbench-score", "--judgments", str(judgments), "--json"]) == 0
    a, b = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (a["model"], a["score"], a["turn_1"], a["turn_2"], a["n_valid"], a["n_failed"]) == ("a", 6.5, 8.0, 2.0, 4, 1)
    # 81, 82 are writing; 101 reasoning; 130 (failed) is not scored anywhere
    assert a["categories"] == {"reasoning": 6.0, "writing": pytest.approx(20 / 3)}
    assert b["model"] == "b"
    assert main(["eval", "mtbench-score", "--judgments", str(judgments), "--json", "--reparse"]) == 0
    reparsed = {r["model"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert reparsed["b"]["score"] == pytest.approx((7 + 9.5 + 0) / 3)


def test_cli_table_and_errors(judgments, tmp_path, capsys):
    assert main(["eval", "mtbench-score", "--judgments", str(judgments)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["model", "score", "turn_1", "turn_2", "n_valid", "n_failed"]
    assert "6.5000" in out and "writing" in out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row(81, "a", 1, 5)) + "\n" + json.dumps({**_row(82, "a", 1, 5), "turn": "1"}) + "\n")
    assert main(["eval", "mtbench-score", "--judgments", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl: record 2: field 'turn' must be int" in err

    other = tmp_path / "vicuna.jsonl"
    other.write_text(json.dumps(_row(1, "a", 1, 5)) + "\n")
    assert main(["eval", "mtbench-score", "--judgments", str(other)]) == 1
    assert "question_id 1 not in" in capsys.readouterr().err
