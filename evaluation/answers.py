"""``alignsmith eval answers``: a chat model's answers to a prompt set, published as a dataset judges read.

Prompt sets:

* ``mt_bench``: FastChat's 80 two-turn questions (bundled). Turn 2 is asked after the model's *own*
  turn-1 answer, as FastChat's ``gen_model_answer`` asks it, at FastChat's per-category temperature
  (``max_new_tokens`` 1024); the GPT-4 reference answers of math/reasoning/coding travel with the rows.
* a dataset (:class:`~alignsmith.sources.DatasetSource`): AlpacaEval-style rows with an ``instruction``
  column (one turn each), or any conversation dataset. A conversation is answered once per user message,
  each time given the conversation *as the dataset has it* up to that message (its own earlier assistant
  replies, not the model's): the simplest reading that keeps every turn's prompt fixed. Greedy by default.
  With ``references: last_assistant`` the final assistant message is instead the question's reference answer
  (a VQA set's ground truth), left out of what the model sees. Records with ``images`` (``<image>``
  placeholders in their messages) are answered by an image-text-to-text chat model, given each turn's images.

Work is sharded by question (turn 2 needs turn 1), each finished shard kept in ``work_dir``, so a killed
run resumes and recomputes only the missing shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef, load_revision, pin
from alignsmith.models.generation import ChatModelSpec, Completion, DecodingSettings, reads_images
from alignsmith.records import IMAGE_PLACEHOLDER
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text, to_dict
from alignsmith.sources import DatasetSource
from evaluation.inputs import read_jsonl
from evaluation.mtbench import QUESTIONS, REFERENCE_ANSWERS, reference_answers

if TYPE_CHECKING:
    from PIL import Image

    from alignsmith.lineage import Lineage
    from alignsmith.models.generation import ChatModel
    from alignsmith.publish import Release

log = logging.getLogger(__name__)

STEP = "answers"  # the shard store's folder under work_dir, and the published config
MT_BENCH_MAX_NEW_TOKENS = 1024  # FastChat's gen_model_answer --max-new-token
# FastChat's common.temperature_config; a category it does not list is sampled at 0.7
MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
MT_BENCH_DEFAULT_TEMPERATURE = 0.7
DATASET_DEFAULT_TEMPERATURE = 0.0

ModelLoader = Callable[[ChatModelSpec], "ChatModel"]


class AnswersError(AlignsmithError):
    """A prompt set or model that cannot be answered as the recipe asks."""


@dataclass(kw_only=True)
class AnswerDecoding:
    """The recipe's decoding overrides; unset keys take the prompt set's own values."""

    temperature: float | None = help_text(
        "Sampling temperature for every question (0: greedy); unset: MT-Bench's per-category temperatures, "
        "greedy for a dataset.", default=None, minimum=0)
    max_new_tokens: int = help_text("Longest answer in tokens (MT-Bench: 1024).", default=MT_BENCH_MAX_NEW_TOKENS,
                                    minimum=1)
    top_p: float = help_text("Nucleus sampling mass.", default=1.0, exclusive_minimum=0, maximum=1)
    seed: int = help_text("Sampling seed.", default=0)


@dataclass(kw_only=True)
class AnswersRecipe(HubRecipe):
    model: ChatModelSpec = help_text("The chat model that answers.")
    prompts: Literal["mt_bench"] | DatasetSource = help_text(
        "'mt_bench' (bundled FastChat questions, two turns), or a dataset: rows with an 'instruction' column "
        "(AlpacaEval) or conversations (each user message answered in the dataset's own context).",
        default="mt_bench")
    references: Literal["none", "last_assistant"] = help_text(
        "Reference answers of a conversation dataset: 'none' (every message is context), or 'last_assistant': "
        "each conversation's final assistant message is its last turn's reference (a VQA set's ground truth, "
        "published in 'reference'), never shown to the model.", default="none")
    decoding: AnswerDecoding = help_text("Decoding overrides.", default_factory=AnswerDecoding)
    max_questions: int | None = help_text("Answer only the first N questions (quick runs).", default=None, minimum=1)
    work_dir: str = help_text("Where finished shards are kept; a rerun resumes from them.", default="runs/eval/answers")
    shard_size: int = help_text("Questions per work shard (the unit of resumption).", default=16, minimum=1)
    output: OutputRepo = help_text("Dataset repo (and tag) to publish the answers to.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompts == "mt_bench" and self.references != "none":
            raise RecipeError("references: MT-Bench brings its own reference answers; 'last_assistant' applies to "
                              "conversation datasets")


@dataclass(frozen=True)
class Question:
    """One prompt of a set; ``conversation`` is MT-Bench's user turns, or a dataset's whole conversation."""

    question_id: str
    category: str | None
    conversation: list[dict[str, str]]
    references: list[str | None] | None = None  # one reference answer per turn, when the set has them
    images: list[dict[str, Any]] = field(default_factory=list)  # {"bytes", "path"}, in <image> placeholder order

    @property
    def turns(self) -> int:
        return sum(m["role"] == "user" for m in self.conversation)


@dataclass(frozen=True)
class PromptSet:
    name: str
    questions: list[Question]
    own_history: bool  # later turns follow the model's own answers (MT-Bench), else the dataset's conversation
    temperatures: Mapping[str, float]  # category -> default temperature
    default_temperature: float
    refs: list[ArtifactRef] = field(default_factory=list)  # lineage


def turn_messages(question: Question, turn: int, own_answers: Sequence[str] | None) -> list[dict[str, str]]:
    """The conversation up to the ``turn``-th user message (1-based); with ``own_answers``, the model's
    earlier answers follow each earlier user message."""
    messages: list[dict[str, str]] = []
    users = 0
    for message in question.conversation:
        if message["role"] == "user":
            if own_answers is not None and users:
                messages.append({"role": "assistant", "content": own_answers[users - 1]})
            users += 1
        messages.append({"role": message["role"], "content": message["content"]})
        if users == turn:
            return messages
    raise ValueError(f"question {question.question_id} has {users} user turns, not {turn}")


def mt_bench() -> PromptSet:
    references = {str(k): v for k, v in reference_answers().items()}
    questions = [Question(str(row["question_id"]), row["category"],
                          [{"role": "user", "content": text} for text in row["turns"]],
                          references.get(str(row["question_id"])))
                 for row in read_jsonl(QUESTIONS)]
    return PromptSet("mt_bench", questions, True, MT_BENCH_TEMPERATURES, MT_BENCH_DEFAULT_TEMPERATURE,
                     [pin("prompts", str(QUESTIONS), "local"), pin("reference_answers", str(REFERENCE_ANSWERS), "local")])


def turn_images(question: Question, messages: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """The question's images that ``messages`` (a turn's prompt) refer to: one per ``<image>``, in order."""
    return question.images[: sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)]


def conversation_question(record: Mapping[str, Any], references: str, where: str) -> Question:
    """A canonical conversation record as a question; with ``last_assistant`` its final assistant message
    becomes the last turn's reference instead of context."""
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    reference = None
    if references == "last_assistant":
        if messages[-1]["role"] != "assistant":
            raise AnswersError(f"{where}: record {record['id']!r}: field 'messages' must end with an assistant "
                               "message (references: last_assistant takes it as the reference answer)")
        reference = messages.pop()["content"]
    question = Question(record["id"], json.loads(record.get("metadata") or "{}").get("category"), messages,
                        images=list(record.get("images") or []))
    if reference is None:
        return question
    return replace(question, references=[None] * (question.turns - 1) + [reference])


def dataset_prompts(src: DatasetSource, references: str = "none") -> PromptSet:
    """AlpacaEval rows (``instruction``, optionally ``dataset`` as category) or any conversation dataset."""
    from alignsmith.sources import iter_rows, load_source

    loaded = load_source(src)
    if "instruction" in loaded.dataset.column_names and "input" not in loaded.dataset.column_names:
        if references != "none":
            raise AnswersError(f"{src.describe()}: references: 'last_assistant' needs conversations, and these rows "
                               "are AlpacaEval instructions")
        questions = []
        for index, row in enumerate(iter_rows(loaded.dataset, where=src.describe())):
            if not isinstance(row["instruction"], str) or not row["instruction"].strip():
                raise AnswersError(f"{src.describe()}: record {index}: field 'instruction' must be a non-empty string")
            category = row.get("category") or row.get("dataset")
            questions.append(Question(str(row.get("id", index)), category,
                                      [{"role": "user", "content": row["instruction"]}]))
    else:
        records = loaded.to_records("conversation", require_assistant=False).records
        questions = [conversation_question(r, references, src.describe()) for r in records]
    if not questions:
        raise AnswersError(f"{src.describe()}: no prompts to answer")
    return PromptSet(loaded.name, questions, False, {}, DATASET_DEFAULT_TEMPERATURE, [loaded.artifact_ref("prompts")])


def load_prompt_set(recipe: AnswersRecipe) -> PromptSet:
    prompts = mt_bench() if recipe.prompts == "mt_bench" else dataset_prompts(recipe.prompts, recipe.references)
    if recipe.max_questions is not None:
        prompts = replace(prompts, questions=prompts.questions[: recipe.max_questions])
    return prompts


def settings_for(question: Question, prompts: PromptSet, decoding: AnswerDecoding) -> DecodingSettings:
    temperature = decoding.temperature
    if temperature is None:
        temperature = prompts.temperatures.get(question.category or "", prompts.default_temperature)
    return DecodingSettings(temperature=temperature, max_new_tokens=decoding.max_new_tokens, top_p=decoding.top_p,
                            seed=decoding.seed)


def pin_chat_model(spec: ChatModelSpec, role: str) -> tuple[ChatModelSpec, ArtifactRef | None]:
    """``spec`` pinned to the commit it resolves to now (so the model loaded is the one lineage records),
    and its lineage ref; an endpoint cannot be pinned (its model name and URL are in the recipe)."""
    if spec.endpoint is not None:
        return spec, None
    ref = pin(role, spec.model, "model", spec.revision)
    return (replace(spec, model=ref.repo_id, revision=ref.sha) if ref.repo_type == "model" else spec), ref


def load_chat(spec: ChatModelSpec) -> ChatModel:
    """The default loader: a Hub/local model run here (a tokenizer without a chat template is refused at its
    first conversation), or an OpenAI-compatible endpoint."""
    from alignsmith.models.chat import load_chat_model

    return load_chat_model(spec)


def _questions_fingerprint(questions: Sequence[Question]) -> str:
    digest = hashlib.sha256()
    for q in questions:
        digest.update(json.dumps([q.question_id, q.category, q.conversation], ensure_ascii=False).encode() + b"\n")
        for image in q.images:
            digest.update(hashlib.sha256(_image_bytes(image)).digest())
    return digest.hexdigest()[:32]


def _image_bytes(image: Mapping[str, Any]) -> bytes:
    if image["bytes"] is not None:
        return image["bytes"]
    with open(image["path"], "rb") as file:
        return file.read()


def decode_image(image: Mapping[str, Any]) -> Image.Image:
    """A question's image (``{"bytes", "path"}``) as the RGB picture a processor reads."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(_image_bytes(image))) as picture:
        return picture.convert("RGB")


def check_reads_images(model: ChatModel, questions: Sequence[Question], name: str) -> None:
    """Refuse questions with images for a text-only model, before anything is generated."""
    pictured = next((q for q in questions if q.images), None)
    if pictured is not None and not reads_images(model):
        raise AnswersError(f"question {pictured.question_id}: has {len(pictured.images)} image(s), and the model "
                           f"{name!r} is text-only: use an image-text-to-text chat model")


def answer_shard(model: ChatModel, questions: Sequence[Question], prompts: PromptSet,
                 decoding: AnswerDecoding) -> list[dict[str, Any]]:
    """Every turn of ``questions``, turn by turn (one batched ``generate`` per turn), in question order."""
    answers: list[list[str]] = [[] for _ in questions]
    rows: list[dict[str, Any]] = []
    for turn in range(1, max(q.turns for q in questions) + 1):
        todo = [i for i, q in enumerate(questions) if q.turns >= turn]
        conversations = [turn_messages(questions[i], turn, answers[i] if prompts.own_history else None) for i in todo]
        settings = [settings_for(questions[i], prompts, decoding) for i in todo]
        if reads_images(model):
            images = [[decode_image(image) for image in turn_images(questions[i], messages)]
                      for i, messages in zip(todo, conversations)]
            completions: list[Completion] = model.generate(conversations, settings, images=images)
        else:
            completions = model.generate(conversations, settings)
        if len(completions) != len(todo):
            raise RuntimeError(f"the model returned {len(completions)} replies for {len(todo)} conversations")
        for i, messages, setting, done in zip(todo, conversations, settings, completions):
            answers[i].append(done.text)
            rows.append({"question": i, "turn": turn, "messages": messages, "answer": done.text,
                         "finish_reason": done.finish_reason, "prompt_tokens": done.prompt_tokens,
                         "completion_tokens": done.completion_tokens, "decoding": json.dumps(setting.to_dict())})
    return sorted(rows, key=lambda r: (r["question"], r["turn"]))


def generate_all(recipe: AnswersRecipe, prompts: PromptSet, spec: ChatModelSpec, model_ref: ArtifactRef | None,
                 load_model: ModelLoader) -> list[dict[str, Any]]:
    """Answer every shard not yet in ``work_dir``; return all rows, local question index made global."""
    import numpy as np
    from tqdm.auto import tqdm

    from alignsmith.shards import ShardPlan, ShardStore, fingerprint

    plan = ShardPlan(len(prompts.questions), recipe.shard_size)
    job = {"questions": _questions_fingerprint(prompts.questions), "prompt_set": prompts.name,
           "model": [to_dict(spec), model_ref.sha if model_ref else None], "decoding": to_dict(recipe.decoding),
           "shard_size": recipe.shard_size}
    store = ShardStore(recipe.work_dir, STEP, fingerprint(job), plan.num_shards)
    todo = store.missing()
    log.info("%d question(s) in %d shard(s), %d to answer", len(prompts.questions), plan.num_shards, len(todo))
    if todo:
        model = load_model(spec)  # a model without a chat template is refused at its first batch, before any shard is written
        check_reads_images(model, prompts.questions, spec.model)
        for shard in tqdm(todo, desc="answer shards", unit="shard"):
            span = plan.rows(shard)
            rows = answer_shard(model, prompts.questions[span.start : span.stop], prompts, recipe.decoding)
            for row in rows:
                row["question"] += span.start
            store.write(shard, rows=np.array(json.dumps(rows, ensure_ascii=False)))
    return [row for shard in store.read_all() for row in json.loads(str(shard["rows"]))]


def run(recipe: AnswersRecipe, load_model: ModelLoader = load_chat) -> Release:
    """``eval answers``: answer the prompt set (resuming from ``work_dir``) and publish the answers."""
    from alignsmith.lineage import Lineage
    from alignsmith.publish import ensure_tag_free

    ensure_tag_free(recipe.output.repo_id, "dataset", recipe.output.tag)  # before hours of generation, not after
    prompts = load_prompt_set(recipe)
    spec, model_ref = pin_chat_model(recipe.model, "model")
    rows = generate_all(recipe, prompts, spec, model_ref, load_model)
    model_name = model_ref.portable().repo_id if model_ref else spec.model
    model_sha = load_revision(model_ref) if model_ref else None
    published = [_published_row(r, prompts, model_name, model_sha) for r in rows]
    lineage = Lineage(command="eval answers", recipe=to_dict(recipe), inputs=prompts.refs,
                      models=[model_ref] if model_ref else [])
    return _publish(recipe, prompts, published, lineage, model_name)


def _published_row(row: Mapping[str, Any], prompts: PromptSet, model: str, model_sha: str | None) -> dict[str, Any]:
    question = prompts.questions[row["question"]]
    return {
        "question_id": question.question_id, "category": question.category, "turn": row["turn"],
        "messages": row["messages"], "answer": row["answer"], "finish_reason": row["finish_reason"],
        "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
        "decoding": row["decoding"], "model": model, "model_sha": model_sha, "prompt_set": prompts.name,
        "reference": question.references[row["turn"] - 1] if question.references else None,
        "images": turn_images(question, row["messages"]),
    }


def answer_features():
    from datasets import Features, Image, List, Value

    text, count = Value("string"), Value("int64")
    return Features({
        "question_id": text, "category": text, "turn": count,
        "messages": List({"role": text, "content": text}), "answer": text, "finish_reason": text,
        "prompt_tokens": count, "completion_tokens": count, "decoding": text, "model": text, "model_sha": text,
        "prompt_set": text, "reference": text, "images": List(Image()),
    })


def _publish(recipe: AnswersRecipe, prompts: PromptSet, rows: list[dict[str, Any]], lineage: Lineage,
             model: str) -> Release:
    from alignsmith.cards import CardContent, histogram
    from alignsmith.publish import publish_dataset
    from alignsmith.records import dataset_from_rows

    finish = Counter(r["finish_reason"] for r in rows)
    tokens = [r["completion_tokens"] for r in rows]
    pictured = sum(bool(q.images) for q in prompts.questions)
    stats: dict[str, Any] = {
        "prompt set": prompts.name,
        "questions": len(prompts.questions),
        "answer rows (question x turn)": len(rows),
        **{f"finished by {reason}": n for reason, n in sorted(finish.items())},
        "mean completion tokens": round(sum(tokens) / len(tokens), 1),
        "max_new_tokens": recipe.decoding.max_new_tokens,
        "temperature": recipe.decoding.temperature if recipe.decoding.temperature is not None else "per prompt set",
        **({"questions with images": pictured} if pictured else {}),
    }
    content = CardContent(
        title=f"Answers of {model} to {prompts.name}",
        summary=(f"`{model}`'s answers to {len(prompts.questions)} questions of `{prompts.name}`, one row per question "
                 "and turn with the exact messages it was given and its decoding settings. "
                 + ("Turn 2 follows the model's own turn-1 answer, as FastChat's MT-Bench does. "
                    if prompts.own_history else "")
                 + "Judge them with `alignsmith eval judge`."),
        license=recipe.output.license,
        tags=["evaluation", "model-answers", *(["mt-bench"] if prompts.name == "mt_bench" else [])],
        statistics=stats,
        figures=[histogram({"completion tokens": tokens}, "Answer length", "completion tokens", "answer_tokens.png")],
        config_descriptions={STEP: "one row per question and turn: the messages up to that turn's user message "
                                   "and the images they refer to, the answer, its token counts, finish reason, "
                                   "decoding settings and reference answer (when the set has one)."},
    )
    return publish_dataset(recipe.output, {STEP: {"train": dataset_from_rows(rows, answer_features())}}, content,
                           lineage, default_config=STEP)
