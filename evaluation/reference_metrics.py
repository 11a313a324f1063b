"""``alignsmith eval metrics``: Polite Flamingo's automated evaluators over a published answers dataset.

The paper grades with no LLM judge (notes ``polite-flamingo.md`` §5.1); each metric the recipe lists
scores the answers against their ``reference`` (or an opponent's answers) and becomes results rows in
the same results dataset and model-index as MT-Bench and AlpacaEval:

* ``vqa_nli``: an NLI cross-encoder reads (model answer, ground truth) through the §3.4 templates
  (:func:`~alignsmith.models.scorers.nli_pair`); an answer is correct when the argmax is entailment.
* ``rouge_l``: mean ROUGE-L F (stemmed) against the reference.
* ``sts``: mean cosine of sentence-transformers embeddings of answer and reference.
* ``reward_winrate``: politeness as the paper measures it: a reward model scores (question, answer) for
  the model and for its opponent (the reference, or another answers dataset matched on question_id and
  turn); a win counts 1, a tie 0.5.
* ``pope``: POPE's yes/no object-hallucination metrics (:mod:`evaluation.pope`).

A row whose reference is null is skipped by every metric that needs one, counted and logged: ``n`` is
the number of rows a value was computed from. The metric computations are pure functions over lists.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

import numpy as np

from alignsmith.recipes import HubRecipe, RecipeError, help_text, to_dict
from alignsmith.sources import DatasetSource
from evaluation.inputs import EvalInputError, require
from evaluation.pope import pope_label, pope_metrics

if TYPE_CHECKING:
    from alignsmith.lineage import ArtifactRef
    from alignsmith.results import ResultRow, ResultsRun

log = logging.getLogger(__name__)

Metric = Literal["vqa_nli", "rouge_l", "sts", "reward_winrate", "pope"]
MODEL_OF_METRIC = {"vqa_nli": "nli_model", "sts": "sts_model", "reward_winrate": "reward_model"}
REFERENCE = "reference"


class MetricsInputError(EvalInputError):
    """An answers dataset (or opponent) these metrics cannot score as it is."""


@dataclass(kw_only=True)
class ScorerModel:
    """A scoring model the recipe names, pinned to its commit when it loads."""

    model: str = help_text("Hub repo id or local folder.")
    revision: str | None = help_text("Branch, tag or sha (Hub models only); pinned to a sha.", default=None)


@dataclass(kw_only=True)
class MetricsRecipe(HubRecipe):
    answers: DatasetSource = help_text("The answers to score: a dataset published by `alignsmith eval answers`.")
    metrics: list[Metric] = help_text(
        "Which metrics to compute: vqa_nli, rouge_l, sts, reward_winrate, pope (each adds its own results rows).")
    nli_model: ScorerModel | None = help_text(
        "vqa_nli: a 3-way NLI cross-encoder (paper: cross-encoder/nli-deberta-v3-base).", default=None)
    sts_model: ScorerModel | None = help_text(
        "sts: a sentence-transformers model (paper's filters: sentence-transformers/all-mpnet-base-v2).", default=None)
    reward_model: ScorerModel | None = help_text(
        "reward_winrate: a single-output reward model (paper: OpenAssistant/reward-model-deberta-v3-large-v2).",
        default=None)
    opponent: Literal["reference"] | DatasetSource = help_text(
        "reward_winrate: 'reference' (the raw annotation) or another answers dataset, matched on question_id and "
        "turn.", default=REFERENCE)
    benchmark: str | None = help_text("Benchmark name of the rows (default: the answers' prompt_set).", default=None)
    device: str = help_text("'auto' (CUDA when there is one), 'cpu' or 'cuda'.", default="auto")
    batch_size: int = help_text("Pairs per model call.", default=16, minimum=1)
    results_repo: str = help_text("Results dataset repo id the rows are appended to (and the model's model-index).")
    private: bool = help_text("Create the results dataset as private if it does not exist.", default=False)
    model_index: bool = help_text("Also merge the results into the answering model's card model-index.",
                                  default=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.metrics:
            raise RecipeError("metrics: list at least one metric")
        if len(set(self.metrics)) != len(self.metrics):
            raise RecipeError(f"metrics: listed twice: {sorted(m for m, c in Counter(self.metrics).items() if c > 1)}")
        for metric, field in MODEL_OF_METRIC.items():
            if (metric in self.metrics) != (getattr(self, field) is not None):
                raise RecipeError(f"{field}: required by metric {metric!r} and used by no other metric")
        if self.opponent != REFERENCE and "reward_winrate" not in self.metrics:
            raise RecipeError("opponent: used only by metric 'reward_winrate'")
        if self.results_repo.count("/") != 1 or not all(self.results_repo.split("/")):
            raise RecipeError(f"results_repo: expected 'namespace/name', got {self.results_repo!r}")


# --- reading answers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    question_id: str
    turn: int
    question: str  # the last user message, <image> placeholders removed
    answer: str
    reference: str | None
    where: str


@dataclass(frozen=True)
class AnswerSet:
    """One model's answers, pinned: what every results row names as model, prompt set and benchmark."""

    rows: list[Answer]
    model: str
    model_sha: str | None
    prompt_set: str | None
    ref: ArtifactRef


def read_answer_set(src: DatasetSource, role: str) -> AnswerSet:
    """The answers of one model, each field checked; a bad record is named by dataset, record and field."""
    from alignsmith.models.scorers import question_text
    from alignsmith.sources import iter_rows, load_source

    loaded = load_source(src)
    rows, models, seen = [], set(), {}
    for number, row in enumerate(iter_rows(loaded.dataset, where=src.describe())):
        where = f"{role} {src.describe()}: record {number}"
        messages = require(row, "messages", where, list)
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages) \
                or messages[-1].get("role") != "user":
            raise MetricsInputError(f"{where}: field 'messages' must be a list of {{role, content}} ending with "
                                    "the user turn")
        answer = Answer(str(require(row, "question_id", where, (str, int))), require(row, "turn", where, int),
                        question_text(messages[-1]["content"]), require(row, "answer", where, str),
                        require(row, "reference", where, (str, type(None))) if "reference" in row else None, where)
        key = (answer.question_id, answer.turn)
        if key in seen:
            raise MetricsInputError(f"{where}: question {answer.question_id} turn {answer.turn} is already answered "
                                    f"in record {seen[key]}")
        seen[key] = number
        models.add((require(row, "model", where, str), row.get("model_sha"), row.get("prompt_set")))
        rows.append(answer)
    if not rows:
        raise MetricsInputError(f"{role} {src.describe()}: no answers")
    if len(models) > 1:
        raise MetricsInputError(f"{role} {src.describe()}: answers of several models or prompt sets "
                                f"{sorted(models, key=str)}; score one model's answers at a time")
    (model, model_sha, prompt_set), = models
    return AnswerSet(rows, model, model_sha, prompt_set, loaded.artifact_ref(role))


def with_reference(rows: Sequence[Answer], metric: str) -> list[Answer]:
    """The rows that have a reference; the others are counted and logged, never silently dropped."""
    kept = [row for row in rows if row.reference is not None]
    if len(kept) < len(rows):
        log.info("%s: %d of %d answer(s) have no reference and are skipped", metric, len(rows) - len(kept), len(rows))
    if not kept:
        raise MetricsInputError(f"{metric}: none of the {len(rows)} answer(s) has a reference to score against")
    return kept


def match_opponent(rows: Sequence[Answer], opponent: Sequence[Answer]) -> list[Answer]:
    """The opponent's answer to each row's question and turn; the first unmatched row is an error."""
    by_key = {(o.question_id, o.turn): o for o in opponent}
    for row in rows:
        if (row.question_id, row.turn) not in by_key:
            raise MetricsInputError(f"{row.where}: the opponent has no answer to question {row.question_id} "
                                    f"turn {row.turn}")
    return [by_key[row.question_id, row.turn] for row in rows]


# --- pure metric computations -----------------------------------------------------------------------------


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` over ``n`` trials: sqrt(p (1 - p) / n)."""
    return math.sqrt(p * (1.0 - p) / n)


def mean_stderr(values: Sequence[float]) -> tuple[float, int, float | None]:
    """(mean, n, standard error of the mean with the sample standard deviation; None for one value)."""
    if not values:
        raise MetricsInputError("no values to average")
    array = np.asarray(values, dtype=np.float64)
    stderr = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else None
    return float(array.mean()), len(array), stderr


def nli_accuracy(logits: Sequence[Sequence[float]]) -> tuple[float, int, float]:
    """(accuracy, n, binomial stderr): a row is correct when its argmax is entailment.

    ``logits`` are [n, 3] in :data:`~alignsmith.models.scorers.NLI_LABELS` order, as :meth:`NliScorer.logits`
    returns them.
    """
    from alignsmith.models.scorers import NLI_LABELS

    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(NLI_LABELS) or not len(array):
        raise MetricsInputError(f"NLI logits must be [n >= 1, {len(NLI_LABELS)}], got shape {array.shape}")
    accuracy = float((array.argmax(axis=1) == NLI_LABELS.index("entailment")).mean())
    return accuracy, len(array), binomial_stderr(accuracy, len(array))


def win_rate(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float, int, float | None]:
    """(win rate, n, stderr of the mean outcome): a higher score wins 1, an equal one ties 0.5."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} scores but {len(theirs)} opponent scores")
    return mean_stderr([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs)])


# --- the evaluators -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One number and what measured it (``scorer`` None for a model-free metric such as ROUGE-L), and the
    answers it was compared with, if another dataset's (``opponent``)."""

    metric: str
    value: float
    n: int
    stderr: float | None = None
    scorer: ArtifactRef | None = None
    opponent: ArtifactRef | None = None


def measure_vqa_nli(recipe: MetricsRecipe, rows: Sequence[Answer]) -> list[Measured]:
    from alignsmith.models.scorers import NliScorer

    rows = with_reference(rows, "vqa_nli")
    nli = NliScorer(recipe.nli_model.model, revision=recipe.nli_model.revision, device=recipe.device,
                    batch_size=recipe.batch_size)
    logits = nli.logits([r.question for r in rows], [r.answer for r in rows], [r.reference for r in rows])
    return [Measured("nli_accuracy", *nli_accuracy(logits), nli.model_ref)]


def measure_rouge_l(recipe: MetricsRecipe, rows: Sequence[Answer]) -> list[Measured]:
    from alignsmith.models.scorers import rouge_l

    rows = with_reference(rows, "rouge_l")
    return [Measured("rouge_l", *mean_stderr([rouge_l(r.answer, r.reference) for r in rows]))]


def measure_sts(recipe: MetricsRecipe, rows: Sequence[Answer]) -> list[Measured]:
    from alignsmith.models.scorers import StsScorer

    rows = with_reference(rows, "sts")
    sts = StsScorer(recipe.sts_model.model, revision=recipe.sts_model.revision, device=recipe.device,
                    batch_size=recipe.batch_size)
    cosines = sts.similarity([r.answer for r in rows], [r.reference for r in rows])
    return [Measured("sts_cosine", *mean_stderr(cosines), sts.model_ref)]


def measure_reward_winrate(recipe: MetricsRecipe, rows: Sequence[Answer]) -> list[Measured]:
    """Win rate against the reference (metric ``reward_win_rate``) or another model's answers
    (``reward_win_rate_vs_<its model>``), and the mean reward of the answers scored."""
    from alignsmith.models.scorers import RewardScorer

    if recipe.opponent == REFERENCE:
        rows, name, against = with_reference(rows, "reward_winrate"), "reward_win_rate", None
        theirs = [r.reference for r in rows]
    else:
        opponent = read_answer_set(recipe.opponent, "opponent")
        theirs, name = [o.answer for o in match_opponent(rows, opponent.rows)], f"reward_win_rate_vs_{opponent.model}"
        against = opponent.ref
    reward = RewardScorer(recipe.reward_model.model, revision=recipe.reward_model.revision, device=recipe.device,
                          batch_size=recipe.batch_size)
    questions = [r.question for r in rows]
    ours = reward.scores(questions, [r.answer for r in rows])
    return [Measured(name, *win_rate(ours, reward.scores(questions, theirs)), reward.model_ref, against),
            Measured("reward_mean", *mean_stderr(ours), reward.model_ref)]


def measure_pope(recipe: MetricsRecipe, rows: Sequence[Answer]) -> list[Measured]:
    rows = with_reference(rows, "pope")
    labels = [pope_label(r.reference, r.where) for r in rows]
    metrics = pope_metrics([r.answer for r in rows], labels)
    stderr = {"accuracy": binomial_stderr(metrics["accuracy"], len(rows))}
    return [Measured(f"pope_{name}", value, len(rows), stderr.get(name)) for name, value in metrics.items()]


EVALUATORS = {"vqa_nli": measure_vqa_nli, "rouge_l": measure_rouge_l, "sts": measure_sts,
              "reward_winrate": measure_reward_winrate, "pope": measure_pope}


# --- the command ---------------------------------------------------------------------------------------------


def result_rows(answers: AnswerSet, measured: Sequence[Measured], benchmark: str | None) -> list[ResultRow]:
    """Each number as a results row: the answers' model and prompt set, the scoring model as the judge."""
    from alignsmith.results import ResultRow

    benchmark = benchmark or answers.prompt_set or answers.ref.repo_id
    return [ResultRow(model=answers.model, model_sha=answers.model_sha, benchmark=benchmark, metric=m.metric,
                      value=m.value, n=m.n, stderr=m.stderr,
                      judge=m.scorer.portable().repo_id if m.scorer else None,
                      judge_sha=m.scorer.sha if m.scorer else None,
                      prompt_set=answers.ref.portable().repo_id, prompt_set_sha=answers.ref.sha)
            for m in measured]


def run(recipe: MetricsRecipe) -> ResultsRun:
    """``eval metrics``: every listed metric of the answers, appended to the results dataset and model card."""
    from alignsmith.lineage import Lineage
    from alignsmith.results import append_results, write_model_index

    answers = read_answer_set(recipe.answers, "answers")
    if not answers.model_sha:  # before any scoring model loads
        raise MetricsInputError(f"answers {recipe.answers.describe()}: model {answers.model} has no model_sha "
                                "(answers from an endpoint?); results rows need a pinned model")
    measured = [m for metric in recipe.metrics for m in EVALUATORS[metric](recipe, answers.rows)]
    rows = result_rows(answers, measured, recipe.benchmark)
    for row in rows:
        stderr = f" ± {row.stderr:.4f}" if row.stderr is not None else ""
        print(f"{row.model} {row.benchmark} {row.metric:<28} {row.value:.4f}{stderr}  (n={row.n})")
    lineage = Lineage(command="eval metrics", recipe=to_dict(recipe),
                      inputs=[answers.ref, *_distinct(m.opponent for m in measured)],
                      models=_distinct(m.scorer for m in measured))
    published = append_results(recipe.results_repo, rows, private=recipe.private, lineage=lineage)
    if recipe.model_index:
        write_model_index(answers.model, answers.model_sha, rows)
    print(published.summary())
    return published


def _distinct(refs: Iterable[ArtifactRef | None]) -> list[ArtifactRef]:
    """Each ref once (a scoring model measures several numbers), in order."""
    return list({(ref.role, ref.repo_id, ref.sha): ref for ref in refs if ref is not None}.values())
