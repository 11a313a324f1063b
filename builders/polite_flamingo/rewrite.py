"""``build pf-rewrite``: Polite Flamingo part 2, the PF-1M construction (notes ``polite-flamingo.md`` §3).

Raw vision-language annotations (VQA, captions, classification, generic short answers) are converted
to (instruction, raw annotation) records (:mod:`builders.polite_flamingo.annotations`), rewritten by a
published rewriter (the raw annotation in the "Drafted Response" slot of
:func:`~builders.polite_flamingo.rewriting.rewriting_prompt`), then run through the filter cascade
(:mod:`builders.polite_flamingo.filters`: Length -> Change -> STS (captions) / NLI (VQA) -> CLIPScore
(captions), reward stored). One config per source, PF-1M's fields, plus ``rejected`` (every row
dropped at conversion, rewriting or by a filter, with the stage, the score and the reason) and,
optionally, ``multiturn`` (instruct_flamingo's multi-turn augmentation over the kept rows).

Rewriting and the filter models' scores are per-row work, cut into shards of records, each step in its own
:class:`ShardStore`, so a killed build resumes, recomputing only the missing shards; with an ``executor``
(:mod:`alignsmith.executors`) tasks on local processes, Slurm or Ray compute them (:class:`RewriteTasks`),
and the rest (``top_k``, ``multiturn``, publishing) runs once after. The filter shards are kept under their
settings' fingerprint, so filter settings may change without invalidating any rewrite.

An image-text-to-text rewriter sees each record's images
(:meth:`alignsmith.models.vision_chat.HFVisionChatModel.complete`); a text-only causal LM continues the same
prompt, ``<image>`` placeholders as text (:meth:`alignsmith.models.hf_chat.HFChatModel.complete`). A prompt
that leaves the rewriter no room to continue is that row's rejection (``finish_reason`` "context").

Reproducibility: each shard's sampling seed is mixed from the recipe's decoding seed and the shard
index, then per batch with the batch's first row; the settings applied are on every row (``decoding``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from alignsmith.cards import CardContent, histogram
from alignsmith.executors import ShardTasks, execute
from alignsmith.lineage import ArtifactRef, Lineage, pin
from alignsmith.models.generation import work_identity
from alignsmith.models.scorers import question_text
from alignsmith.publish import Release, ensure_tag_free, publish_dataset
from alignsmith.recipes import RecipeError, to_dict
from alignsmith.records import dataset_from_rows, rejected_features
from alignsmith.shards import ShardPlan, ShardStore, all_done, fingerprint
from builders.polite_flamingo.annotations import (
    AnnotationInputError,
    Converted,
    caption_annotations,
    classification_annotations,
    generic_annotations,
    vqa_annotations,
)
from builders.polite_flamingo.filters import FILTERS, FilterSettings
from builders.polite_flamingo.pairs import POLITE_FLAMINGO_CITATION
from builders.polite_flamingo.rewrite_recipe import AnnotationSource, RewriterSpec, RewriteRecipe
from builders.polite_flamingo.rewriting import leaves_room, revised_response, rewriting_prompt

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
STAGES = ("convert", "rewrite", *FILTERS, "top_k")


# --- conversion --------------------------------------------------------------------------------


def _read_rows(path: str) -> list[Any]:
    """A local JSON file (a list of rows) or JSONL file (one row a line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationInputError(path, f"cannot read: {err}") from None
    try:
        data = json.loads(text)
        if isinstance(data, list):
            return data
    except json.JSONDecodeError:
        pass
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise AnnotationInputError(f"{path}:{n}", f"not JSON (expected a JSON list or JSONL): {err}") from None
    return rows


def convert_source(source: AnnotationSource, seed: int) -> Converted:
    s = source
    common = {"source": s.name, "image_root": s.image_root, "require_images": s.require_images}
    if s.task == "vqa":
        return vqa_annotations(s.questions_file, s.annotations_file, image_template=s.image_template, **common)
    rows = _read_rows(s.path)
    if s.task == "caption":
        return caption_annotations(rows, seed=seed, captions_column=s.captions_column, image_column=s.image_column,
                                   id_column=s.id_column, **common)
    if s.task == "classification":
        return classification_annotations(rows, label_column=s.label_column, image_column=s.image_column,
                                          id_column=s.id_column, label_names=s.label_names, template=s.template,
                                          **common)
    return generic_annotations(rows, instruction_column=s.instruction_column, answer_column=s.answer_column,
                               images_column=s.images_column, id_column=s.id_column, **common)


def source_files(source: AnnotationSource) -> dict[str, str]:
    """The raw data files of a source, by lineage role (images are embedded in the published rows)."""
    if source.task == "vqa":
        return {f"{source.name}/questions": source.questions_file,
                f"{source.name}/annotations": source.annotations_file}
    return {f"{source.name}/annotations": source.path}


@dataclass
class Record:
    """One converted record, with where it came from."""

    key: int  # position among all records: what shards cut
    source: str
    source_row: int | None
    data: dict[str, Any]  # the RawAnnotation


@dataclass
class Inputs:
    records: list[Record]
    converted: dict[str, Converted]
    refs: list[ArtifactRef]

    @cached_property
    def fingerprint(self) -> str:
        """:func:`_records_fingerprint`, computed once however many tasks' shard stores check it."""
        return _records_fingerprint(self.records)


def _source_rows(converted: Converted) -> list[int]:
    """Row index of each record: records keep input order, rejected rows (with an index) are the gaps."""
    rejected = {r["row_index"] for r in converted.rejected if r["row_index"] is not None}
    total = len(converted.records) + len(rejected)
    return [i for i in range(total) if i not in rejected]


def load_inputs(recipe: RewriteRecipe) -> Inputs:
    records: list[Record] = []
    converted: dict[str, Converted] = {}
    refs = [pin(role, path, "dataset") for s in recipe.sources for role, path in source_files(s).items()]
    for source in recipe.sources:
        out = convert_source(source, recipe.seed)
        converted[source.name] = out
        for record, row in zip(out.records, _source_rows(out)):
            records.append(Record(len(records), source.name, row, dict(record)))
        log.info("%s (%s): %d records, %d rejected", source.name, source.task, len(out.records), len(out.rejected))
    if not records:
        raise AnnotationInputError("sources", "no source row converted to a record (see the rejections)")
    return Inputs(records, converted, refs)


def _image_key(image: dict[str, Any]) -> str:
    if image.get("bytes") is not None:
        return hashlib.sha256(image["bytes"]).hexdigest()
    return str(image.get("path"))


def _records_fingerprint(records: Sequence[Record]) -> str:
    digest = hashlib.sha256()
    for r in records:
        d = r.data
        digest.update(json.dumps([d["id"], r.source, d["task"], d["instruction"], d["raw"],
                                  [_image_key(i) for i in d["images"]]], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()[:32]


def open_image(image: dict[str, Any]) -> Any:
    from PIL import Image

    source = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image["path"]
    with Image.open(source) as opened:
        return opened.convert("RGB")


# --- rewriting ---------------------------------------------------------------------------------


class Work:
    """The rewrite shards and, under their settings' fingerprint, the filter shards (``task_index`` of
    ``num_tasks`` owns ``plan.mine()``)."""

    def __init__(self, recipe: RewriteRecipe, inputs: Inputs, rewriter: ArtifactRef | None,
                 filter_refs: dict[str, ArtifactRef], *, num_tasks: int = 1, task_index: int = 0) -> None:
        self.plan = ShardPlan(len(inputs.records), recipe.shard_size, num_tasks, task_index)
        spec = {"records": inputs.fingerprint, "shard_size": recipe.shard_size,
                "rewriter": [work_identity(recipe.rewriter), rewriter.sha if rewriter else None],
                "decoding": to_dict(recipe.decoding)}
        rewrites = fingerprint(spec)
        self.store = ShardStore(recipe.work_dir, "rewrite", rewrites, self.plan.num_shards)
        filters = fingerprint({"rewrite": rewrites, "filters": to_dict(recipe.filters),
                               "models": {name: ref.sha for name, ref in filter_refs.items()}})
        self.filters = ShardStore(recipe.work_dir, f"filters-{filters[:12]}", filters, self.plan.num_shards)

    def shard_records(self, inputs: Inputs, shard: int) -> list[Record]:
        return [inputs.records[k] for k in self.plan.rows(shard)]


def shard_seed(seed: int, shard: int) -> int:
    return int(np.random.SeedSequence([seed, shard, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


def pin_rewriter(spec: RewriterSpec) -> tuple[ArtifactRef | None, bool]:
    """The rewriter pinned to a commit (None for an endpoint: it cannot be pinned, its URLs and served model
    name are in the recipe the lineage holds), and whether it reads images."""
    from alignsmith.models.loading import is_adapter, is_vision_language

    if spec.endpoint is not None:
        return None, spec.images
    rewriter = pin("rewriter", spec.model, "model", spec.revision)
    if is_adapter(rewriter):
        raise RecipeError(f"rewriter.model: {rewriter.repo_id!r} is a PEFT adapter; publish the merged rewriter")
    return rewriter, is_vision_language(rewriter)


def served_rewriter(spec: RewriterSpec) -> str:
    """How the card names an endpoint rewriter: the served model name and where it was served."""
    from alignsmith.models.generation import endpoint_urls

    return f"rewriter `{spec.model}` served at {', '.join(endpoint_urls(spec.endpoint))}"


class Rewriter:
    """The rewriter, loaded when a shard needs it: image-text-to-text (images fed) or a text causal LM; or the
    endpoint serving it (task ``task`` of a run uses ``endpoint[task % len(endpoint)]``; ``ref`` is None)."""

    def __init__(self, recipe: RewriteRecipe, ref: ArtifactRef | None, vision: bool, *, task: int = 0) -> None:
        spec = recipe.rewriter
        self.recipe, self.vision = recipe, vision
        if spec.endpoint is not None:
            from alignsmith.models.generation import endpoint_for_task
            from alignsmith.models.openai_chat import EndpointChatModel

            if recipe.decoding.no_repeat_ngram_size is not None:
                raise RecipeError("decoding.no_repeat_ngram_size: the OpenAI API has no such field, so an endpoint "
                                  "rewriter cannot apply it; leave it null, or run the rewriter in this process")
            self.model = EndpointChatModel(endpoint_for_task(spec.endpoint, task), spec.model,
                                           api_key_env=spec.api_key_env, batch_size=spec.batch_size)
        elif vision:
            from alignsmith.models.vision_chat import HFVisionChatModel

            self.model = HFVisionChatModel(ref, dtype=spec.dtype, batch_size=spec.batch_size)
        else:
            from alignsmith.models.hf_chat import HFChatModel

            self.model = HFChatModel(ref, dtype=spec.dtype, batch_size=spec.batch_size)

    def rewrite(self, records: Sequence[Record], shard: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Per record: continuation, output, finish_reason, completion_tokens, reason (non-empty: rejected)."""
        from alignsmith.models.generation import DecodingSettings

        d, layout = self.recipe.decoding, self.recipe.rewriter.layout
        seed = shard_seed(d.seed, shard)
        recorded = {"temperature": d.temperature, "top_p": d.top_p, "max_new_tokens": d.max_new_tokens,
                    "no_repeat_ngram_size": d.no_repeat_ngram_size, "recipe_seed": d.seed, "shard_seed": seed,
                    "batch_size": self.recipe.rewriter.batch_size, "layout": layout,
                    "images_fed": self.vision}
        settings = DecodingSettings(temperature=d.temperature, top_p=d.top_p, max_new_tokens=d.max_new_tokens,
                                    no_repeat_ngram_size=d.no_repeat_ngram_size, seed=seed)
        prompts = [rewriting_prompt(r.data["instruction"], r.data["raw"], layout) for r in records]
        # a prompt that leaves no room to continue is this row's problem (rejected), not the shard's
        if self.vision:
            images = [[open_image(i) for i in r.data["images"]] for r in records]
            fits = [leaves_room(self.model, p, imgs) for p, imgs in zip(prompts, images)]
            done = iter(self.model.complete([p for p, ok in zip(prompts, fits) if ok],
                                            images=[imgs for imgs, ok in zip(images, fits) if ok], settings=settings))
        else:
            fits = [leaves_room(self.model, p) for p in prompts]
            done = iter(self.model.complete([p for p, ok in zip(prompts, fits) if ok], settings))
        results = []
        for ok in fits:
            c = next(done) if ok else None
            results.append((c.text, c.finish_reason, c.completion_tokens) if c else ("", "context", 0))
        rows = []
        for text, finish, tokens in results:
            reason = "prompt longer than the rewriter's context" if finish == "context" else ""
            rows.append({"continuation": text, "output": revised_response(text, layout) if not reason else "",
                         "finish_reason": finish, "completion_tokens": tokens, "reason": reason})
        return rows, recorded


def _todo(store: ShardStore, work: Work) -> list[int]:
    todo = [shard for shard in work.plan.mine() if not store.done(shard)]
    log.info("%s: %d of %d shard(s) to compute", store.dir.name, len(todo), store.num_shards)
    return todo


def compute_shards(recipe: RewriteRecipe, inputs: Inputs, work: Work, ref: ArtifactRef | None, vision: bool,
                   task: int = 0) -> list[int]:
    """Rewrite every shard this worker owns (``work.plan``) not yet on disk; returns the shards computed."""
    todo = _todo(work.store, work)
    rewriter: Rewriter | None = None
    for shard in todo:
        records = work.shard_records(inputs, shard)
        rewriter = rewriter or Rewriter(recipe, ref, vision, task=task)
        rows, recorded = rewriter.rewrite(records, shard)
        work.store.write(
            shard,
            key=np.array([r.key for r in records], dtype=np.int64),
            id=np.array([r.data["id"] for r in records], dtype=str),
            continuation=np.array([r["continuation"] for r in rows], dtype=str),
            output=np.array([r["output"] for r in rows], dtype=str),
            finish_reason=np.array([r["finish_reason"] for r in rows], dtype=str),
            completion_tokens=np.array([r["completion_tokens"] for r in rows], dtype=np.int64),
            reason=np.array([r["reason"] for r in rows], dtype=str),
            decoding=np.array(json.dumps(recorded, sort_keys=True)),
        )
    return todo


def read_rewrites(inputs: Inputs, work: Work) -> dict[int, dict[str, Any]]:
    """Per record key: its rewrite (continuation, output, reason, decoding as a JSON string)."""
    found: dict[int, dict[str, Any]] = {}
    for shard in work.store.read_all():
        found |= _shard_rewrites(inputs, work, shard)
    return found


def _shard_rewrites(inputs: Inputs, work: Work, shard: dict[str, np.ndarray]) -> dict[int, dict[str, Any]]:
    recorded = json.loads(str(shard["decoding"]))
    found: dict[int, dict[str, Any]] = {}
    for k, i, cont, out, finish, tokens, reason in zip(shard["key"], shard["id"], shard["continuation"],
                                                        shard["output"], shard["finish_reason"],
                                                        shard["completion_tokens"], shard["reason"]):
        record = inputs.records[int(k)]
        if record.data["id"] != str(i):
            raise RecipeError(f"{work.store.dir}: shard holds record {str(i)!r} where {record.data['id']!r} is "
                              "expected; delete the work_dir")
        decoding = {**recorded, "finish_reason": str(finish), "completion_tokens": int(tokens)}
        found[int(k)] = {"continuation": str(cont), "output": str(out), "reason": str(reason),
                         "decoding": json.dumps(decoding, sort_keys=True)}
    return found


# --- filtering ---------------------------------------------------------------------------------


@dataclass
class Scorers:
    sts: Any = None
    nli: Any = None
    clip: Any = None
    reward: Any = None


def pin_filter_models(recipe: RewriteRecipe) -> dict[str, ArtifactRef]:
    """The filter models the sources use, pinned (one given for a task no source has is not read, nor recorded)."""
    f, tasks = recipe.filters, {s.task for s in recipe.sources}
    needed = {"sts": "caption" in tasks, "clip": "caption" in tasks, "nli": "vqa" in tasks, "reward": True}
    return {name: pin(f"{name}_model", spec.model, "model", spec.revision)
            for name in ("sts", "nli", "clip", "reward") if (spec := getattr(f, name)) is not None and needed[name]}


def load_scorers(refs: dict[str, ArtifactRef]) -> Scorers:
    from alignsmith.models.scorers import ClipScorer, NliScorer, RewardScorer, StsScorer

    classes = {"sts": StsScorer, "nli": NliScorer, "clip": ClipScorer, "reward": RewardScorer}
    return Scorers(**{name: classes[name](ref) for name, ref in refs.items()})


def filter_settings(recipe: RewriteRecipe) -> FilterSettings:
    f = recipe.filters
    return FilterSettings(min_chars=f.min_chars, max_chars=f.max_chars, change_max_rouge=f.change_max_rouge,
                          sts_min=f.sts_min, nli_drop_labels=tuple(f.nli_drop_labels), clip_min=f.clip_min,
                          clip_max_pieces=f.clip_max_pieces, clip_empty_pieces=f.clip_empty_pieces,
                          clip_multi_paragraph_only=f.clip_multi_paragraph_only)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def _rejected(record: Record, stage: str, reason: str, score: Any, details: dict[str, Any]) -> dict[str, Any]:
    raw = {"instruction": record.data["instruction"], "original": record.data["raw"],
           "images": [_image_key(i) for i in record.data["images"]], **details}
    return {"row_index": record.source_row, "id": record.data["id"], "field": "output", "reason": reason,
            "code": stage, "raw": _json(raw), "stage": stage, "source": record.source,
            "score": None if score is None else _json(score)}


SCORE_FIELDS = ("rouge_score", "sts_similarity", "nli_similarity", "paragraph_clip_scores", "filtered_paragraphs",
                "reward")


def _published(record: Record, kept: dict[str, Any], decoding: str) -> dict[str, Any]:
    d = record.data
    paragraphs = kept.get("filtered_paragraphs")
    return {"id": d["id"], "source": record.source, "task": d["task"], "input": d["instruction"],
            "output": kept["output"], "original": d["raw"], "images": d["images"],
            "rouge_score": kept.get("rouge_score"), "reward": kept.get("reward"),
            "nli_similarity": kept.get("nli_similarity"), "sts_similarity": kept.get("sts_similarity"),
            "filtered_paragraphs": None if paragraphs is None else [{"score": s, "text": t} for s, t in paragraphs],
            "paragraph_clip_scores": kept.get("paragraph_clip_scores"), "decoding": decoding}


@dataclass
class Filtered:
    rows: dict[str, Rows]  # per source, published rows
    rejected: Rows
    reward_raw: list[float]  # reward(instruction, raw annotation) of the kept rows (with a reward model)
    counts: dict[str, Counter]  # per source: stage -> rows dropped there, "kept"


def filter_shards(recipe: RewriteRecipe, inputs: Inputs, work: Work, refs: dict[str, ArtifactRef]) -> list[int]:
    """Run the cascade over the rewritten rows of every shard this worker owns not yet filtered: per row the
    filter that dropped it (if any), its reason and score, the scores so far, and the raw annotation's reward;
    ``top_k`` ranks across shards, so it is left to :func:`filter_all`. Returns the shards computed."""
    from builders.polite_flamingo.filters import filter_rows

    todo = _todo(work.filters, work)
    settings, scorers = filter_settings(recipe), None
    for shard in todo:
        rewrites = _shard_rewrites(inputs, work, work.store.read(shard))
        records = [inputs.records[k] for k, rewrite in rewrites.items() if not rewrite["reason"]]
        rows = [{"instruction": r.data["instruction"], "original": r.data["raw"], "output": rewrites[r.key]["output"],
                 "task": r.data["task"],
                 "images": [open_image(i) for i in r.data["images"][:1]] if r.data["task"] == "caption" else []}
                for r in records]
        outcomes = [{"stage": "", "reason": "", "score": None} for _ in records]
        if rows:
            scorers = scorers or load_scorers(refs)
            result = filter_rows(rows, settings, sts=scorers.sts, nli=scorers.nli, clip=scorers.clip,
                                 reward=scorers.reward)
            for dropped in result.dropped:
                outcomes[dropped.index] = {"stage": dropped.filter, "reason": dropped.reason, "score": dropped.score,
                                           "row": dropped.row}
            for i, row in zip(result.kept_index, result.kept):
                outcomes[i]["row"] = row
        kept = [i for i, o in enumerate(outcomes) if not o["stage"]]
        reward_raw = np.full(len(records), np.nan)
        if scorers is not None and scorers.reward is not None and kept:
            reward_raw[kept] = scorers.reward.scores([question_text(records[i].data["instruction"]) for i in kept],
                                                     [records[i].data["raw"] for i in kept])
        work.filters.write(
            shard,
            key=np.array([r.key for r in records], dtype=np.int64),
            stage=np.array([o["stage"] for o in outcomes], dtype=str),
            reason=np.array([o["reason"] for o in outcomes], dtype=str),
            score=np.array(["" if o["score"] is None else _json(o["score"]) for o in outcomes], dtype=str),
            row=np.array([_json({k: o["row"][k] for k in ("output", *SCORE_FIELDS) if k in o["row"]})
                          for o in outcomes], dtype=str),
            reward_raw=reward_raw,
        )
    return todo


def read_filtered(work: Work) -> dict[int, dict[str, Any]]:
    """Per record key that reached the cascade: the stage that dropped it ('' if kept), reason, score, the
    row's output and scores, and the raw annotation's reward (NaN: not scored)."""
    found: dict[int, dict[str, Any]] = {}
    for shard in work.filters.read_all():
        for k, stage, reason, score, row, reward in zip(shard["key"], shard["stage"], shard["reason"], shard["score"],
                                                        shard["row"], shard["reward_raw"]):
            found[int(k)] = {"stage": str(stage), "reason": str(reason), "score": json.loads(str(score) or "null"),
                             "row": json.loads(str(row)), "reward_raw": float(reward)}
    return found


def filter_all(recipe: RewriteRecipe, inputs: Inputs, rewrites: dict[int, dict[str, Any]],
               outcomes: dict[int, dict[str, Any]]) -> Filtered:
    """Every record's fate from its rewrite and cascade outcome, then ``top_k`` over all sources."""
    from builders.polite_flamingo.filters import top_k_by_reward

    counts = {s.name: Counter() for s in recipe.sources}
    rejected: Rows = []
    for name, conv in inputs.converted.items():
        for r in conv.rejected:
            rejected.append({**r, "stage": "convert", "source": name, "score": None})
            counts[name]["convert"] += 1
    kept_rows: list[tuple[Record, dict[str, Any]]] = []
    for record in inputs.records:
        rewrite = rewrites[record.key]
        if rewrite["reason"]:
            rejected.append(_rejected(record, "rewrite", rewrite["reason"], None,
                                      {"continuation": rewrite["continuation"],
                                       "decoding": json.loads(rewrite["decoding"])}))
            counts[record.source]["rewrite"] += 1
            continue
        outcome = outcomes[record.key]
        if not outcome["stage"]:
            kept_rows.append((record, outcome["row"]))
            continue
        details = {**outcome["row"], "continuation": rewrite["continuation"],
                   "decoding": json.loads(rewrite["decoding"])}
        rejected.append(_rejected(record, outcome["stage"], outcome["reason"], outcome["score"], details))
        counts[record.source][outcome["stage"]] += 1
    if recipe.top_k is not None:
        for k, (_, row) in enumerate(kept_rows):
            row["_key"] = k
        best = {row["_key"] for row in top_k_by_reward([row for _, row in kept_rows], recipe.top_k)}
        survivors = []
        for record, row in kept_rows:
            if row.pop("_key") in best:
                survivors.append((record, row))
                continue
            reason = ("output ends in '...'" if row["output"].endswith("...")
                      else f"not among the top_k {recipe.top_k} rows by reward")
            details = {k: row[k] for k in ("output", *SCORE_FIELDS) if k in row}
            rejected.append(_rejected(record, "top_k", reason, row.get("reward"), details))
            counts[record.source]["top_k"] += 1
        kept_rows = survivors
    reward_raw = [outcomes[r.key]["reward_raw"] for r, _ in kept_rows] if recipe.filters.reward is not None else []
    published: dict[str, Rows] = {s.name: [] for s in recipe.sources}
    for record, row in kept_rows:  # records, so kept rows, are in key order
        published[record.source].append(_published(record, row, rewrites[record.key]["decoding"]))
        counts[record.source]["kept"] += 1
    rejected.sort(key=lambda r: (r["source"], r["row_index"] if r["row_index"] is not None else 1 << 62))
    return Filtered(published, rejected, reward_raw, counts)


# --- multi-turn --------------------------------------------------------------------------------


def multiturn_rows(recipe: RewriteRecipe, filtered: Filtered, rewriter: ArtifactRef) -> Rows:
    from transformers import AutoTokenizer

    from alignsmith.lineage import load_revision
    from alignsmith.multiturn import Sample, multiturn_conversation

    spec = recipe.multiturn
    if spec.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(rewriter.repo_id, revision=load_revision(rewriter))

    def count_tokens(messages: Sequence[dict[str, str]]) -> int:
        """As the trainer sees it: the chat template's rendering when there is one, else the bare texts.
        An ``<image>`` counts as its text's tokens, not the model's image tokens (``max_img`` bounds those)."""
        if tokenizer.chat_template:
            return len(tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=True,
                                                     return_dict=True)["input_ids"])
        return sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)

    pool = [Sample(r["id"], r["source"], r["input"], r["output"], tuple(r["images"]))
            for rows in filtered.rows.values() for r in rows]
    return [multiturn_conversation(first, pool, seed=spec.seed, max_img=spec.max_img, max_tokens=spec.max_tokens,
                                   count_tokens=count_tokens) for first in pool]


# --- publishing --------------------------------------------------------------------------------


def _features():
    import datasets

    text, number = datasets.Value("string"), datasets.Value("float64")
    return datasets.Features({
        "id": text, "source": text, "task": text, "input": text, "output": text, "original": text,
        "images": datasets.List(datasets.Image()), "rouge_score": number, "reward": number,
        "nli_similarity": datasets.List(number), "sts_similarity": number,
        "filtered_paragraphs": datasets.List({"score": number, "text": text}),
        "paragraph_clip_scores": datasets.List(number), "decoding": text,
    })


def _multiturn_features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features({"id": text, "source": text, "messages": datasets.List({"role": text, "content": text}),
                              "images": datasets.List(datasets.Image()), "metadata": text})


def _card(recipe: RewriteRecipe, inputs: Inputs, filtered: Filtered, rewriter: ArtifactRef | None,
          filter_refs: dict[str, ArtifactRef]) -> CardContent:
    stats: dict[str, Any] = {}
    for source in recipe.sources:
        conv, c = inputs.converted[source.name], filtered.counts[source.name]
        stats[f"{source.name} ({source.task}): raw rows"] = len(conv.records) + len(conv.rejected)
        for stage in STAGES:
            if stage != "top_k" or recipe.top_k is not None:
                stats[f"{source.name}: dropped at {stage}"] = c[stage]
        stats[f"{source.name}: kept"] = c["kept"]
    reasons = Counter((r["stage"], r["reason"] if r["stage"] in ("convert", "rewrite") else r["stage"])
                      for r in filtered.rejected if r["stage"] in ("convert", "rewrite"))
    stats |= {f"rejected ({stage}): {reason}": n for (stage, reason), n in sorted(reasons.items())}
    rewritten = [r["reward"] for rows in filtered.rows.values() for r in rows if r["reward"] is not None]
    figures = []
    if filtered.reward_raw:
        figures.append(histogram({"raw annotation": filtered.reward_raw, "rewrite": rewritten},
                                 "Reward of the raw annotation vs the rewrite (kept rows)", "reward", "reward.png"))
        stats["mean reward: raw annotation (kept rows)"] = round(float(np.mean(filtered.reward_raw)), 4)
        stats["mean reward: rewrite (kept rows)"] = round(float(np.mean(rewritten)), 4)
    d = recipe.decoding
    pinned_models = [*([("rewriter", rewriter)] if rewriter else []), *filter_refs.items()]
    models = ", ".join(([served_rewriter(recipe.rewriter)] if rewriter is None else [])
                       + [f"{role} `{ref.portable().repo_id}`@{ref.sha}" for role, ref in pinned_models])
    descriptions = {s.name: f"{s.task} source: instruction (`input`, with `<image>` placeholders; the images in "
                    "`images`), raw annotation (`original`), the rewrite after filtering (`output`) and PF-1M's "
                    "scores; `decoding` holds the settings applied." for s in recipe.sources}
    descriptions["rejected"] = ("every row dropped: at conversion (stage `convert`), rewriting (`rewrite`) or by a "
                                "filter (stage = the filter), with its reason and `score` (JSON).")
    descriptions["multiturn"] = "kept rows packed into multi-turn conversations (instruct_flamingo's augmentation)."
    return CardContent(
        title=f"Polite Flamingo rewrites: {recipe.output.repo_id}",
        summary=(f"Raw vision-language annotations rewritten by a Polite Flamingo rewriter and filtered as PF-1M "
                 f"was (Length -> Change -> STS for captions / NLI for VQA -> CLIPScore for captions; the reward is "
                 f"stored, not filtered on). Models: {models}. Rewriting decoding (temperature {d.temperature}, "
                 f"top_p {d.top_p}, max_new_tokens {d.max_new_tokens}, no_repeat_ngram_size "
                 f"{d.no_repeat_ngram_size}) is this build's choice: the paper does not publish it. Prompt layout: "
                 f"`{recipe.rewriter.layout}`."),
        license=recipe.output.license,
        tags=["polite-flamingo", "rewriting", "vision-language"],
        statistics=stats,
        figures=figures,
        config_descriptions=descriptions,
        citation=POLITE_FLAMINGO_CITATION,
        metadata={"task_categories": ["image-text-to-text"]},
    )


class RewriteTasks(ShardTasks):
    """The build as executor tasks: each rewrites, then filters, its share of the shards (the rewriter is let
    go before the filter models load); ``finish`` ranks, packs and publishes. Tasks convert the sources
    themselves (the shard manifests check they are the same)."""

    def __init__(self, recipe: RewriteRecipe, rewriter: ArtifactRef | None, vision: bool,
                 filter_refs: dict[str, ArtifactRef], inputs: Inputs | None = None) -> None:
        super().__init__(inputs)
        self.recipe, self.rewriter, self.vision, self.filter_refs = recipe, rewriter, vision, filter_refs

    def load(self) -> Inputs:
        return load_inputs(self.recipe)

    def work(self, rank: int = 0, world_size: int = 1) -> Work:
        return Work(self.recipe, self.input(), self.rewriter, self.filter_refs, num_tasks=world_size, task_index=rank)

    def run_task(self, rank: int, world_size: int) -> None:
        work = self.work(rank, world_size)
        compute_shards(self.recipe, self.input(), work, self.rewriter, self.vision, task=rank)
        filter_shards(self.recipe, self.input(), work, self.filter_refs)

    def task_done(self, rank: int, world_size: int) -> bool:
        work = self.work(rank, world_size)
        return all_done([work.store, work.filters], work.plan.mine())

    def finish(self) -> Release:
        inputs, work = self.input(), self.work()
        filtered = filter_all(self.recipe, inputs, read_rewrites(inputs, work), read_filtered(work))
        return publish_rewrites(self.recipe, inputs, filtered, self.rewriter, self.filter_refs)


def prepare(recipe: RewriteRecipe) -> RewriteTasks:
    """Pin the models, convert the sources and open the shard stores (a work_dir of another job is refused)."""
    rewriter, vision = pin_rewriter(recipe.rewriter)
    tasks = RewriteTasks(recipe, rewriter, vision, pin_filter_models(recipe), load_inputs(recipe))
    tasks.work()
    return tasks


def run(recipe: RewriteRecipe) -> Release | None:
    """``build pf-rewrite``: rewrite and filter every shard not done yet (here or as executor tasks), then
    publish one config per source, ``rejected`` and (optionally) ``multiturn`` (None once the tasks are
    submitted to Slurm)."""
    ensure_tag_free(recipe.output.repo_id, "dataset", recipe.output.tag)
    tasks = prepare(recipe)
    if recipe.executor.kind != "none":
        return execute(recipe.executor, tasks, recipe.work_dir)
    tasks.run_task(0, 1)
    return tasks.finish()


def publish_rewrites(recipe: RewriteRecipe, inputs: Inputs, filtered: Filtered, rewriter: ArtifactRef | None,
                     filter_refs: dict[str, ArtifactRef]) -> Release:
    """Once every shard is rewritten and filtered: one config per source, ``rejected`` and ``multiturn``."""
    features = _features()
    configs = {name: {"train": dataset_from_rows(rows, features)} for name, rows in filtered.rows.items()}
    configs["rejected"] = {"train": dataset_from_rows(filtered.rejected, rejected_features("stage", "source", "score"))}
    if recipe.multiturn is not None:
        configs["multiturn"] = {"train": dataset_from_rows(multiturn_rows(recipe, filtered, rewriter),
                                                           _multiturn_features())}
    lineage = Lineage(command="build pf-rewrite", recipe=to_dict(recipe), inputs=inputs.refs,
                      models=[*([rewriter] if rewriter else []), *filter_refs.values()])
    return publish_dataset(recipe.output, configs, _card(recipe, inputs, filtered, rewriter, filter_refs), lineage,
                           default_config=recipe.sources[0].name)
