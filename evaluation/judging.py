"""``alignsmith eval judge``: an LLM judge grades a published answers dataset, and the grades are published too.

Two modes, each reproducing its upstream tool through the library parts of this stage:

* ``mtbench_single``: FastChat's single-answer grading (:func:`evaluation.mtbench.render_judge_messages`:
  reference-based prompts for math/reasoning/coding, the multi-turn prompt with both turns for turn 2),
  judged greedily with FastChat's token budget, the rating parsed with FastChat's regexes;
* ``alpaca_pairwise``: AlpacaEval's ``alpaca_eval_gpt4`` ranking prompt against a ``baseline`` answers
  dataset matched by question_id and turn, outputs in AlpacaEval's seeded order, parsed and un-swapped
  (:mod:`evaluation.pairwise`), with the evaluator's own decoding settings.

``rating: logprobs`` (mtbench_single, in-process judges) is this stage's own, not FastChat's: the judge
writes no explanation; its verdict is the probability-weighted mean of ratings 1-10 read from one forward
pass (:meth:`~alignsmith.models.hf_chat.HFChatModel.continuation_logprobs`). Every judgment is readable
and cheap, which suits small or barely trained judges; the scores do not compare with published MT-Bench.

Every judge call goes through :class:`~evaluation.judge_cache.JudgeCache`, so a rerun (or a crashed run
resumed) asks the judge nothing twice and publishes the same judgments. A judgment whose rating cannot
be read is kept with its raw text and counted (score -1, preference NaN), never scored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import yaml

from alignsmith.lineage import ArtifactRef
from alignsmith.models.generation import ChatModelSpec, DecodingSettings
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text, to_dict
from alignsmith.sources import DatasetSource
from evaluation.answers import ModelLoader, load_chat, pin_chat_model
from evaluation.inputs import EvalInputError, require
from evaluation.judge_cache import JudgeCache, JudgeIdentity
from evaluation.mtbench import (FAILED, JUDGE_TEMPERATURE, RATING_CANDIDATES, VERDICT_PREFIX, Judgment, aggregate,
                                expected_rating, parse_rating, render_judge_messages)
from evaluation.pairwise import ALPACA_DIR, DRAW, parse_ranking, preference, render_pairwise

if TYPE_CHECKING:
    from alignsmith.lineage import Lineage
    from alignsmith.models.generation import ChatModel
    from alignsmith.publish import Release

log = logging.getLogger(__name__)

MTBENCH_JUDGE_MAX_NEW_TOKENS = 2048  # FastChat's run_judge_single asks every judge for at most 2048 tokens
PAIRWISE_EVALUATOR = "alpaca_eval_gpt4"
CONFIG = "judgments"


class JudgeInputError(EvalInputError):
    """An answers dataset that cannot be judged as it is (a missing field, a turn without its first turn...)."""


Rating = Literal["generate", "logprobs"]
RATING_HELP = ("mtbench_single: 'generate' is FastChat's protocol (the judge explains, then writes [[x]], parsed); "
               "'logprobs' reads the verdict from the judge's probabilities of 'Rating: [[1]]'..'[[10]]' (their "
               "probability-weighted mean; no explanation, never unreadable, in-process judges only; not comparable "
               "with published MT-Bench scores).")


def check_rating(rating: Rating, mode: str, judge: ChatModelSpec) -> None:
    """``rating: logprobs`` needs the single-answer mode and a judge whose probabilities this process can read."""
    if rating == "logprobs" and mode != "mtbench_single":
        raise RecipeError(f"rating: 'logprobs' grades mtbench_single only, not {mode!r}")
    if rating == "logprobs" and judge.endpoint is not None:
        raise RecipeError("rating: 'logprobs' reads the judge's probabilities in this process; an endpoint judge "
                          "uses 'generate'")


@dataclass(kw_only=True)
class JudgeRecipe(HubRecipe):
    answers: DatasetSource = help_text("The answers to judge: a dataset published by `alignsmith eval answers`.")
    judge: ChatModelSpec = help_text("The judge: a Hub model (pinned to a commit) or an OpenAI-compatible endpoint.")
    mode: Literal["mtbench_single", "alpaca_pairwise"] = help_text(
        "'mtbench_single': FastChat's 1-10 single-answer grading; 'alpaca_pairwise': AlpacaEval's ranking "
        "against `baseline`.", default="mtbench_single")
    baseline: DatasetSource | None = help_text(
        "alpaca_pairwise only: the baseline's answers dataset, matched by question_id and turn.", default=None)
    rating: Rating = help_text(RATING_HELP, default="generate")
    cache: str | None = help_text("SQLite judge cache (default: <work_dir>/judge_cache.sqlite).", default=None)
    work_dir: str = help_text("Where the judge cache lives by default.", default="runs/eval/judge")
    output: OutputRepo = help_text("Dataset repo (and tag) to publish the judgments to.")
    results_repo: str | None = help_text(
        "Also append the scores to this results dataset and the judged models' model-index (see "
        "alignsmith.results); answers from an endpoint have no model sha and are left out, with a warning.",
        default=None,
    )
    model_index: bool = help_text("With results_repo: also merge the scores into each judged model's card "
                                  "model-index.", default=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.mode == "alpaca_pairwise") != (self.baseline is not None):
            raise RecipeError("baseline: required by mode 'alpaca_pairwise' and used by no other mode")
        check_rating(self.rating, self.mode, self.judge)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.work_dir) / "judge_cache.sqlite"


@dataclass(frozen=True)
class AnswerRow:
    question_id: str
    turn: int
    category: str | None
    messages: list[dict[str, str]]
    answer: str
    model: str
    model_sha: str | None  # None for answers from an endpoint
    reference: str | None
    where: str  # the dataset and record, for errors

    @property
    def instruction(self) -> str:
        return self.messages[-1]["content"]


def read_answers(src: DatasetSource, role: str) -> tuple[list[AnswerRow], ArtifactRef]:
    """The rows of an answers dataset, each field checked; a bad one is named by dataset, record and field."""
    from alignsmith.sources import iter_rows, load_source

    loaded = load_source(src)
    rows, seen = [], {}
    for number, row in enumerate(iter_rows(loaded.dataset, where=src.describe())):
        where = f"{role} {src.describe()}: record {number}"
        messages = require(row, "messages", where, list)
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages) \
                or messages[-1].get("role") != "user":
            raise JudgeInputError(f"{where}: field 'messages' must be a list of {{role, content}} ending with the user turn")
        answer = AnswerRow(str(require(row, "question_id", where, (str, int))), require(row, "turn", where, int),
                           require(row, "category", where, (str, type(None))), messages,
                           require(row, "answer", where, str), require(row, "model", where, str),
                           require(row, "model_sha", where, (str, type(None))) if "model_sha" in row else None,
                           row.get("reference"), where)
        key = (answer.model, answer.question_id, answer.turn)
        if key in seen:
            raise JudgeInputError(f"{where}: question {answer.question_id} turn {answer.turn} of {answer.model} "
                                  f"is already answered in record {seen[key]}")
        seen[key] = number
        rows.append(answer)
    if not rows:
        raise JudgeInputError(f"{role} {src.describe()}: no answers")
    return rows, loaded.artifact_ref(role)


def judge_identity(identity: Mapping[str, str]) -> JudgeIdentity:
    """The cache's key for :meth:`ChatModel.identity`: an endpoint's URL and model, or a Hub model's commit
    (with the base it was merged onto, for an adapter: the same adapter on another base judges differently)."""
    if identity.get("kind") == "endpoint":
        return JudgeIdentity(endpoint=identity["url"], model=identity["model"])
    base = f"{identity['base_repo_id']}@{identity['base_sha']}" if identity.get("base_repo_id") else None
    return JudgeIdentity(repo_id=identity["repo_id"], revision=identity["sha"], model=base)


def prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(messages), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Request:
    """One judgment to make: its row and the judge's messages (``ask_judge`` False: decided without the judge)."""

    row: AnswerRow
    messages: list[dict[str, str]]
    ask_judge: bool = True
    baseline: AnswerRow | None = None
    switched: bool = False


def mtbench_requests(rows: Sequence[AnswerRow]) -> list[Request]:
    """FastChat's judge prompt per row; turn 2 is shown with the same model's turn-1 answer."""
    by_turn = {(r.model, r.question_id, r.turn): r for r in rows}
    requests = []
    for row in rows:
        if row.turn not in (1, 2):
            raise JudgeInputError(f"{row.where}: field 'turn' must be 1 or 2 for MT-Bench grading, got {row.turn}")
        turns = [by_turn.get((row.model, row.question_id, t)) for t in range(1, row.turn + 1)]
        if None in turns:
            raise JudgeInputError(f"{row.where}: question {row.question_id} turn 2 has no turn-1 answer to judge it with")
        question = {"question_id": row.question_id, "category": row.category or "",
                    "turns": [m["content"] for m in row.messages if m.get("role") == "user"]}
        references = [t.reference for t in turns] if all(t.reference is not None for t in turns) else None
        try:
            messages = render_judge_messages(question, [t.answer for t in turns], row.turn, references)
        except EvalInputError as err:
            raise JudgeInputError(f"{row.where}: {err}") from None
        requests.append(Request(row, messages))
    return requests


def pairwise_requests(rows: Sequence[AnswerRow], baseline: Sequence[AnswerRow]) -> list[Request]:
    """AlpacaEval's prompt per row against the baseline's answer to the same question and turn
    (``output_1`` the baseline, ``output_2`` the model); identical answers are a draw, never sent."""
    by_key = {(b.question_id, b.turn): b for b in baseline}
    requests = []
    for row in rows:
        base = by_key.get((row.question_id, row.turn))
        if base is None:
            raise JudgeInputError(f"{row.where}: question {row.question_id} turn {row.turn} has no baseline answer")
        if base.instruction != row.instruction:
            raise JudgeInputError(f"{row.where}: question {row.question_id} turn {row.turn} asks something else than "
                                  f"the baseline's {base.where}")
        prompt = render_pairwise(row.instruction, base.answer, row.answer, PAIRWISE_EVALUATOR)
        requests.append(Request(row, prompt.messages, base.answer != row.answer, base, prompt.switched))
    return requests


def pairwise_decoding() -> DecodingSettings:
    """The AlpacaEval evaluator's own completion settings, read from its bundled config."""
    config = yaml.safe_load((ALPACA_DIR / PAIRWISE_EVALUATOR / "configs.yaml").read_text(encoding="utf-8"))
    kwargs = config[PAIRWISE_EVALUATOR]["completions_kwargs"]
    return DecodingSettings(temperature=float(kwargs["temperature"]), max_new_tokens=int(kwargs["max_tokens"]))


MTBENCH_DECODING = DecodingSettings(temperature=JUDGE_TEMPERATURE, max_new_tokens=MTBENCH_JUDGE_MAX_NEW_TOKENS)


@dataclass(frozen=True)
class JudgeCalls:
    texts: list[str | None]  # per request; None where no judge was asked
    asked: int  # judge calls made now
    cached: int  # requests served from the cache


Verdicts = Callable[[list[list[dict[str, str]]]], list[str]]  # a batch of judge prompts -> their judgment texts


def verdicts(judge: ChatModel, rating: Rating, settings: DecodingSettings) -> tuple[Verdicts, dict[str, Any]]:
    """How the judge gives its judgments, and the key that tells them apart in the cache."""
    if rating == "generate":
        return (lambda batch: [c.text for c in judge.generate(batch, settings)]), settings.to_dict()
    scorer = getattr(judge, "continuation_logprobs", None)
    if scorer is None:
        raise JudgeInputError(f"judge {judge.identity()}: cannot score continuations; use rating 'generate'")
    key = {"rating": rating, "prefix": VERDICT_PREFIX, "candidates": list(RATING_CANDIDATES)}
    return (lambda batch: [expected_rating(lp) for lp in scorer(batch, VERDICT_PREFIX, RATING_CANDIDATES)]), key


def ask_judge(judge: Verdicts, identity: JudgeIdentity, cache: JudgeCache, requests: Sequence[Request],
              decoding: dict[str, Any], batch_size: int) -> JudgeCalls:
    """Each request's judgment from the cache, else from the judge (in batches, each stored as it returns)."""
    texts: list[str | None] = [cache.get(identity, r.messages, decoding) if r.ask_judge else None for r in requests]
    pending: dict[str, list[int]] = {}  # a prompt asked twice (two identical rows) is asked once
    for i, r in enumerate(requests):
        if r.ask_judge and texts[i] is None:
            pending.setdefault(prompt_hash(r.messages), []).append(i)
    cached = sum(r.ask_judge for r in requests) - sum(len(v) for v in pending.values())
    groups = list(pending.values())
    for start in range(0, len(groups), batch_size):
        batch = groups[start : start + batch_size]
        judged = judge([requests[g[0]].messages for g in batch])
        for group, text in zip(batch, judged, strict=True):
            stored = cache.put(identity, requests[group[0]].messages, decoding, text)
            for i in group:
                texts[i] = stored
    return JudgeCalls(texts, len(groups), cached)


@dataclass(frozen=True)
class Judged:
    release: Release
    summary: list[dict[str, Any]]  # mtbench.aggregate or winrate.leaderboard rows
    calls: JudgeCalls
    failed: int


def run(recipe: JudgeRecipe, load_model: ModelLoader = load_chat) -> Judged:
    """``eval judge``: judge every answer (through the cache), publish the judgments, print the aggregate."""
    from alignsmith.lineage import Lineage
    from alignsmith.publish import ensure_tag_free

    ensure_tag_free(recipe.output.repo_id, "dataset", recipe.output.tag)
    rows, answers_ref = read_answers(recipe.answers, "answers")
    inputs = [answers_ref]
    if recipe.mode == "mtbench_single":
        requests, settings = mtbench_requests(rows), MTBENCH_DECODING
    else:
        baseline, baseline_ref = read_answers(recipe.baseline, "baseline")
        inputs.append(baseline_ref)
        requests, settings = pairwise_requests(rows, baseline), pairwise_decoding()
    spec, judge_ref = pin_chat_model(recipe.judge, "judge")
    judge = load_model(spec)
    identity = judge_identity(judge.identity())
    verdict, decoding = verdicts(judge, recipe.rating, settings)
    with JudgeCache(recipe.cache_path) as cache:
        calls = ask_judge(verdict, identity, cache, requests, decoding, spec.batch_size)
    log.info("%d judgment(s): %d asked now, %d from the cache %s", len(requests), calls.asked, calls.cached,
             recipe.cache_path)
    name, sha = identity.repo_id or identity.model, identity.revision
    published = [_judgment_row(r, text, recipe.mode, name, sha) for r, text in zip(requests, calls.texts)]
    summary, table = _summary(recipe.mode, requests, published)
    print(table)
    failed = sum(not row["parse_ok"] for row in published)
    lineage = Lineage(command="eval judge", recipe=to_dict(recipe), inputs=inputs,
                      models=[judge_ref] if judge_ref else [])
    release = _publish(recipe, published, summary, lineage, name, failed)
    if recipe.results_repo:
        _publish_results(recipe, published, summary, identity, release, lineage)
    return Judged(release, summary, calls, failed)


def _publish_results(recipe: JudgeRecipe, published: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
                     identity: JudgeIdentity, judgments: Release, lineage: Lineage) -> None:
    """The aggregate as results rows (one per model and metric), appended and written into each model's card.

    ``prompt_set`` is the judgments dataset at its commit: it pins the answers, the prompts and the raw
    judge outputs the numbers were computed from. ``n`` counts the rated rows behind each number.
    """
    from alignsmith.results import ResultRow, append_results, write_model_index

    shas = {row["model"]: row["model_sha"] for row in published}
    rated = Counter((row["model"], row["turn"]) for row in published if row["parse_ok"])
    if recipe.mode == "mtbench_single":
        benchmark = "mt_bench"
        metrics = [("score", lambda r: r["n_valid"], None), ("turn_1", lambda r: rated[r["model"], 1], None),
                   ("turn_2", lambda r: rated[r["model"], 2], None)]
    else:
        benchmark = "alpaca_eval"
        metrics = [("win_rate", lambda r: r["n_total"], "standard_error"),
                   ("discrete_win_rate", lambda r: r["n_total"], None)]
    rows: dict[tuple[str, str], list[ResultRow]] = {}
    for result in summary:
        model = result.get("model") or result["generator"]
        if not shas.get(model):
            log.warning("results: %s has no model sha (answers from an endpoint?): not appended", model)
            continue
        for metric, count, stderr in metrics:
            if result.get(metric) is None or (isinstance(result[metric], float) and math.isnan(result[metric])):
                continue
            error = result.get(stderr) if stderr else None
            rows.setdefault((model, shas[model]), []).append(ResultRow(
                model=model, model_sha=shas[model], benchmark=benchmark, metric=metric, value=float(result[metric]),
                n=int(count(result)), stderr=None if error is None or math.isnan(error) else float(error),
                judge=identity.repo_id or identity.model, judge_sha=identity.revision,
                prompt_set=judgments.repo_id, prompt_set_sha=judgments.commit_sha))
    if not rows:
        return
    append_results(recipe.results_repo, [row for group in rows.values() for row in group], lineage=lineage)
    for (model, sha), group in rows.items() if recipe.model_index else ():
        write_model_index(model, sha, group)


def _judgment_row(request: Request, text: str | None, mode: str, judge: str, judge_sha: str | None) -> dict[str, Any]:
    row = request.row
    out: dict[str, Any] = {"question_id": row.question_id, "turn": row.turn, "category": row.category,
                           "model": row.model, "model_sha": row.model_sha, "judge": judge, "judge_sha": judge_sha,
                           "prompt_hash": prompt_hash(request.messages), "judgment": text}
    if mode == "mtbench_single":
        score = parse_rating(text)
        return {**out, "score": float(score), "parse_ok": score != FAILED}
    judged = parse_ranking(text) if request.ask_judge else DRAW
    return {**out, "baseline": request.baseline.model, "switched": request.switched,
            "preference": preference(request.baseline.answer, row.answer, judged, request.switched),
            "parse_ok": not math.isnan(judged)}


def _summary(mode: str, requests: Sequence[Request], rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The aggregate as FastChat's show_result or AlpacaEval's leaderboard computes it, and as printed."""
    if mode == "mtbench_single":
        from evaluation.mtbench import format_table

        categories = {r["question_id"]: r["category"] or "none" for r in rows}
        results = aggregate([Judgment(r["question_id"], r["model"], r["turn"], r["score"]) for r in rows], categories)
        return results, format_table(results)
    from evaluation.winrate import format_table, get_winrate, leaderboard

    annotations = [{"instruction": q.row.instruction, "output_1": q.baseline.answer, "output_2": q.row.answer,
                    "generator_1": q.baseline.model, "generator_2": q.row.model, "preference": r["preference"]}
                   for q, r in zip(requests, rows)]
    results = leaderboard(annotations, source="judgments")
    for result in results:
        per_category: dict[str, list[float]] = {}
        for r in rows:
            if r["model"] == result["generator"]:
                per_category.setdefault(r["category"] or "none", []).append(r["preference"])
        result["categories"] = {c: get_winrate(p)["win_rate"] for c, p in sorted(per_category.items())}
    lines = [format_table(results)]
    for result in results:
        lines += [f"  {result['generator']} {c:<30} {w:8.2f}" for c, w in result["categories"].items()]
    return results, "\n".join(lines)


def judgment_features(mode: str):
    from datasets import Features, Value

    text = Value("string")
    common = {"question_id": text, "turn": Value("int64"), "category": text, "model": text, "model_sha": text,
              "judge": text,
              "judge_sha": text, "prompt_hash": text, "judgment": text}
    if mode == "mtbench_single":
        return Features({**common, "score": Value("float64"), "parse_ok": Value("bool")})
    return Features({**common, "baseline": text, "switched": Value("bool"), "preference": Value("float64"),
                     "parse_ok": Value("bool")})


def _publish(recipe: JudgeRecipe, rows: list[dict[str, Any]], summary: list[dict[str, Any]], lineage: Lineage,
             judge: str, failed: int) -> Release:
    from alignsmith.cards import CardContent
    from alignsmith.publish import publish_dataset
    from alignsmith.records import dataset_from_rows

    stats: dict[str, Any] = {"mode": recipe.mode, "judge": judge, "judgments": len(rows),
                             "failed parses (kept, not scored)": failed}
    for result in summary:
        name = result.get("model") or result.get("generator")
        for key in ("score", "turn_1", "turn_2", "win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws"):
            if result.get(key) is not None:
                stats[f"{name}: {key}"] = round(result[key], 4) if isinstance(result[key], float) else result[key]
        stats.update({f"{name}: {c}": round(v, 4) for c, v in result.get("categories", {}).items()})
    what = ("FastChat's MT-Bench single-answer grading (score 1-10, -1 when unreadable)"
            if recipe.mode == "mtbench_single" else
            "AlpacaEval's pairwise ranking against the baseline (preference 2: the model wins, 1: the baseline, "
            "1.5: a draw, NaN when unreadable)")
    content = CardContent(
        title=f"Judgments by {judge}",
        summary=f"{len(rows)} judgments of `{recipe.answers.path}` by `{judge}`: {what}. The raw judgment text is "
                "kept on every row; failed parses are counted and never scored.",
        license=recipe.output.license,
        tags=["evaluation", "llm-as-a-judge", "mt-bench" if recipe.mode == "mtbench_single" else "alpaca-eval"],
        statistics=stats,
        config_descriptions={CONFIG: "one row per judged answer (question_id, turn): the judge's raw text and its "
                                     "parsed score or preference."},
    )
    data = dataset_from_rows(rows, judgment_features(recipe.mode))
    return publish_dataset(recipe.output, {CONFIG: {"train": data}}, content, lineage, default_config=CONFIG)
