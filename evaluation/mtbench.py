"""MT-Bench single-answer grading, reproducing FastChat's ``llm_judge`` so scores compare with theirs.

Three parts, each matching FastChat (``fastchat/llm_judge/common.py`` and ``show_result.py``):

* the judge prompt: which of the four single-answer prompts grades a question and turn (reference-based
  for the ``NEED_REF_CATS`` categories, multi-turn for turn 2), filled with ``str.format`` exactly as
  FastChat fills it, as the system + user messages FastChat sends (judged at temperature 0);
* the rating parser: ``[[x]]``, else ``[x]``, else -1 (a failed parse), with FastChat's own regexes;
* aggregation: rows with score -1 are dropped, then the model score is the mean over all remaining
  turn-level rows (not the mean of the two turn means), with per-turn and per-category means.

:func:`expected_rating` is not FastChat's: it reads a verdict from the judge's probabilities of
``Rating: [[1]]`` .. ``[[10]]`` instead of its generated text (see ``rating: logprobs`` in ``eval judge``).

The prompts and questions are FastChat's, bundled under ``evaluation/data/fastchat`` (Apache-2.0).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

from evaluation.inputs import DATA_DIR, EvalInputError, read_jsonl, require

FASTCHAT_DIR = DATA_DIR / "fastchat"
JUDGE_PROMPTS = FASTCHAT_DIR / "judge_prompts.jsonl"
QUESTIONS = FASTCHAT_DIR / "mt_bench" / "question.jsonl"
REFERENCE_ANSWERS = FASTCHAT_DIR / "mt_bench" / "reference_answer" / "gpt-4.jsonl"

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat's categories graded against a reference
JUDGE_TEMPERATURE = 0.0  # FastChat's run_judge_single always samples the judge greedily
FAILED = -1  # FastChat's score for a judgment with no parsable rating

# FastChat's patterns, verbatim: a number in double brackets, else in single brackets (so "[0]" in code counts).
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

# The verdict format every single-answer judge prompt asks for ('for example: "Rating: [[5]]"'), split
# where the rating starts; each rating is scored with the brackets that close it.
VERDICT_PREFIX = "Rating: [["
RATINGS = tuple(range(1, 11))
RATING_CANDIDATES = tuple(f"{rating}]]" for rating in RATINGS)


@cache
def judge_prompts(path: Path = JUDGE_PROMPTS) -> dict[str, dict[str, str]]:
    """FastChat's judge prompts by name (``single-v1``, ``single-math-v1-multi-turn``, ...)."""
    return {row["name"]: row for row in read_jsonl(path)}


def reference_answers(path: Path = REFERENCE_ANSWERS) -> dict[Any, list[str]]:
    """question_id -> the reference answer's turns, from a FastChat ``reference_answer/*.jsonl``."""
    return {row["question_id"]: row["choices"][0]["turns"] for row in read_jsonl(path)}


def judge_prompt_name(category: str, turn: int) -> str:
    """The single-answer prompt FastChat grades a question's turn with (``resolve_single_judgment_dict``)."""
    if turn not in (1, 2):
        raise ValueError(f"MT-Bench has turns 1 and 2, got {turn}")
    name = "single-math-v1" if category in NEED_REF_CATS else "single-v1"
    return name + ("-multi-turn" if turn == 2 else "")


def render_judge_messages(
    question: dict[str, Any],
    answer_turns: Sequence[str],
    turn: int,
    reference_turns: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """The judge's messages for one MT-Bench question and turn, byte for byte as FastChat sends them.

    ``question`` is a row of ``question.jsonl``; ``answer_turns`` the model's answers; ``reference_turns``
    the reference answers, required for the reference-based categories (and ignored otherwise, as in FastChat).
    FastChat drops an empty system prompt; none of the single-answer prompts has one.
    """
    prompt = judge_prompts()[judge_prompt_name(question["category"], turn)]
    fields: dict[str, str] = {}
    if question["category"] in NEED_REF_CATS:
        if reference_turns is None:
            raise EvalInputError(f"question {question['question_id']} ({question['category']}) needs a reference answer")
        fields["ref_answer_1"] = reference_turns[0]
        if turn == 2:
            fields["ref_answer_2"] = reference_turns[1]
    if turn == 2:
        user = prompt["prompt_template"].format(
            question_1=question["turns"][0], question_2=question["turns"][1],
            answer_1=answer_turns[0], answer_2=answer_turns[1], **fields,
        )
    else:
        user = prompt["prompt_template"].format(question=question["turns"][0], answer=answer_turns[0], **fields)
    system = prompt["system_prompt"]
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def parse_rating(judgment: str) -> int | float:
    """The rating in a judge's text as FastChat reads it: ``[[x]]``, else the first ``[x]``, else -1.

    The number is read as a Python literal, as FastChat does (``8`` is an int, ``8.5`` a float). A
    bracketed number FastChat's ``literal_eval`` would reject (``[[08]]``) stops FastChat with an error;
    here it counts as a failed parse.
    """
    match = ONE_SCORE_PATTERN.search(judgment) or ONE_SCORE_PATTERN_BACKUP.search(judgment)
    if not match:
        return FAILED
    try:
        return ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return FAILED


def expected_rating(logprobs: Sequence[float]) -> str:
    """A judgment text from the log-probabilities of :data:`RATING_CANDIDATES`: the probability-weighted mean
    rating (as G-Eval scores), written as ``Rating: [[x.xx]]`` so :func:`parse_rating` reads it, then the
    distribution it came from (renormalised over the ten ratings)."""
    if len(logprobs) != len(RATINGS):
        raise ValueError(f"expected {len(RATINGS)} log-probabilities (ratings 1-10), got {len(logprobs)}")
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    probabilities = [w / sum(weights) for w in weights]
    score = sum(p * r for p, r in zip(probabilities, RATINGS))
    spread = ", ".join(f"{r}: {p:.3f}" for r, p in zip(RATINGS, probabilities))
    return f"{VERDICT_PREFIX}{score:.2f}]]\n(read from the judge's probabilities of each rating: {spread})"


@dataclass(frozen=True)
class Judgment:
    """One turn-level row of a FastChat ``model_judgment/*_single.jsonl`` file."""

    question_id: int | str
    model: str
    turn: int
    score: float


def read_judgments(path: str | Path, *, reparse: bool = False) -> list[Judgment]:
    """The rows of a FastChat single-answer judgment file; ``reparse`` re-reads the rating from ``judgment``."""
    rows = []
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path}: record {number}"
        if row.get("question_id") is None:
            raise EvalInputError(f"{where}: missing field 'question_id'")
        turn = require(row, "turn", where, int)
        if turn not in (1, 2):
            raise EvalInputError(f"{where}: field 'turn' must be 1 or 2, got {turn}")
        if reparse:
            score = parse_rating(require(row, "judgment", where, str))
        else:
            score = require(row, "score", where, (int, float))
        rows.append(Judgment(row["question_id"], require(row, "model", where, str), turn, score))
    return rows


def question_categories(path: str | Path = QUESTIONS) -> dict[Any, str]:
    """question_id -> category, from a FastChat ``question.jsonl``."""
    return {
        require(row, "question_id", f"{path}: record {n}", (int, str)): require(row, "category", f"{path}: record {n}", str)
        for n, row in enumerate(read_jsonl(path), start=1)
    }


def _mean(scores: list[float]) -> float | None:
    return fmean(scores) if scores else None


def aggregate(judgments: Sequence[Judgment], categories: dict[Any, str] | None = None) -> list[dict[str, Any]]:
    """Per model, FastChat's ``show_result --mode single`` numbers, best score first.

    ``score`` is the mean over every valid turn-level row (FastChat's "Average"), ``turn_1``/``turn_2``
    the per-turn means; failed parses (-1) are counted in ``n_failed`` and never scored. With
    ``categories`` (question_id -> category) each model also gets the mean per category.
    """
    by_model: dict[str, list[Judgment]] = {}
    for row in judgments:
        by_model.setdefault(row.model, []).append(row)
    results = []
    for model, rows in by_model.items():
        valid = [r for r in rows if r.score != FAILED]
        result: dict[str, Any] = {
            "model": model,
            "score": _mean([r.score for r in valid]),
            "turn_1": _mean([r.score for r in valid if r.turn == 1]),
            "turn_2": _mean([r.score for r in valid if r.turn == 2]),
            "n_valid": len(valid),
            "n_failed": len(rows) - len(valid),
        }
        if categories is not None:
            per_category: dict[str, list[float]] = {}
            for r in valid:
                per_category.setdefault(categories[r.question_id], []).append(r.score)
            result["categories"] = {c: fmean(s) for c, s in sorted(per_category.items())}
        results.append(result)
    return sorted(results, key=lambda r: -1e9 if r["score"] is None else -r["score"])


def _check_questions(judgments: Sequence[Judgment], categories: dict[Any, str], judgments_path: str, questions_path: str) -> None:
    missing = sorted({str(j.question_id) for j in judgments if j.question_id not in categories})
    if missing:
        raise EvalInputError(
            f"{judgments_path}: question_id {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} not in "
            f"{questions_path}; pass the benchmark's question file with --questions"
        )


def format_table(results: list[dict[str, Any]]) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{'model':<32} {'score':>8} {'turn_1':>8} {'turn_2':>8} {'n_valid':>8} {'n_failed':>8}"]
    for r in results:
        lines.append(f"{r['model']:<32} {number(r['score']):>8} {number(r['turn_1']):>8} {number(r['turn_2']):>8} "
                     f"{r['n_valid']:>8} {r['n_failed']:>8}")
        lines += [f"  {category:<30} {number(mean):>8}" for category, mean in r.get("categories", {}).items()]
    return "\n".join(lines)


def cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="alignsmith eval mtbench-score",
        description="Score FastChat MT-Bench single-answer judgments (model_judgment/*_single.jsonl) as "
                    "FastChat's show_result does: mean over valid turn rows, per turn and per category.",
    )
    parser.add_argument("--judgments", required=True, help="FastChat single-answer judgment file (JSONL)")
    parser.add_argument("--questions", default=str(QUESTIONS), help="question.jsonl for categories [default: bundled MT-Bench]")
    parser.add_argument("--json", action="store_true", help="one JSON object per model, one per line")
    parser.add_argument("--reparse", action="store_true", help="re-parse each judgment's text instead of its stored score")
    args = parser.parse_args(argv)
    judgments = read_judgments(args.judgments, reparse=args.reparse)
    categories = question_categories(args.questions)
    _check_questions(judgments, categories, args.judgments, args.questions)
    results = aggregate(judgments, categories)
    print("\n".join(json.dumps(r) for r in results) if args.json else format_table(results))
    return 0
