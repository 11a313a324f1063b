"""``alignsmith eval run``: answers, judgments and results for several models from one recipe.

The stages talk through the Hub as separate ``eval answers`` / ``eval judge`` runs would: each model's
answers are published, then judged from the commit they were published at, and the judge appends its
scores to ``results_repo``. Every stage's recipe is built when this recipe loads, so a bad key or value
in any model entry fails before a model loads. A rerun skips every release already published by the
same stage recipe (a tag taken by another recipe is refused before anything runs), so it publishes
nothing new and asks the judge nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from alignsmith.lineage import portable_paths
from alignsmith.models.generation import ChatModelSpec
from alignsmith.publish import Release, ensure_tag_free, release_of_same_recipe
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, build, help_text, to_dict
from alignsmith.sources import DatasetSource
from evaluation import answers, judging
from evaluation.answers import AnswerDecoding, AnswersRecipe, ModelLoader, load_chat
from evaluation.judging import RATING_HELP, JudgeRecipe, Rating

if TYPE_CHECKING:
    from alignsmith.models.generation import ChatModel

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalModel(ChatModelSpec):
    """A model to evaluate (the keys of a chat model) and where its answers and judgments are published."""

    answers: OutputRepo = help_text("Dataset repo (and tag) for this model's answers.")
    judgments: OutputRepo | None = help_text(
        "Dataset repo (and tag) for the judgments of its answers; required for every judged model "
        "(in alpaca_pairwise mode the baseline is not judged and takes none).", default=None)


@dataclass(kw_only=True)
class EvalRunRecipe(HubRecipe):
    models: list[EvalModel] = help_text(
        "The models to evaluate: each a chat model ({model, revision, dtype, batch_size, endpoint...}) with "
        "`answers` (and `judgments`) output repos.")
    prompts: Literal["mt_bench"] | DatasetSource = help_text(
        "What every model answers, as in `eval answers`: 'mt_bench' or a prompt dataset.", default="mt_bench")
    decoding: AnswerDecoding = help_text("Decoding overrides shared by every model.", default_factory=AnswerDecoding)
    max_questions: int | None = help_text("Answer only the first N questions (quick runs).", default=None, minimum=1)
    shard_size: int = help_text("Questions per answers work shard (the unit of resumption).", default=16, minimum=1)
    judge: ChatModelSpec = help_text("The one judge of every model: a Hub model (pinned) or an endpoint.")
    mode: Literal["mtbench_single", "alpaca_pairwise"] = help_text(
        "As in `eval judge`: 'mtbench_single' grades each model alone; 'alpaca_pairwise' ranks each model "
        "against `baseline`.", default="mtbench_single")
    baseline: str | None = help_text(
        "alpaca_pairwise only: the `model` of one of `models` (`model@revision` when two entries share a model).",
        default=None)
    rating: Rating = help_text(RATING_HELP, default="generate")
    results_repo: str | None = help_text("Results dataset the scores of every judged model are appended to.",
                                         default=None)
    work_dir: str = help_text(
        "Answer shards under <work_dir>/answers/<answers repo>/<tag> (a rerun resumes them), the judge cache in "
        "<work_dir>.", default="runs/eval/run")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.models:
            raise RecipeError("models: at least one model is required")
        if not self.judged_models():
            raise RecipeError("models: alpaca_pairwise needs a model to judge besides the baseline")
        self.stage_recipes()  # every stage is checked when the recipe loads, not when its turn comes

    def baseline_index(self) -> int | None:
        """The entry of ``models`` that ``baseline`` names (None outside pairwise mode)."""
        if (self.mode == "alpaca_pairwise") != (self.baseline is not None):
            raise RecipeError("baseline: required by mode 'alpaca_pairwise' and used by no other mode")
        if self.baseline is None:
            return None
        named = [i for i, m in enumerate(self.models) if self.baseline in (m.model, f"{m.model}@{m.revision}")]
        if len(named) != 1:
            found = "names no entry of models" if not named else f"matches models{named}: add @revision"
            raise RecipeError(f"baseline: {self.baseline!r} {found}")
        return named[0]

    def judged_models(self) -> list[int]:
        """The entries of ``models`` whose answers are judged: all but the baseline."""
        return [i for i in range(len(self.models)) if i != self.baseline_index()]

    def stage_recipes(self) -> list[AnswersRecipe | JudgeRecipe]:
        """In run order: each model's answers recipe, then the judge recipe of each of :meth:`judged_models`
        (reading the answers at their tag; the runner pins them to the commit the answers stage published)."""
        baseline = self.baseline_index()
        shared = {"hub": self.hub, "hub_root": self.hub_root}
        chat_keys = [f.name for f in dataclasses.fields(ChatModelSpec)]
        answer_recipes: list[AnswersRecipe] = []
        judges: list[JudgeRecipe] = []
        for index, entry in enumerate(self.models):
            where, output = f"models[{index}]", entry.answers
            answer_recipes.append(build(AnswersRecipe, {
                **shared, "model": {k: getattr(entry, k) for k in chat_keys}, "prompts": _plain(self.prompts),
                "decoding": to_dict(self.decoding), "max_questions": self.max_questions, "shard_size": self.shard_size,
                "work_dir": f"{self.work_dir}/answers/{output.repo_id}/{output.tag or output.branch}",
                "output": to_dict(output)}, where=where))
            if index == baseline:
                if entry.judgments is not None:
                    raise RecipeError(f"{where}.judgments: the baseline is not judged; remove it")
                continue
            if entry.judgments is None:
                raise RecipeError(f"{where}.judgments: required: this model's answers are judged")
            judges.append(build(JudgeRecipe, {
                **shared, "answers": _answers_source(entry.answers), "judge": to_dict(self.judge), "mode": self.mode,
                "rating": self.rating,
                "baseline": None if baseline is None else _answers_source(self.models[baseline].answers),
                "work_dir": self.work_dir, "output": to_dict(entry.judgments), "results_repo": self.results_repo},
                where=where))
        stages = [*answer_recipes, *judges]
        _refuse_shared_outputs(stages)
        return stages


@dataclass(frozen=True)
class EvalRun:
    answers: list[Release]  # per model
    judgments: list[Release]  # per judged model
    published: int  # releases made by this run (0 on a rerun)


def _plain(value: Any) -> Any:
    return to_dict(value) if dataclasses.is_dataclass(value) else value


def _answers_source(output: OutputRepo) -> dict[str, Any]:
    return {"path": output.repo_id, "config": answers.STEP, "revision": output.tag or output.branch}


def _refuse_shared_outputs(stages: list[AnswersRecipe | JudgeRecipe]) -> None:
    """Two stages publishing one repo at one tag would find it taken by the other's recipe."""
    seen: set[tuple[str, str]] = set()
    for stage in stages:
        output = stage.output
        if output.tag is not None and (output.repo_id, output.tag) in seen:
            raise RecipeError(f"models: {output.repo_id} at tag {output.tag!r} is published by two stages; "
                              "give each model its own answers and judgments repos or tags")
        seen.add((output.repo_id, output.tag))


def run(recipe: EvalRunRecipe, load_model: ModelLoader = load_chat) -> EvalRun:
    """``eval run``: every model's answers, then every judged model's judgments (and results rows)."""
    stages = recipe.stage_recipes()
    answer_stages, judge_stages = stages[: len(recipe.models)], stages[len(recipe.models) :]
    judged, baseline = recipe.judged_models(), recipe.baseline_index()
    answered = [_published(stage) for stage in answer_stages]
    releases: list[Release | None] = []
    for model, judge in zip(judged, judge_stages):  # a taken judgments tag fails now, before any model answers
        if answered[model] and (baseline is None or answered[baseline]):
            releases.append(_published(_reading(judge, answered, model, baseline)))
        else:
            ensure_tag_free(judge.output.repo_id, "dataset", judge.output.tag)
            releases.append(None)
    published = 0
    for model, stage in enumerate(answer_stages):
        if answered[model] is None:
            answered[model] = answers.run(stage, load_model)
            published += 1
        else:
            log.info("answers of %s: already published at %s, skipping", stage.model.model, answered[model].revision)
    load_judge = _loaded_once(load_model)  # one judge for every model, loaded once
    for number, (model, judge) in enumerate(zip(judged, judge_stages)):
        if releases[number] is None:
            releases[number] = judging.run(_reading(judge, answered, model, baseline), load_judge).release
            published += 1
        else:
            log.info("judgments of %s: already published at %s, skipping", recipe.models[model].model,
                     releases[number].revision)
    return EvalRun(answered, releases, published)


def _reading(judge: JudgeRecipe, answered: list[Release | None], model: int, baseline: int | None) -> JudgeRecipe:
    """``judge`` reading the answers (and the baseline's) at the commits their stages published."""
    def at_commit(src: DatasetSource, index: int) -> DatasetSource:
        return replace(src, revision=answered[index].commit_sha)

    return replace(judge, answers=at_commit(judge.answers, model),
                   baseline=None if baseline is None else at_commit(judge.baseline, baseline))


def _loaded_once(load_model: ModelLoader) -> ModelLoader:
    loaded: dict[str, ChatModel] = {}

    def load(spec: ChatModelSpec) -> ChatModel:
        key = json.dumps(to_dict(spec), sort_keys=True)
        if key not in loaded:
            loaded[key] = load_model(spec)
        return loaded[key]

    return load


def _published(stage: AnswersRecipe | JudgeRecipe) -> Release | None:
    """The stage's release from an earlier run of the same stage recipe (as dataset cards record it: portable)."""
    return release_of_same_recipe(stage.output, "dataset", portable_paths(to_dict(stage)))
