"""Turn a finished Deita build into the published dataset: ``selected``, ``scored``, ``rejected``, ``embeddings``.

``scored`` keeps every scored pool row with its per-turn scores and what selection decided about it
(and why); ``rejected`` keeps every row that could not be converted or scored, with the reason;
``selected`` holds the chosen rows in selection order. Nothing is dropped without a row saying so.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from alignsmith.cards import CardContent, histogram
from alignsmith.publish import Release, publish_dataset
from alignsmith.records import conversation_features, dataset_from_rows, rejected_features
from builders.deita.recipe import DeitaRecipe
from builders.deita.results import FinishedBuild, Pool
from builders.deita.strategies import StrategyResult

RECORD_COLUMNS = ("id", "source", "messages", "images", "tools", "metadata")  # the last two are optional

# What each config holds; the card lists only those published (an empty `rejected` is not).
CONFIG_DESCRIPTIONS = {
    "selected": "the chosen rows in selection order, with `rank` and the similarity to the nearest row selected "
    "before each.",
    "scored": "every pool row with per-turn `complexity_scores` and `quality_scores`, truncation flags, "
    "`final_score` and the selection decision (`selected`, `too_similar`, `not_scanned`, ...).",
    "rejected": "every pool row that could not be converted or scored, with the record id, field and reason, and "
    "the row itself as JSON.",
    "embeddings": "the embedding of every scored row, by `id`.",
}

DEITA_CITATION = """\
@article{liu2023what,
  title   = {What Makes Good Data for Alignment? A Comprehensive Study of Automatic Data Selection in Instruction Tuning},
  author  = {Liu, Wei and Zeng, Weihao and He, Keqing and Jiang, Yong and He, Junxian},
  journal = {arXiv preprint arXiv:2312.15685},
  year    = {2023},
  url     = {https://arxiv.org/abs/2312.15685}
}"""


def _features(extra: dict[str, Any]):
    import datasets

    features = conversation_features()
    features.update(extra)
    return datasets.Features(features)


def _scored_features():
    from datasets import List, Value

    return _features({
        "complexity_scores": List(Value("float64")),
        "quality_scores": List(Value("float64")),
        "complexity_truncated": List(Value("bool")),
        "quality_truncated": List(Value("bool")),
        "final_score": Value("float64"),
        "embedding_truncated": Value("bool"),
        "selection_decision": Value("string"),
        "selection_order": Value("int64"),
        "nearest_selected_similarity": Value("float32"),
        "nearest_selected_id": Value("string"),
        "perplexity": Value("float64"),
        "ifd": Value("float64"),
    })


def _decisions(result: StrategyResult, n_valid: int, ids: list[str]) -> dict[str, np.ndarray]:
    """Per valid row: decision, selection order, nearest selected similarity and id."""
    if result.deita is not None:
        report = result.deita.row_report()
        nearest = report["nearest_selected_row"]
        return {
            "selection_decision": report["selection_decision"],
            "selection_order": report["selection_order"],
            "nearest_selected_similarity": report["nearest_selected_similarity"],
            "nearest_selected_id": np.array([ids[j] if j >= 0 else None for j in nearest], dtype=object),
        }
    decision = np.full(n_valid, "not_selected", dtype=object)
    decision[result.missing_rows] = "missing_value"
    decision[result.filtered_rows] = "filtered"
    decision[result.selected] = "selected"
    order = np.full(n_valid, -1, np.int64)
    order[result.selected] = np.arange(len(result.selected))
    return {
        "selection_decision": decision,
        "selection_order": order,
        "nearest_selected_similarity": np.full(n_valid, np.nan, np.float32),
        "nearest_selected_id": np.full(n_valid, None, dtype=object),
    }


def _embeddings_dataset(ids: list[str], matrix: np.ndarray, valid: np.ndarray):
    """``id`` + fixed-length ``embedding`` columns built from Arrow buffers, never from Python lists."""
    import datasets
    import pyarrow as pa

    vectors = np.ascontiguousarray(matrix[valid])
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    features = datasets.Features({"id": datasets.Value("string"),
                                  "embedding": datasets.List(datasets.Value(str(vectors.dtype)), length=vectors.shape[1])})
    return datasets.Dataset(datasets.table.InMemoryTable(pa.table({"id": ids, "embedding": column})),
                            info=datasets.DatasetInfo(features=features))


def _final_scores(table: dict[str, Any], recipe: DeitaRecipe) -> np.ndarray:
    from builders.deita.selection import combine_scores

    return combine_scores(table["complexity_scores"], table["quality_scores"], method=recipe.selection.score,
                          ids=table["id"])


def _source_rows(pool: Pool) -> list[int]:
    """Source row index of each valid record (records keep source order; rejects are gaps)."""
    rejected = {r["row_index"] for r in pool.rejected}
    total = len(pool.records) + len(pool.rejected)
    return [i for i in range(total) if i not in rejected]


def publish_build(build: FinishedBuild) -> Release:
    import datasets

    recipe, pool, merged, valid, table, result = (build.recipe, build.pool, build.merged, build.valid, build.table,
                                                  build.result)
    records = pool.records
    ids = table["id"]
    final = _final_scores(table, recipe)
    decisions = _decisions(result, len(valid), ids)
    scored_rows = []
    for k, i in enumerate(valid):
        row = {c: records[i].get(c) for c in RECORD_COLUMNS}
        row.update(
            complexity_scores=merged.complexity[i], quality_scores=merged.quality[i],
            complexity_truncated=merged.complexity_truncated[i], quality_truncated=merged.quality_truncated[i],
            final_score=float(final[k]), embedding_truncated=bool(merged.embedding_truncated[i]),
            perplexity=float(merged.perplexity[i]) if merged.perplexity is not None else None,
            ifd=float(merged.ifd[i]) if merged.ifd is not None else None,
            **{key: (v[k].item() if hasattr(v[k], "item") else v[k]) for key, v in decisions.items()},
        )
        scored_rows.append(row)

    source_rows = _source_rows(pool)
    rejected = [{**r, "stage": "convert"} for r in pool.rejected]
    for i in np.flatnonzero(merged.error_reason != ""):
        rejected.append({"row_index": source_rows[i], "stage": "score", "id": records[i]["id"],
                         "field": str(merged.error_field[i]) or None, "reason": str(merged.error_reason[i]),
                         "code": "unscorable", "raw": json.dumps({c: records[i][c] for c in ("id", "messages")},
                                                                 ensure_ascii=False)})
    rejected.sort(key=lambda r: r["row_index"])

    selected_rows = []
    for rank, k in enumerate(result.selected):
        row = scored_rows[k]
        selected_rows.append({**{c: row[c] for c in RECORD_COLUMNS}, "rank": rank, "final_score": row["final_score"],
                              "complexity_scores": row["complexity_scores"], "quality_scores": row["quality_scores"],
                              "nearest_selected_similarity": row["nearest_selected_similarity"]})

    scored = dataset_from_rows(scored_rows, _scored_features())
    configs: dict[str, dict[str, datasets.Dataset]] = {
        "selected": {"train": dataset_from_rows(selected_rows, _features({
            "rank": datasets.Value("int64"), "final_score": datasets.Value("float64"),
            "complexity_scores": datasets.List(datasets.Value("float64")),
            "quality_scores": datasets.List(datasets.Value("float64")),
            "nearest_selected_similarity": datasets.Value("float32")}))},
        "scored": {"train": scored},
        "rejected": {"train": dataset_from_rows(rejected, rejected_features("stage"))},
    }
    if recipe.publish_embeddings:
        configs["embeddings"] = {"train": _embeddings_dataset(ids, merged.embeddings, valid)}

    content = _card_content(build, final)
    return publish_dataset(recipe.output, configs, content, build.lineage, default_config="selected")


def _card_content(build: FinishedBuild, final: np.ndarray) -> CardContent:
    recipe, pool, merged, valid, result = build.recipe, build.pool, build.merged, build.valid, build.result
    selected = result.selected
    stats: dict[str, Any] = {
        "pool rows": len(pool.records) + len(pool.rejected),
        "rejected (conversion)": len(pool.rejected),
        "rejected (scoring)": int((merged.error_reason != "").sum()),
        "scored rows": len(valid),
        "strategy": recipe.selection.strategy,
        "budget": recipe.selection.budget,
        "selected": len(selected),
        "rows with a truncated scorer prompt": int(sum(any(merged.complexity_truncated[i]) or any(merged.quality_truncated[i])
                                                      for i in valid)),
        "rows with a truncated embedding text": int(merged.embedding_truncated[valid].sum()),
    }
    if result.deita is not None:
        counts = result.deita.counts
        stats.update({"max_similarity": recipe.selection.max_similarity, "scanned": counts.scanned,
                      "rejected as too similar": counts.rejected_too_similar,
                      "invalid embeddings": counts.invalid_embeddings, "NaN final scores": counts.nan_scores})
    if result.shortfall > 0:
        stats["short of budget by"] = result.shortfall
    complexity = np.array([np.mean(merged.complexity[i]) for i in valid])
    quality = np.array([np.mean(merged.quality[i]) for i in valid])
    figures = [
        histogram({"pool": final, "selected": final[selected]}, "Final score (Σ complexity × quality)", "final score",
                  "final_score.png"),
        histogram({"complexity": complexity, "quality": quality}, "Mean per-turn scorer scores (pool)", "score (1-6)",
                  "scorer_scores.png", bins=30),
    ]
    return CardContent(
        title=f"Deita selection: {recipe.output.repo_id}",
        summary=(
            f"{len(selected)} rows selected from {len(valid)} scored rows of `{pool.ref.portable().repo_id}` with the "
            f"`{recipe.selection.strategy}` strategy (Deita: score-first, diversity-aware greedy selection; "
            f"a candidate is rejected when its cosine similarity to an already selected row is above "
            f"{recipe.selection.max_similarity})."
        ),
        license=recipe.output.license,
        tags=["deita", "data-selection", "instruction-tuning"],
        statistics=stats,
        figures=figures,
        config_descriptions=CONFIG_DESCRIPTIONS,
        citation=DEITA_CITATION,
        metadata={"task_categories": ["text-generation"]},
    )
