"""``alignsmith build deita``: score, embed and select a pool, then publish the dataset.

The work is cut into shards (see :mod:`alignsmith.shards`): scoring and embedding write each
finished shard to ``work_dir``, so a killed build resumes where it stopped and gives the same
output. Under ``accelerate launch`` every process takes its share of the shards and the main process
selects and publishes. With an ``executor`` (:mod:`alignsmith.executors`: local processes, a Slurm
array, a Ray cluster) each task computes its share (:class:`DeitaTasks`) and selection and publishing
run once every task has finished.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from alignsmith.executors import ShardTasks, execute
from alignsmith.lineage import ArtifactRef, Lineage, pin
from alignsmith.publish import Release, ensure_tag_free
from alignsmith.recipes import RecipeError, to_dict
from alignsmith.shards import ShardMismatchError, ShardPlan, ShardStore, all_done, fingerprint
from alignsmith.sources import SourceError, load_source
from builders.deita.recipe import DeitaRecipe
from builders.deita.results import FinishedBuild, Merged, Models, Pool

log = logging.getLogger(__name__)


def load_pool(recipe: DeitaRecipe) -> Pool:
    loaded = load_source(recipe.pool)
    converted = loaded.to_records("conversation", on_invalid=recipe.on_invalid, require_assistant=True)
    summary = converted.summary()
    log.info("read the pool, %s: %d rows, %d valid, %d rejected %s", recipe.pool.describe(), summary["total"],
             summary["converted"], summary["rejected"], summary["rejected_by_reason"] or "")
    if not converted.records:
        first = "; ".join(converted.first_rejections())
        raise SourceError(f"pool {recipe.pool.describe()}: none of its {summary['total']} rows is a valid conversation "
                          f"with an assistant reply (rejected: {summary['rejected_by_reason'] or 'none'}"
                          f"{'; first: ' + first if first else ''}); nothing to score")
    return Pool(loaded, converted.records, converted.rejected, loaded.artifact_ref("pool"))


def pin_models(recipe: DeitaRecipe) -> Models:
    """Every model pinned once; the workers load exactly these refs."""
    return Models(
        pin("complexity_scorer", recipe.complexity_scorer.model, "model", recipe.complexity_scorer.revision),
        pin("quality_scorer", recipe.quality_scorer.model, "model", recipe.quality_scorer.revision),
        pin("embedder", recipe.embedder.model, "model", recipe.embedder.revision),
        pin("difficulty_model", recipe.difficulty_model, "model") if recipe.difficulty_model else None,
    )


class Work:
    """The shard stores of one build: scores, embeddings and (for perplexity/IFD) difficulty."""

    def __init__(self, recipe: DeitaRecipe, pool: Pool, models: Models, *, num_tasks: int = 1, task_index: int = 0,
                 num_processes: int = 1, process_index: int = 0):
        self.plan = ShardPlan(len(pool.records), recipe.shard_size, num_tasks, task_index, num_processes,
                              process_index)
        base = {"records": pool.fingerprint, "shard_size": recipe.shard_size}
        scoring = {**base, "complexity": [to_dict(recipe.complexity_scorer), models.complexity.sha],
                   "quality": [to_dict(recipe.quality_scorer), models.quality.sha],
                   "context": recipe.context, "truncation": recipe.truncation, "on_invalid": recipe.on_invalid}
        embedding = {**base, "embedder": [to_dict(recipe.embedder), models.embedder.sha]}
        n = self.plan.num_shards
        self.scores = ShardStore(recipe.work_dir, "scores", fingerprint(scoring), n)
        self.embeddings = ShardStore(recipe.work_dir, "embeddings", fingerprint(embedding), n)
        self.difficulty = None
        if models.difficulty is not None:
            spec = {**base, "model": models.difficulty.repo_id, "sha": models.difficulty.sha,
                    "on_invalid": recipe.on_invalid}
            self.difficulty = ShardStore(recipe.work_dir, "difficulty", fingerprint(spec), n)

    def stores(self) -> list[ShardStore]:
        return [s for s in (self.scores, self.embeddings, self.difficulty) if s is not None]


def _flat(lists: Sequence[Sequence[Any]], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    return np.array([v for x in lists for v in x], dtype=dtype), offsets


def _unflat(values: np.ndarray, offsets: np.ndarray) -> list[list[Any]]:
    return [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def _errors(results: Sequence[Any]) -> dict[str, np.ndarray]:
    fields = [r.rejection.field or "" if r.rejection else "" for r in results]
    reasons = [str(r.rejection) if r.rejection else "" for r in results]
    return {"error_field": np.array(fields, dtype=str), "error_reason": np.array(reasons, dtype=str)}


def compute_shards(recipe: DeitaRecipe, pool: Pool, models: Models, work: Work) -> None:
    """Score, embed (and measure difficulty of) every shard this worker owns that is not done yet."""
    from tqdm.auto import tqdm

    todo = [s for s in work.plan.mine() if any(not store.done(s) for store in work.stores())]
    if not todo:
        log.info("all %d of this worker's shards are already done", len(work.plan.mine()))
        return
    log.info("computing %d shard(s) of %d rows (%d already done)", len(todo), recipe.shard_size,
             len(work.plan.mine()) - len(todo))
    workers = _Workers(recipe, models)
    on_error = recipe.on_invalid
    for shard in tqdm(todo, desc="deita shards", unit="shard"):
        rows = work.plan.rows(shard)
        records = pool.records[rows.start : rows.stop]
        index = np.arange(rows.start, rows.stop, dtype=np.int64)
        if not work.scores.done(shard):
            complexity = workers.complexity().score_records(records, on_error=on_error)
            quality = workers.quality().score_records(records, on_error=on_error)
            merged = [c if c.rejection else q for c, q in zip(complexity, quality)]
            c_vals, c_off = _flat([c.scores for c in complexity], np.float64)
            q_vals, q_off = _flat([q.scores for q in quality], np.float64)
            c_trunc, _ = _flat([c.truncated for c in complexity], bool)
            q_trunc, _ = _flat([q.truncated for q in quality], bool)
            work.scores.write(shard, row=index, complexity=c_vals, complexity_offsets=c_off, complexity_truncated=c_trunc,
                              quality=q_vals, quality_offsets=q_off, quality_truncated=q_trunc, **_errors(merged))
        if not work.embeddings.done(shard):
            emb = workers.embedder().embed_records(records)
            work.embeddings.write(shard, row=index, vectors=emb.vectors, truncated=emb.truncated)
        if work.difficulty is not None and not work.difficulty.done(shard):
            diff = workers.difficulty().score_records(records, on_error=on_error)
            work.difficulty.write(shard, row=index, perplexity=np.array([d.perplexity for d in diff]),
                                  ifd=np.array([d.ifd for d in diff]), **_errors(diff))


class _Workers:
    """Models load lazily: a resumed build whose scores are done never loads the scorers."""

    def __init__(self, recipe: DeitaRecipe, models: Models) -> None:
        self.recipe, self.models, self._cache = recipe, models, {}

    def _get(self, key: str, make) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _scorer(self, kind: str, spec, ref: ArtifactRef):
        from builders.deita.scoring import DeitaScorer

        return DeitaScorer(ref, kind, dtype=spec.dtype,
                           batch_size=spec.batch_size, max_length=spec.max_length, truncation=self.recipe.truncation,
                           context=self.recipe.context, digit_token_ids=spec.digit_token_ids)

    def complexity(self):
        return self._get("complexity", lambda: self._scorer("complexity", self.recipe.complexity_scorer, self.models.complexity))

    def quality(self):
        return self._get("quality", lambda: self._scorer("quality", self.recipe.quality_scorer, self.models.quality))

    def embedder(self):
        from builders.deita.embedding import CausalLMEmbedder, SentenceTransformerEmbedder

        spec, ref = self.recipe.embedder, self.models.embedder
        if spec.kind == "causal_lm":
            make = lambda: CausalLMEmbedder(ref, dtype=spec.dtype, batch_size=spec.batch_size,  # noqa: E731
                                            max_length=spec.max_length, only_answer=spec.only_answer,
                                            output_dtype=spec.storage_dtype)
        else:
            make = lambda: SentenceTransformerEmbedder(ref, batch_size=spec.batch_size,  # noqa: E731
                                                       only_answer=spec.only_answer, output_dtype=spec.storage_dtype)
        return self._get("embedder", make)

    def difficulty(self):
        from builders.deita.difficulty import DifficultyScorer

        return self._get("difficulty", lambda: DifficultyScorer(self.models.difficulty))


class RowSubset:
    """Rows ``rows`` of a (memory-mapped) matrix, read only when indexed: selection reads block by block,
    so a 300K x 4096 pool never has to be copied into memory."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray) -> None:
        self.matrix, self.rows = matrix, rows

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.matrix.shape[1]

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.matrix[self.rows[index]]


def _check_rows(store: ShardStore, rows: np.ndarray, n_rows: int) -> None:
    if not np.array_equal(rows, np.arange(n_rows)):
        raise ShardMismatchError(f"{store.dir}: shards do not cover rows 0..{n_rows - 1} exactly once")


def _merge_embeddings(store: ShardStore, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """All shards' vectors in one ``.npy`` next to them, memory-mapped; and the truncation flags."""
    matrix = None
    truncated, rows = [], []
    start = 0
    for shard in store.read_all():
        vectors = shard["vectors"]
        if matrix is None:
            matrix = np.lib.format.open_memmap(store.dir / "merged.npy", mode="w+", dtype=vectors.dtype,
                                               shape=(n_rows, vectors.shape[1]))
        matrix[start : start + len(vectors)] = vectors
        start += len(vectors)
        truncated.append(shard["truncated"])
        rows.append(shard["row"])
    _check_rows(store, np.concatenate(rows), n_rows)
    matrix.flush()
    del matrix
    return np.load(store.dir / "merged.npy", mmap_mode="r"), np.concatenate(truncated)


def merge_shards(work: Work, n_rows: int) -> Merged:
    def concat(store: ShardStore) -> dict[str, list[np.ndarray]]:
        parts: dict[str, list[np.ndarray]] = {}
        for shard in store.read_all():
            for key, value in shard.items():
                parts.setdefault(key, []).append(value)
        _check_rows(store, np.concatenate(parts["row"]), n_rows)
        return parts

    s = concat(work.scores)
    per_turn = {}
    for kind in ("complexity", "quality"):
        lists, truncs = [], []
        for values, offsets, trunc in zip(s[kind], s[f"{kind}_offsets"], s[f"{kind}_truncated"]):
            lists += _unflat(values, offsets)
            truncs += [[bool(t) for t in x] for x in _unflat(trunc, offsets)]
        per_turn[kind], per_turn[f"{kind}_truncated"] = lists, truncs
    embeddings, embedding_truncated = _merge_embeddings(work.embeddings, n_rows)
    d = concat(work.difficulty) if work.difficulty is not None else None
    error_field, error_reason = np.concatenate(s["error_field"]), np.concatenate(s["error_reason"])
    if d is not None:  # a row the difficulty model cannot score is rejected too
        d_field, d_reason = np.concatenate(d["error_field"]), np.concatenate(d["error_reason"])
        take = (error_reason == "") & (d_reason != "")
        error_field, error_reason = np.where(take, d_field, error_field), np.where(take, d_reason, error_reason)
    return Merged(
        **per_turn,
        error_field=error_field,
        error_reason=error_reason,
        embeddings=embeddings,
        embedding_truncated=embedding_truncated,
        perplexity=np.concatenate(d["perplexity"]) if d else None,
        ifd=np.concatenate(d["ifd"]) if d else None,
    )


def _state():
    """accelerate's process state (one process unless started with ``accelerate launch``)."""
    from accelerate import PartialState

    return PartialState()


class DeitaTasks(ShardTasks):
    """The build as executor tasks: each computes its share of the shards; ``finish`` selects and publishes.
    Tasks read the pool themselves (the shard manifests check it is the same pool)."""

    def __init__(self, recipe: DeitaRecipe, models: Models, pool: Pool | None = None) -> None:
        super().__init__(pool)
        self.recipe, self.models = recipe, models

    def load(self) -> Pool:
        return load_pool(self.recipe)

    def work(self, rank: int = 0, world_size: int = 1) -> Work:
        return Work(self.recipe, self.input(), self.models, num_tasks=world_size, task_index=rank)

    def run_task(self, rank: int, world_size: int) -> None:
        compute_shards(self.recipe, self.input(), self.models, self.work(rank, world_size))

    def task_done(self, rank: int, world_size: int) -> bool:
        work = self.work(rank, world_size)
        return all_done(work.stores(), work.plan.mine())

    def finish(self) -> Release:
        return select_and_publish(self.recipe, self.input(), self.models, self.work())


def run(recipe: DeitaRecipe) -> Release | None:
    """``build deita``: compute the shards (here, under accelerate launch, or as executor tasks), then select
    and publish (None from the processes that do not, and once the tasks are submitted to Slurm)."""
    ensure_tag_free(recipe.output.repo_id, "dataset", recipe.output.tag)  # before hours of scoring, not after
    pool = load_pool(recipe)
    models = pin_models(recipe)
    state = _state()
    if recipe.executor.kind != "none":
        if state.num_processes > 1:
            raise RecipeError(f"executor.kind: {recipe.executor.kind!r} starts its own tasks; run the build once, "
                              "without accelerate launch")
        tasks = DeitaTasks(recipe, models, pool)
        tasks.work()  # a work_dir of another job is refused here, before any task starts
        return execute(recipe.executor, tasks, recipe.work_dir)
    work = Work(recipe, pool, models, num_processes=state.num_processes, process_index=state.process_index)
    compute_shards(recipe, pool, models, work)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return select_and_publish(recipe, pool, models, work)


def select_and_publish(recipe: DeitaRecipe, pool: Pool, models: Models, work: Work) -> Release:
    from builders.deita.publish import publish_build
    from builders.deita.strategies import select

    merged = merge_shards(work, len(pool.records))
    valid = np.flatnonzero(merged.error_reason == "")
    table = _selection_table(pool.records, merged, valid)
    spec = recipe.selection
    result = select(spec.strategy, table, budget=spec.budget, seed=spec.seed,
                    embeddings=RowSubset(merged.embeddings, valid) if spec.strategy == "deita" else None,
                    **_strategy_options(spec))
    log.info("selected %d of %d scored rows with strategy %r", len(result.selected), len(valid), spec.strategy)
    lineage = Lineage(command="build deita", recipe=to_dict(recipe), inputs=[pool.ref], models=models.refs())
    return publish_build(FinishedBuild(recipe, pool, merged, valid, table, result, lineage))


def _selection_table(records: list[dict[str, Any]], merged: Merged, valid: np.ndarray) -> dict[str, Any]:
    def chars(record: dict[str, Any], role: str) -> int:
        return sum(len(m["content"]) for m in record["messages"] if m["role"] == role)

    table: dict[str, Any] = {
        "id": [records[i]["id"] for i in valid],
        "complexity_scores": [merged.complexity[i] for i in valid],
        "quality_scores": [merged.quality[i] for i in valid],
        "instruction_length": np.array([chars(records[i], "user") for i in valid], float),
        "response_length": np.array([chars(records[i], "assistant") for i in valid], float),
    }
    if merged.perplexity is not None:
        table["perplexity"], table["ifd"] = merged.perplexity[valid], merged.ifd[valid]
    return table


def _strategy_options(spec) -> dict[str, Any]:
    """The recipe's typed selection keys, passed to the strategies that take them."""
    from builders.deita.strategies import strategy_options

    available = {"score": spec.score, "tie_order": spec.tie_order, "max_similarity": spec.max_similarity,
                 "invalid_embeddings": spec.invalid_embeddings, "block_size": spec.block_size}
    accepted = strategy_options(spec.strategy)
    return {key: value for key, value in available.items() if key in accepted}
