"""``build pf-pairs``: (distorted, original) response pairs for training a Polite Flamingo rewriter.

Every (user instruction, assistant response) turn pair of a conversation dataset is one candidate;
each requested distortion kind turns it into a pair or into a rejection with its reason (notes
``polite-flamingo.md`` §1). Work is cut into shards of source records, one :class:`ShardStore` per
kind, so a killed build resumes and a kind added later does not redo the others.

``captions_and_boxes`` (§1.4) reads the ``captions`` and ``instances`` columns of a LLaVA-detail-style
source, which the converter carries in each record's ``metadata``. They describe the image, not one
answer, so only a record's first turn pair is its candidate (LLaVA-detail rows have one turn). It draws
nothing, but is sharded and resumable like the other kinds.

Every published pair also carries the rewriter's training view, trl's ``prompt``/``completion``: the
instruction and distorted response in the recipe's layout (:mod:`builders.polite_flamingo.rewriting`),
and the original response. The layout is rendered at publish time, so it is no part of the shards.

Reproducibility: every draw (augmentation steps, the optional Guanaco command) comes from a
generator seeded by (``seed``, kind, candidate id), so a row does not depend on its neighbours.
Sampled LLM continuations are seeded per batch (see :mod:`alignsmith.models.hf_chat`) from the
recipe's decoding seed mixed with the shard: the same recipe gives the same rows; greedy rows are
the same whatever the batching.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from alignsmith.cards import CardContent, histogram
from alignsmith.converters import ConversionResult
from alignsmith.executors import ShardTasks, execute
from alignsmith.lineage import ArtifactRef, Lineage, pin
from alignsmith.publish import Release, ensure_tag_free, publish_dataset
from alignsmith.models.generation import work_identity
from alignsmith.recipes import to_dict
from alignsmith.records import IMAGE_PLACEHOLDER, dataset_from_rows, rejected_features
from alignsmith.seeding import row_rng, row_seed
from alignsmith.shards import ShardPlan, ShardStore, all_done, fingerprint
from alignsmith.sources import LoadedSource, SourceError, load_source
from builders.polite_flamingo.distortions import (
    Distortion,
    DistortionInputError,
    Rejection,
    captions_and_boxes_input,
    cut_at_closing_quote,
    llm_instructed_prompt,
    random_augmentation,
)
from builders.polite_flamingo.recipe import PairsRecipe
from builders.polite_flamingo.rewriting import RewriterLayout, leaves_room, rewriting_prompt

log = logging.getLogger(__name__)

POLITE_FLAMINGO_CITATION = """\
@inproceedings{chen2024visual,
  title     = {Visual Instruction Tuning with Polite Flamingo},
  author    = {Chen, Delong and Liu, Jianfeng and Dai, Wenliang and Wang, Baoyuan},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2024},
  url       = {https://arxiv.org/abs/2307.01003}
}"""


@dataclass(frozen=True)
class Candidate:
    """One (instruction, original response) turn pair of a source record."""

    id: str  # record id + turn
    source: str
    instruction: str
    original: str
    images: list[dict[str, Any]]
    source_row: int
    record: int  # index into the valid records: what shards cut
    turn_pair: int  # position among the record's turn pairs: captions_and_boxes reads the first only
    metadata: str | None  # the record's carried columns (JSON object), where captions_and_boxes finds its input


@dataclass
class Pairs:
    """The build's input: candidates, the source rows rejected on conversion, and what pins the source."""

    loaded: LoadedSource
    converted: ConversionResult
    candidates: list[Candidate]
    ref: ArtifactRef

    @cached_property
    def fingerprint(self) -> str:
        """:func:`_candidates_fingerprint`, computed once however many tasks' shard stores check it."""
        return _candidates_fingerprint(self.candidates)


def _source_rows(converted: ConversionResult) -> list[int]:
    """Source row of each valid record (records keep source order; rejected rows are the gaps)."""
    rejected = {r["row_index"] for r in converted.rejected}
    total = len(converted.records) + len(converted.rejected)
    return [i for i in range(total) if i not in rejected]


def turn_pairs(record: dict[str, Any], record_index: int, source_row: int) -> list[Candidate]:
    """Each user turn answered by the next message, with the images its placeholders refer to."""
    messages, images = record["messages"], record.get("images") or []
    found, seen = [], 0
    for k, (user, reply) in enumerate(zip(messages, messages[1:])):
        placeholders = user["content"].count(IMAGE_PLACEHOLDER)
        if user["role"] == "user" and reply["role"] == "assistant":
            used = placeholders + reply["content"].count(IMAGE_PLACEHOLDER)
            found.append(Candidate(f"{record['id']}#turn{k}", record["source"], user["content"], reply["content"],
                                   list(images[seen : seen + used]), source_row, record_index, len(found),
                                   record.get("metadata")))
        seen += placeholders
    return found


def load_pairs(recipe: PairsRecipe) -> Pairs:
    loaded = load_source(recipe.source)
    if recipe.max_rows is not None:
        loaded = replace(loaded, dataset=loaded.dataset.select(range(min(recipe.max_rows, len(loaded.dataset)))))
    converted = loaded.to_records("conversation", on_invalid="reject", require_assistant=True)
    summary = converted.summary()
    log.info("read %s: %d rows, %d valid, %d rejected %s", recipe.source.describe(), summary["total"],
             summary["converted"], summary["rejected"], summary["rejected_by_reason"] or "")
    rows = _source_rows(converted)
    candidates = [c for i, record in enumerate(converted.records) for c in turn_pairs(record, i, rows[i])]
    if not candidates:
        raise SourceError(f"source {recipe.source.describe()}: no (user, assistant) turn pair in its "
                          f"{summary['total']} rows (rejected: {summary['rejected_by_reason'] or 'none'})")
    return Pairs(loaded, converted, candidates, loaded.artifact_ref("source"))


def _candidates_fingerprint(candidates: Sequence[Candidate]) -> str:
    """What the distortions see, in order: another split, slice or format of one file gives other rows."""
    digest = hashlib.sha256()
    for c in candidates:
        digest.update(json.dumps([c.id, c.instruction, c.original, c.record, c.metadata],
                                 ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()[:32]


class Work:
    """One shard store per kind, over shards of source records."""

    def __init__(self, recipe: PairsRecipe, pairs: Pairs, distorter: ArtifactRef | None, *, num_tasks: int = 1,
                 task_index: int = 0) -> None:
        self.plan = ShardPlan(len(pairs.converted.records), recipe.shard_size, num_tasks, task_index)
        base = {"candidates": pairs.fingerprint, "shard_size": recipe.shard_size,
                "seed": recipe.seed}
        specs = {"random_augmentation": base,
                 "llm_instructed": {**base, "distorter": [work_identity(recipe.distorter) if recipe.distorter else None,
                                                  distorter.sha if distorter else None],
                                    "decoding": to_dict(recipe.decoding)},
                 "captions_and_boxes": {key: base[key] for key in ("candidates", "shard_size")}}  # draws nothing
        self.stores = {kind: ShardStore(recipe.work_dir, kind, fingerprint(specs[kind]), self.plan.num_shards)
                       for kind in recipe.kinds}

    def shard_candidates(self, pairs: Pairs, shard: int) -> list[Candidate]:
        rows = self.plan.rows(shard)
        return [c for c in pairs.candidates if rows.start <= c.record < rows.stop]


@dataclass(frozen=True)
class Outcome:
    """A candidate's distortion, or its rejection with what was seen (e.g. the raw continuation)."""

    result: Distortion | Rejection
    details: dict[str, Any]  # the Distortion's params, or a Rejection's evidence
    decoding: dict[str, Any] | None = None  # LLM decoding settings, as applied


class LLMDistorter:
    """The Guanaco prompt continued by a causal LM, loaded only when a shard needs it, or by the endpoint
    serving it (task ``task`` of a run uses ``endpoint[task % len(endpoint)]``); ``ref`` is None for an
    endpoint."""

    def __init__(self, recipe: PairsRecipe, ref: ArtifactRef | None, *, task: int = 0) -> None:
        spec = recipe.distorter
        if spec.endpoint is not None:
            from alignsmith.models.generation import endpoint_for_task
            from alignsmith.models.openai_chat import EndpointChatModel

            self.model = EndpointChatModel(endpoint_for_task(spec.endpoint, task), spec.model,
                                           api_key_env=spec.api_key_env, batch_size=spec.batch_size)
        else:
            from alignsmith.models.hf_chat import HFChatModel

            self.model = HFChatModel(ref, dtype=spec.dtype, batch_size=spec.batch_size)
        self.recipe = recipe

    def distort(self, candidates: Sequence[Candidate], shard: int) -> list[Outcome]:
        from alignsmith.models.generation import DecodingSettings

        d = self.recipe.decoding
        settings = DecodingSettings(temperature=d.temperature, top_p=d.top_p, max_new_tokens=d.max_new_tokens,
                                    seed=row_seed(d.seed, f"shard-{shard}") >> 1)
        recorded = {**settings.to_dict(), "recipe_seed": d.seed, "batch_size": self.model.batch_size}
        del recorded["top_logprobs"]
        drawn = [llm_instructed_prompt(c.instruction, c.original, row_rng(self.recipe.seed, f"llm_instructed/{c.id}"))
                 for c in candidates]
        # a prompt that leaves no room to continue is this row's problem, not the batch's
        fits = [leaves_room(self.model, prompt) for prompt, _ in drawn]
        replies = iter(self.model.complete([p for (p, _), ok in zip(drawn, fits) if ok], settings))
        outcomes: list[Outcome] = []
        for (_, command), ok in zip(drawn, fits):
            if not ok:
                outcomes.append(Outcome(Rejection("llm_instructed", "prompt longer than the distorter's context"),
                                        {"command": command}, recorded))
                continue
            reply = next(replies)
            cut = cut_at_closing_quote(reply.text)
            params = {"command": command, "continuation": reply.text, "finish_reason": reply.finish_reason,
                      "completion_tokens": reply.completion_tokens}
            outcomes.append(Outcome(cut if isinstance(cut, Rejection) else Distortion("llm_instructed", cut, params),
                                    params, recorded))
        return outcomes


def _augment(recipe: PairsRecipe, candidates: Sequence[Candidate]) -> list[Outcome]:
    outcomes = []
    for c in candidates:
        result = random_augmentation(c.original, row_rng(recipe.seed, f"random_augmentation/{c.id}"))
        outcomes.append(Outcome(result, result.params if isinstance(result, Distortion) else {}))
    return outcomes


CAPTION_COLUMNS = ("captions", "instances")


def _captions_and_boxes(c: Candidate) -> Outcome:
    """Kind (c): the captions and boxes the record carries, laid out as in PF-1M; a missing or bad value is
    that candidate's rejection, with the values seen."""
    carried = json.loads(c.metadata) if c.metadata else {}
    seen = {column: carried.get(column) for column in CAPTION_COLUMNS}
    missing = [column for column, value in seen.items() if value is None]
    if missing:
        names = " and ".join(repr(column) for column in missing) + (" columns" if len(missing) > 1 else " column")
        return Outcome(Rejection("captions_and_boxes", f"no {names} (read from the record's metadata)"), seen)
    try:
        text = captions_and_boxes_input({"id": c.id, **seen})
    except DistortionInputError as err:  # the reason without the row id, so the card can count each kind of fault
        return Outcome(Rejection("captions_and_boxes", f"{err.field}: {err.problem}"), seen)
    params = {"captions": len(seen["captions"]), "boxes": len(seen["instances"])}
    return Outcome(Distortion("captions_and_boxes", text, params), params)


def _write(store: ShardStore, shard: int, candidates: Sequence[Candidate], outcomes: Sequence[Outcome]) -> None:
    """One shard as string arrays: the candidate ids, then per row the text or the reason, params, decoding."""
    texts = [o.result.text if isinstance(o.result, Distortion) else "" for o in outcomes]
    reasons = [o.result.reason if isinstance(o.result, Rejection) else "" for o in outcomes]
    params = [json.dumps(o.details, ensure_ascii=False) for o in outcomes]
    decoding = [json.dumps(o.decoding, ensure_ascii=False) if o.decoding is not None else "" for o in outcomes]
    store.write(shard, id=np.array([c.id for c in candidates], dtype=str), distorted=np.array(texts, dtype=str),
                reason=np.array(reasons, dtype=str), params=np.array(params, dtype=str),
                decoding=np.array(decoding, dtype=str))


def compute_shards(recipe: PairsRecipe, pairs: Pairs, work: Work, distorter: ArtifactRef | None,
                   task: int = 0) -> None:
    """Distort every shard of every kind this worker owns (``work.plan``) not yet on disk."""
    llm: LLMDistorter | None = None
    for kind, store in work.stores.items():
        todo = [shard for shard in work.plan.mine() if not store.done(shard)]
        log.info("%s: %d of %d shard(s) to compute", kind, len(todo), store.num_shards)
        for shard in todo:
            candidates = work.shard_candidates(pairs, shard)
            if kind == "llm_instructed":
                llm = llm or LLMDistorter(recipe, distorter, task=task)
                outcomes = llm.distort(candidates, shard)
            elif kind == "captions_and_boxes":
                candidates = [c for c in candidates if c.turn_pair == 0]
                outcomes = [_captions_and_boxes(c) for c in candidates]
            else:
                outcomes = _augment(recipe, candidates)
            _write(store, shard, candidates, outcomes)


def _column(value: str) -> str | None:
    return value or None


Rows = list[dict[str, Any]]
REJECTED_FIELD = {"captions_and_boxes": "metadata"}  # where a rejected candidate's problem lies; else "original"


def collect(pairs: Pairs, work: Work, layout: RewriterLayout) -> tuple[dict[str, Rows], Rows]:
    """Published rows per kind, with the rewriter's ``prompt`` in ``layout``, and the rejected rows
    (conversion first, then distortion) in source order."""
    by_id = {c.id: c for c in pairs.candidates}
    rows: dict[str, list[dict[str, Any]]] = {}
    rejected = [{**r, "stage": "convert"} for r in pairs.converted.rejected]
    for kind, store in work.stores.items():
        rows[kind] = []
        for shard in store.read_all():
            for i, distorted, reason, params, decoding in zip(shard["id"], shard["distorted"], shard["reason"],
                                                              shard["params"], shard["decoding"]):
                c = by_id[str(i)]
                if reason:
                    raw = {"instruction": c.instruction, "original": c.original, "details": json.loads(str(params)),
                           "decoding": json.loads(str(decoding)) if decoding else None}
                    rejected.append({"row_index": c.source_row, "id": c.id,
                                     "field": REJECTED_FIELD.get(kind, "original"), "reason": str(reason),
                                     "code": kind, "stage": kind, "raw": json.dumps(raw, ensure_ascii=False)})
                    continue
                rows[kind].append({"id": c.id, "source": c.source, "instruction": c.instruction,
                                   "original": c.original, "distorted": str(distorted), "images": c.images,
                                   "kind": kind, "params": str(params), "decoding": _column(str(decoding)),
                                   "source_row": c.source_row,
                                   "prompt": rewriting_prompt(c.instruction, str(distorted), layout),
                                   "completion": c.original})
    rejected.sort(key=lambda r: r["row_index"])
    return rows, rejected


def _pair_features():
    import datasets

    text = datasets.Value("string")
    return datasets.Features({"id": text, "source": text, "instruction": text, "original": text, "distorted": text,
                              "images": datasets.List(datasets.Image()), "kind": text, "params": text,
                              "decoding": text, "source_row": datasets.Value("int64"), "prompt": text,
                              "completion": text})


def length_ratios(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """len(distorted) / len(original), in characters: how much a kind compresses."""
    return np.array([len(r["distorted"]) / max(len(r["original"]), 1) for r in rows], dtype=float)


REWRITER_VIEW = (" `prompt` (the rewriter's input: instruction and distorted response, in the build's layout) and "
                 "`completion` (the original response) are trl's prompt-completion columns, to train a rewriter on.")
CONFIG_DESCRIPTIONS = {
    "random_augmentation": "pairs distorted by the README's nlpaug recipe (truncate, shuffle, char, word); "
    "`params` holds the steps drawn." + REWRITER_VIEW,
    "llm_instructed": "pairs distorted by the Guanaco prompt continued by the distorter; `params` holds the command "
    "drawn and the raw continuation, `decoding` the decoding settings." + REWRITER_VIEW,
    "captions_and_boxes": "a record's first turn pair, its response replaced by the captions and boxes it was written "
    "from (the `captions` and `instances` columns, laid out as in PF-1M); `params` counts them." + REWRITER_VIEW,
    "rejected": "source rows that are not valid conversations (stage `convert`) and candidates a distortion could not "
    "turn into a pair (stage = kind), with the reason.",
}


LAYOUT_NOTES = {
    "paper": "the paper's Figure 3, spelling fixed (the README's reference layout, with its \"Assistent\" typo, "
    "is the `readme` option).",
    "readme": "the README's inference helper, the reference layout the released weights were used with, reproduced "
    "with its \"Assistent\" typo.",
}


def _card(recipe: PairsRecipe, pairs: Pairs, rows: dict[str, list[dict[str, Any]]],
          rejected: list[dict[str, Any]]) -> CardContent:
    stats: dict[str, Any] = {"source rows": len(pairs.converted.records) + len(pairs.converted.rejected),
                             "rejected source rows": len(pairs.converted.rejected),
                             "candidates (turn pairs)": len(pairs.candidates)}
    stats |= {f"pairs: {kind}": len(kind_rows) for kind, kind_rows in rows.items()}
    reasons = Counter((r["stage"], r["reason"] if r["stage"] != "convert" else r["code"]) for r in rejected)
    stats |= {f"rejected ({stage}): {reason}": n for (stage, reason), n in sorted(reasons.items())}
    ratios = {kind: length_ratios(kind_rows) for kind, kind_rows in rows.items()}
    stats |= {f"mean length ratio distorted/original: {kind}": round(float(r.mean()), 4) if r.size else "n/a"
              for kind, r in ratios.items()}
    decoding = recipe.decoding
    return CardContent(
        title=f"Polite Flamingo distortion pairs: {recipe.output.repo_id}",
        summary=(f"(distorted, original) response pairs for training a Polite Flamingo rewriter, from "
                 f"`{pairs.ref.portable().repo_id}`; one config per distortion kind. LLM-instructed decoding "
                 f"(temperature {decoding.temperature}, top_p {decoding.top_p}, max_new_tokens "
                 f"{decoding.max_new_tokens}) is this build's choice: the paper does not publish it. The `prompt` "
                 f"column uses the `{recipe.rewriter_prompt}` rewriter layout: {LAYOUT_NOTES[recipe.rewriter_prompt]}"),
        license=recipe.output.license,
        tags=["polite-flamingo", "distortion", "rewriting"],
        statistics=stats,
        figures=[histogram(ratios, "Length ratio distorted/original (characters)", "ratio", "length_ratio.png")],
        config_descriptions=CONFIG_DESCRIPTIONS,
        citation=POLITE_FLAMINGO_CITATION,
        metadata={"task_categories": ["text-generation"]},
    )


class PairsTasks(ShardTasks):
    """The build as executor tasks: each distorts its share of the shards; ``finish`` publishes. Tasks read
    the source themselves (the shard manifests check it is the same one)."""

    def __init__(self, recipe: PairsRecipe, distorter: ArtifactRef | None, pairs: Pairs | None = None) -> None:
        super().__init__(pairs)
        self.recipe, self.distorter = recipe, distorter

    def load(self) -> Pairs:
        return load_pairs(self.recipe)

    def work(self, rank: int = 0, world_size: int = 1) -> Work:
        return Work(self.recipe, self.input(), self.distorter, num_tasks=world_size, task_index=rank)

    def run_task(self, rank: int, world_size: int) -> None:
        compute_shards(self.recipe, self.input(), self.work(rank, world_size), self.distorter, task=rank)

    def task_done(self, rank: int, world_size: int) -> bool:
        work = self.work(rank, world_size)
        return all_done(work.stores.values(), work.plan.mine())

    def finish(self) -> Release:
        return publish_pairs(self.recipe, self.input(), self.work(), self.distorter)


def run(recipe: PairsRecipe) -> Release | None:
    """``build pf-pairs``: distort every shard not done yet (here or as executor tasks), then publish one config
    per kind plus ``rejected`` (None once the tasks are submitted to Slurm)."""
    ensure_tag_free(recipe.output.repo_id, "dataset", recipe.output.tag)
    pairs = load_pairs(recipe)
    # an endpoint cannot be pinned: its URL(s) and served model name are in the recipe the lineage holds
    distorter = (pin("distorter", recipe.distorter.model, "model", recipe.distorter.revision)
                 if "llm_instructed" in recipe.kinds and recipe.distorter.endpoint is None else None)
    tasks = PairsTasks(recipe, distorter, pairs)
    if recipe.executor.kind != "none":
        tasks.work()  # a work_dir of another job is refused here, before any task starts
        return execute(recipe.executor, tasks, recipe.work_dir)
    tasks.run_task(0, 1)
    return tasks.finish()


def publish_pairs(recipe: PairsRecipe, pairs: Pairs, work: Work, distorter: ArtifactRef | None) -> Release:
    """Once every shard is on disk: one config per kind plus ``rejected``."""
    rows, rejected = collect(pairs, work, recipe.rewriter_prompt)
    features = _pair_features()
    configs = {kind: {"train": dataset_from_rows(kind_rows, features)} for kind, kind_rows in rows.items()}
    configs["rejected"] = {"train": dataset_from_rows(rejected, rejected_features("stage"))}
    lineage = Lineage(command="build pf-pairs", recipe=to_dict(recipe), inputs=[pairs.ref],
                      models=[distorter] if distorter else [])
    return publish_dataset(recipe.output, configs, _card(recipe, pairs, rows, rejected), lineage,
                           default_config=recipe.kinds[0])
