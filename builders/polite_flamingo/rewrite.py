"""``build pf-rewrite``: Polite Flamingo part 2, the PF-1M construction (notes ``polite-flamingo.md`` §3).

Raw vision-language annotations (VQA, captions, classification, generic short answers) are converted
to (instruction, raw annotation) records (:mod:`builders.polite_flamingo.annotations`), rewritten by a
published rewriter (the raw annotation in the "Drafted Response" slot of
:func:`~builders.polite_flamingo.rewriting.rewriting_prompt`), then run through the filter cascade
(:mod:`builders.polite_flamingo.filters`: Length -> Change -> STS (captions) / NLI (VQA) -> CLIPScore
(captions), reward stored). One config per source, PF-1M's fields, plus ``rejected`` (every row
dropped at conversion, rewriting or by a filter, with the stage, the score and the reason) and,
optionally, ``multiturn`` (instruct_flamingo's multi-turn augmentation over the kept rows).

Rewriting is the expensive step: it is cut into shards of records in one :class:`ShardStore`, so a
killed build resumes, recomputing only the missing shards. The filters run after every shard is done
(models loaded once); they are cheap next to generation and their settings may change without
invalidating any shard.

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
from pathlib import Path
from typing import Any

import numpy as np

from alignsmith.cards import CardContent, histogram
from alignsmith.lineage import ArtifactRef, Lineage, pin
from alignsmith.models.scorers import question_text
from alignsmith.publish import Release, ensure_tag_free, publish_dataset
from alignsmith.recipes import RecipeError, to_dict
from alignsmith.records import dataset_from_rows, rejected_features
from alignsmith.shards import ShardPlan, ShardStore, fingerprint
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
from builders.polite_flamingo.rewrite_recipe import AnnotationSource, RewriteRecipe
from builders.polite_flamingo.rewriting import revised_response, rewriting_prompt

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
    def __init__(self, recipe: RewriteRecipe, inputs: Inputs, rewriter: ArtifactRef) -> None:
        self.plan = ShardPlan(len(inputs.records), recipe.shard_size)
        spec = {"records": _records_fingerprint(inputs.records), "shard_size": recipe.shard_size,
                "rewriter": [to_dict(recipe.rewriter), rewriter.sha], "decoding": to_dict(recipe.decoding)}
        self.store = ShardStore(recipe.work_dir, "rewrite", fingerprint(spec), self.plan.num_shards)

    def shard_records(self, inputs: Inputs, shard: int) -> list[Record]:
        return [inputs.records[k] for k in self.plan.rows(shard)]


def shard_seed(seed: int, shard: int) -> int:
    return int(np.random.SeedSequence([seed, shard, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


class Rewriter:
    """The rewriter, loaded when a shard needs it: image-text-to-text (images fed) or a text causal LM."""

    def __init__(self, recipe: RewriteRecipe, ref: ArtifactRef, vision: bool) -> None:
        spec = recipe.rewriter
        self.recipe, self.vision = recipe, vision
        if vision:
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
            fits = [self.model.prompt_tokens(p, imgs) < self.model.context for p, imgs in zip(prompts, images)]
            done = iter(self.model.complete([p for p, ok in zip(prompts, fits) if ok],
                                            [imgs for imgs, ok in zip(images, fits) if ok], settings))
        else:
            fits = [len(self.model.tokenizer(p)["input_ids"]) < self.model.context for p in prompts]
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


def compute_shards(recipe: RewriteRecipe, inputs: Inputs, work: Work, ref: ArtifactRef, vision: bool) -> list[int]:
    """Rewrite every shard not yet on disk; returns the shards computed."""
    todo = work.store.missing()
    log.info("rewrite: %d of %d shard(s) to compute", len(todo), work.store.num_shards)
    rewriter: Rewriter | None = None
    for shard in todo:
        records = work.shard_records(inputs, shard)
        rewriter = rewriter or Rewriter(recipe, ref, vision)
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
        recorded = json.loads(str(shard["decoding"]))
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


def filter_all(recipe: RewriteRecipe, inputs: Inputs, rewrites: dict[int, dict[str, Any]],
               scorers: Scorers) -> Filtered:
    from builders.polite_flamingo.filters import filter_rows, top_k_by_reward

    settings = filter_settings(recipe)
    counts = {s.name: Counter() for s in recipe.sources}
    rejected: Rows = []
    for name, conv in inputs.converted.items():
        for r in conv.rejected:
            rejected.append({**r, "stage": "convert", "source": name, "score": None})
            counts[name]["convert"] += 1
    kept_rows: list[tuple[Record, dict[str, Any]]] = []
    for source in recipe.sources:
        rows, records = [], []
        for record in (r for r in inputs.records if r.source == source.name):
            rewrite = rewrites[record.key]
            if rewrite["reason"]:
                rejected.append(_rejected(record, "rewrite", rewrite["reason"], None,
                                          {"continuation": rewrite["continuation"],
                                           "decoding": json.loads(rewrite["decoding"])}))
                counts[source.name]["rewrite"] += 1
                continue
            d = record.data
            images = [open_image(i) for i in d["images"][:1]] if d["task"] == "caption" else []
            rows.append({"instruction": d["instruction"], "original": d["raw"], "output": rewrite["output"],
                         "task": d["task"], "images": images})
            records.append(record)
        if not rows:
            continue
        result = filter_rows(rows, settings, sts=scorers.sts, nli=scorers.nli, clip=scorers.clip,
                             reward=scorers.reward)
        for dropped in result.dropped:
            record = records[dropped.index]
            details = {k: dropped.row[k] for k in ("output", *SCORE_FIELDS) if k in dropped.row}
            details |= {"continuation": rewrites[record.key]["continuation"],
                        "decoding": json.loads(rewrites[record.key]["decoding"])}
            rejected.append(_rejected(record, dropped.filter, dropped.reason, dropped.score, details))
            counts[source.name][dropped.filter] += 1
        kept_rows += [(records[i], row) for i, row in zip(result.kept_index, result.kept)]
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
    reward_raw: list[float] = []
    if scorers.reward is not None and kept_rows:
        reward_raw = scorers.reward.scores([question_text(r.data["instruction"]) for r, _ in kept_rows],
                                           [r.data["raw"] for r, _ in kept_rows])
    published: dict[str, Rows] = {s.name: [] for s in recipe.sources}
    for record, row in sorted(kept_rows, key=lambda pair: pair[0].key):
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


def _card(recipe: RewriteRecipe, inputs: Inputs, filtered: Filtered, rewriter: ArtifactRef,
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
    models = ", ".join(f"{role} `{ref.portable().repo_id}`@{ref.sha}" for role, ref in
                       [("rewriter", rewriter), *filter_refs.items()])
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


def prepare(recipe: RewriteRecipe) -> tuple[Inputs, ArtifactRef, bool, Work]:
    """Convert the sources, pin the rewriter and open the shard store."""
    from alignsmith.models.loading import is_adapter, is_vision_language

    rewriter = pin("rewriter", recipe.rewriter.model, "model", recipe.rewriter.revision)
    if is_adapter(rewriter):
        raise RecipeError(f"rewriter.model: {rewriter.repo_id!r} is a PEFT adapter; publish the merged rewriter")
    vision = is_vision_language(rewriter)
    inputs = load_inputs(recipe)
    return inputs, rewriter, vision, Work(recipe, inputs, rewriter)


def run(recipe: RewriteRecipe) -> Release:
    """``build pf-rewrite``: rewrite every shard not done yet, filter, then publish one config per source,
    ``rejected`` and (optionally) ``multiturn``."""
    ensure_tag_free(recipe.output.repo_id, "dataset", recipe.output.tag)
    filter_refs = pin_filter_models(recipe)
    inputs, rewriter, vision, work = prepare(recipe)
    compute_shards(recipe, inputs, work, rewriter, vision)
    rewrites = read_rewrites(inputs, work)
    filtered = filter_all(recipe, inputs, rewrites, load_scorers(filter_refs))
    features = _features()
    configs = {name: {"train": dataset_from_rows(rows, features)} for name, rows in filtered.rows.items()}
    configs["rejected"] = {"train": dataset_from_rows(filtered.rejected, rejected_features("stage", "source", "score"))}
    if recipe.multiturn is not None:
        configs["multiturn"] = {"train": dataset_from_rows(multiturn_rows(recipe, filtered, rewriter),
                                                           _multiturn_features())}
    lineage = Lineage(command="build pf-rewrite", recipe=to_dict(recipe), inputs=inputs.refs,
                      models=[rewriter, *filter_refs.values()])
    return publish_dataset(recipe.output, configs, _card(recipe, inputs, filtered, rewriter, filter_refs), lineage,
                           default_config=recipe.sources[0].name)
