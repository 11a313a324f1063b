"""``alignsmith eval lighteval``: lighteval 0.13 benchmarks on a pinned model, results published to the Hub.

The model is pinned to a commit sha before anything runs, and lighteval loads exactly that sha (it
does not record it itself). Custom tasks come from Hub datasets, each pinned too, and are built as
``LightevalTaskConfig``s in code; the Open LLM Leaderboard tasks the Deita paper reports are
selectable by name for machines that reach huggingface.co. The numbers become
:class:`alignsmith.results.ResultRow`s, appended to the results dataset and merged into the model
card's ``model-index``. lighteval's own Hub push is never used (it ignores ``HF_ENDPOINT``), and its
sample cache lives in a temporary folder, so it never lands in a model folder or on the Hub.

A PEFT adapter is refused: lighteval 0.13's adapter backend is broken; publish merged weights and
evaluate those.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tempfile
import types
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Literal

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef, Lineage, pin
from alignsmith.recipes import HubRecipe, RecipeError, help_text, to_dict
from alignsmith.results import ResultRow, ResultsRun, append_results, write_model_index

# Open LLM Leaderboard (v1) tasks and shot counts, as reported in the Deita paper. They read their data
# from huggingface.co; lighteval's prompts and metrics are its own (MMLU is scored by generation), so
# numbers may differ from the leaderboard's lm-evaluation-harness ones.
LEADERBOARD_TASKS = {
    "arc_challenge": "arc:challenge|25",
    "hellaswag": "hellaswag|10",
    "mmlu": "mmlu|5",
    "truthfulqa_mc": "truthfulqa:mc|0",
}
_TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]*")


class LightevalError(AlignsmithError):
    """A model, task dataset or row that lighteval cannot evaluate as the recipe asks."""


def import_lighteval() -> types.ModuleType:
    """Import lighteval so that it never reaches the network on import (its task registry does).

    ``tiny_benchmarks`` downloads a pickle from GitHub when imported, and the registry imports every
    task module even for custom tasks: a stub with no tasks stands in for it. ifeval's import-time
    ``nltk.download`` calls are made no-ops. Every use of lighteval in this stage goes through here.
    """
    stub = "lighteval.tasks.tasks.tiny_benchmarks"
    if stub not in sys.modules:
        module = types.ModuleType(stub)
        module.TASKS_TABLE = []
        sys.modules[stub] = module
        import nltk

        nltk.download = lambda *args, **kwargs: False
    with keep_grad_mode():
        import lighteval

    return lighteval


@contextmanager
def keep_grad_mode() -> Iterator[None]:
    """Give autograd back as it was: lighteval turns it off process-wide, on import and per model, which
    would silently break any training that runs later in the same process."""
    import torch

    enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_grad_enabled(enabled)


@dataclass(kw_only=True)
class HubTask:
    """A benchmark built from a Hub dataset: one prompt per row, scored by multiple choice or exact match."""

    name: str = help_text("Task name (lowercase letters, digits, _ and -); must not be one of lighteval's.")
    repo: str = help_text("Dataset repo id on the Hub.")
    config: str = help_text("Dataset config.", default="default")
    revision: str | None = help_text("Dataset revision (tag, branch or sha); pinned to a sha before the run.",
                                     default=None)
    split: str = help_text("Split evaluated.", default="test")
    few_shot_split: str | None = help_text("Split few-shot examples are drawn from.", default=None)
    num_fewshot: int = help_text("Few-shot examples per prompt.", default=0, minimum=0)
    prompt_column: str = help_text("Column holding the question.", default="question")
    answer_column: str = help_text(
        "Column holding the answer: the gold choice's index or text (loglikelihood_acc), or the expected "
        "text (exact_match).", default="answer")
    choices_column: str | None = help_text("Column holding the list of choices (loglikelihood_acc).", default=None)
    prompt_template: str = help_text("Prompt text; {prompt} is replaced by the question.",
                                     default="Question: {prompt}\nAnswer:")
    metric: Literal["loglikelihood_acc", "exact_match"] = help_text(
        "loglikelihood_acc: the choice the model finds likeliest; exact_match: greedy generation equals the answer.",
        default="loglikelihood_acc")
    max_new_tokens: int = help_text("Generation length for exact_match.", default=32, minimum=1)

    def __post_init__(self) -> None:
        if not _TASK_NAME.fullmatch(self.name):
            raise RecipeError(f"name: {self.name!r} must be lowercase letters, digits, '_' and '-'")
        if (self.metric == "loglikelihood_acc") != (self.choices_column is not None):
            raise RecipeError(f"choices_column: {self.name}: loglikelihood_acc needs a choices column, "
                              "exact_match takes none")
        if self.num_fewshot and self.few_shot_split is None:
            raise RecipeError(f"few_shot_split: {self.name}: num_fewshot {self.num_fewshot} needs a split to draw from")
        if "{prompt}" not in self.prompt_template:
            raise RecipeError(f"prompt_template: {self.name}: has no {{prompt}} placeholder")

    @property
    def spec(self) -> str:
        return f"{self.name}|{self.num_fewshot}"


@dataclass(kw_only=True)
class LightevalRecipe(HubRecipe):
    model: str = help_text("Model repo id on the Hub, or a local model folder.")
    revision: str | None = help_text("Model revision (tag, branch or sha); pinned to a sha before the run.",
                                     default=None)
    tasks: list[HubTask] = help_text("Custom tasks over Hub datasets.", default_factory=list)
    leaderboard: list[Literal["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc"]] = help_text(
        "Open LLM Leaderboard tasks (as in the Deita paper; data from huggingface.co): "
        + ", ".join(f"{name} ({spec})" for name, spec in LEADERBOARD_TASKS.items()) + ".", default_factory=list)
    results_repo: str = help_text("Results dataset repo id the rows are appended to.")
    private: bool = help_text("Create the results dataset as private.", default=False)
    model_index: bool = help_text("Also merge the results into the model card's model-index (Hub models).",
                                  default=True)
    device: Literal["auto", "cpu", "cuda"] = help_text("auto: cuda when available, else cpu.", default="auto")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = help_text("Model dtype.", default="float32")
    batch_size: int = help_text("Batch size.", default=8, minimum=1)
    max_length: int | None = help_text("Context length (default: the model's).", default=None, minimum=1)
    max_samples: int | None = help_text("Evaluate only this many samples per task (partial numbers).",
                                        default=None, minimum=1)
    use_chat_template: bool | None = help_text(
        "Wrap prompts in the chat template; null: whenever the tokenizer has one (lighteval's default).", default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tasks and not self.leaderboard:
            raise RecipeError("tasks: give at least one task or leaderboard task")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise RecipeError(f"tasks: task names must be unique, got {names}")
        if self.results_repo.count("/") != 1 or not all(self.results_repo.split("/")):
            raise RecipeError(f"results_repo: expected 'namespace/name', got {self.results_repo!r}")


def run(recipe: LightevalRecipe) -> ResultsRun:
    """Pin, evaluate, and publish the rows (results dataset, then the model card's model-index)."""
    model = pin("model", recipe.model, "model", recipe.revision)
    _refuse_adapter(model)
    task_data = {task.name: pin(f"tasks[{task.name}]", task.repo, "dataset", task.revision) for task in recipe.tasks}
    with tempfile.TemporaryDirectory(prefix="alignsmith-lighteval-") as tmp:
        results, counts = evaluate(recipe, model, task_data, Path(tmp))
    rows = result_rows(results, counts, model, task_data)
    lineage = Lineage(command="eval lighteval", recipe=to_dict(recipe), inputs=list(task_data.values()), models=[model])
    published = append_results(recipe.results_repo, rows, private=recipe.private, lineage=lineage)
    if recipe.model_index and model.repo_type == "model":
        write_model_index(model.repo_id, model.sha, rows)
    for row in rows:
        print(f"{row.model}@{row.model_sha[:12]} {row.benchmark} {row.metric} = {row.value:.4f}"
              + (f" ± {row.stderr:.4f}" if row.stderr is not None else "") + f" (n={row.n})")
    print(published.summary())
    return published


def _refuse_adapter(model: ArtifactRef) -> None:
    from alignsmith.models.loading import is_adapter

    if is_adapter(model):
        raise LightevalError(f"model {model.repo_id}@{model.sha} is a PEFT adapter, which alignsmith eval lighteval "
                             "does not evaluate yet (lighteval 0.13's adapter backend is broken): publish merged "
                             "weights and evaluate those")


def evaluate(recipe: LightevalRecipe, model: ArtifactRef, task_data: dict[str, ArtifactRef],
             workdir: Path) -> tuple[dict, dict[str, int]]:
    """Run lighteval's pipeline on ``model`` at its pinned sha.

    Returns its results (``get_results()``) and the samples scored per ``task|shots``, which the
    results do not say.

    Everything lighteval writes (sample cache, outputs) stays under ``workdir``: a local model is
    seen through a folder of links there, since lighteval puts its cache inside a local model folder.
    """
    with keep_grad_mode():
        import_lighteval()
        import torch
        from lighteval.logging.evaluation_tracker import EvaluationTracker
        from lighteval.models.transformers.transformers_model import TransformersModelConfig
        from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

        if model.repo_type == "local":
            name, revision = str(workdir / "model"), "main"
            shutil.copytree(model.repo_id, name, copy_function=os.symlink)
        else:
            name, revision = model.repo_id, model.sha
        device = ("cuda" if torch.cuda.is_available() else "cpu") if recipe.device == "auto" else recipe.device
        config = TransformersModelConfig(
            model_name=name, revision=revision, device=device, dtype=recipe.dtype, batch_size=recipe.batch_size,
            max_length=recipe.max_length, override_chat_template=recipe.use_chat_template,
            cache_dir=str(workdir / "cache"),
        )
        tasks = types.ModuleType("alignsmith_lighteval_tasks", "Custom tasks of an alignsmith lighteval recipe.")
        tasks.TASKS_TABLE = [task_config(task, task_data[task.name]) for task in recipe.tasks]
        params = PipelineParameters(launcher_type=ParallelismManager.ACCELERATE, custom_tasks_directory=tasks,
                                    max_samples=recipe.max_samples)
        specs = [task.spec for task in recipe.tasks] + [LEADERBOARD_TASKS[name] for name in recipe.leaderboard]
        tracker = EvaluationTracker(output_dir=str(workdir / "output"), save_details=False, push_to_hub=False)
        try:
            pipeline = Pipeline(tasks=",".join(specs), pipeline_parameters=params, evaluation_tracker=tracker,
                                model_config=config)
        except ValueError as err:
            if "conflict with built-in tasks" in str(err):
                conflicting = str(err).split("Conflicting tasks: ")[-1]
                raise LightevalError(f"tasks: {conflicting}: lighteval has tasks of these names; rename them") from None
            raise
        pipeline.evaluate()
        return pipeline.get_results(), {task: len(details) for task, details in pipeline.get_details().items()}


def task_config(task: HubTask, dataset: ArtifactRef) -> Any:
    """``task`` as a ``LightevalTaskConfig`` reading its dataset at the pinned sha."""
    import_lighteval()
    from lighteval.metrics.metrics import Metrics
    from lighteval.tasks.lighteval_task import LightevalTaskConfig

    splits = [task.split] + ([task.few_shot_split] if task.few_shot_split else [])
    generative = task.metric == "exact_match"
    return LightevalTaskConfig(
        name=task.name, prompt_function=partial(_doc, task), hf_repo=task.repo, hf_subset=task.config,
        hf_revision=dataset.sha, hf_avail_splits=list(dict.fromkeys(splits)), evaluation_splits=[task.split],
        few_shots_split=task.few_shot_split, metrics=[getattr(Metrics, task.metric)],
        generation_size=task.max_new_tokens if generative else -1, stop_sequence=["\n"] if generative else None,
    )


def _doc(task: HubTask, line: dict[str, Any], task_name: str) -> Any:
    """One dataset row as lighteval's ``Doc``; a row missing what the task needs is an error naming it."""
    from lighteval.tasks.requests import Doc

    columns = [task.prompt_column, task.answer_column] + ([task.choices_column] if task.choices_column else [])
    missing = [column for column in columns if line.get(column) is None]
    where = f"task {task.name}: dataset {task.repo} ({task.config}/{task.split})"
    if missing:
        raise LightevalError(f"{where}: a row has no {', '.join(missing)} (columns: {', '.join(line)})")
    query = task.prompt_template.replace("{prompt}", str(line[task.prompt_column]))
    answer = line[task.answer_column]
    if task.choices_column is None:
        return Doc(task_name=task_name, query=query, choices=[str(answer)], gold_index=0)
    choices = [str(choice) for choice in line[task.choices_column]]
    gold = answer if isinstance(answer, int) else choices.index(str(answer)) if str(answer) in choices else None
    if gold is None or not 0 <= gold < len(choices):
        raise LightevalError(f"{where}: answer {answer!r} is neither an index into nor one of the choices {choices}")
    return Doc(task_name=task_name, query=query, choices=[f" {choice}" for choice in choices], gold_index=gold)


def result_rows(results: dict, counts: dict[str, int], model: ArtifactRef,
                task_data: dict[str, ArtifactRef]) -> list[ResultRow]:
    """lighteval's results as result rows: one per task and metric, with the pinned model and data shas.

    A custom task's data is its pinned Hub dataset; a built-in task's is the repo lighteval names
    (with its revision when that is a sha). The benchmark is lighteval's ``task|shots`` spelling.
    """
    lighteval_version = version("lighteval")
    model_name = model.portable().repo_id
    rows = []
    for key, metrics in results["results"].items():
        if key == "all":
            continue
        task, _, shots = key.rpartition(":")  # get_results() writes "task|shots" as "task:shots"
        benchmark, config = f"{task}|{shots}", results["config_tasks"][key]
        data = task_data.get(config.name)
        prompt_set = data.repo_id if data else config.hf_repo
        prompt_set_sha = data.sha if data else _sha_or_none(config.hf_revision)
        for metric, value in metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr")
            rows.append(ResultRow(
                model=model_name, model_sha=model.sha, benchmark=benchmark, metric=metric, value=float(value),
                stderr=float(stderr) if stderr is not None and math.isfinite(stderr) else None, n=counts[benchmark],
                prompt_set=prompt_set, prompt_set_sha=prompt_set_sha, lighteval_version=lighteval_version,
            ))
    return rows


def _sha_or_none(revision: str | None) -> str | None:
    return revision if revision and re.fullmatch(r"[0-9a-f]{40}", revision) else None
