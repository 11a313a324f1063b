"""Pure table-making for the Space: Hub rows in, the DataFrames the tabs show out.

Nothing here reads the Hub or touches Gradio, so every view is unit-tested on plain rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alignsmith.lineage import Lineage

KEY_COLUMNS = ["model", "model_sha"]


def score_column(benchmark: str, metric: str) -> str:
    return f"{benchmark}/{metric}"


def leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model@sha, a ``benchmark/metric`` column per measurement; a rerun's newer value wins.

    Rows are in model order: metrics on different scales have no meaningful mean to rank by, and the
    table sorts by any column in the UI.
    """
    if results.empty:
        return pd.DataFrame(columns=KEY_COLUMNS)
    latest = (results.assign(column=[score_column(b, m) for b, m in zip(results.benchmark, results.metric)])
              .sort_values("date", kind="stable").drop_duplicates([*KEY_COLUMNS, "column"], keep="last"))
    table = latest.pivot(index=KEY_COLUMNS, columns="column", values="value")
    return table[sorted(table.columns)].reset_index().rename_axis(columns=None)


def benchmarks(table: pd.DataFrame) -> list[str]:
    """The benchmarks a leaderboard has columns for, in column order."""
    return list(dict.fromkeys(c.split("/")[0] for c in score_columns(table)))


def score_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in KEY_COLUMNS]


def widest_score(table: pd.DataFrame) -> str | None:
    """The score measured for the most model@sha rows (the first such column on a tie): the one to plot first."""
    scores = score_columns(table)
    return max(scores, key=lambda column: table[column].notna().sum()) if scores else None


def filter_leaderboard(table: pd.DataFrame, search: str = "", chosen: Sequence[str] = ()) -> pd.DataFrame:
    """Rows whose model or sha contains ``search`` (any case); only the columns of the ``chosen`` benchmarks
    (all when none are chosen)."""
    needle = search.strip().lower()
    rows = table
    if needle:
        rows = table[table.model.str.lower().str.contains(needle, regex=False)
                     | table.model_sha.str.lower().str.contains(needle, regex=False)]
    keep = [c for c in score_columns(table) if not chosen or c.split("/")[0] in chosen]
    return rows[KEY_COLUMNS + keep].reset_index(drop=True)


def plot_data(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard in long form (``model``, ``score``, ``value``, ``bar``): one bar per score and model,
    side by side under its score (stacked bars would add up scores of different scales)."""
    columns = score_columns(table)
    if table.empty or not columns:
        return pd.DataFrame({"model": [], "score": [], "value": [], "bar": []})
    labelled = table.assign(model=[f"{m}@{s[:7]}" for m, s in zip(table.model, table.model_sha)])
    long = labelled.melt(id_vars=["model"], value_vars=columns, var_name="score", value_name="value")
    long = long.dropna(subset=["value"]).sort_values(["score", "model"], kind="stable").reset_index(drop=True)
    return long.assign(bar=[f"{score} | {model}" for score, model in zip(long.score, long.model)])


def model_results(results: pd.DataFrame, model: str, sha: str) -> pd.DataFrame:
    """Every result row of ``model`` at exactly ``sha`` (not at another revision of it)."""
    columns = ["benchmark", "metric", "value", "stderr", "n", "judge", "prompt_set", "date", "run_id"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    rows = results[(results.model == model) & (results.model_sha == sha)]
    return rows[columns].sort_values(["benchmark", "metric", "date"]).reset_index(drop=True)


def card_summary(metadata: Mapping[str, Any]) -> pd.DataFrame:
    """The card fields a reader compares models by, as (field, value) rows; lineage is shown on its own."""
    keys = ["license", "base_model", "base_model_relation", "datasets", "library_name", "pipeline_tag", "tags"]
    rows = [(key, _text(metadata[key])) for key in keys if metadata.get(key) not in (None, [], "")]
    rows += [(f"training_metrics.{k}", _text(v)) for k, v in (metadata.get("training_metrics") or {}).items()]
    return pd.DataFrame(rows, columns=["field", "value"])


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


LINEAGE_COLUMNS = ["artifact", "made_by", "role", "repo_id", "repo_type", "revision", "sha"]


def lineage_table(artifact: str, lineage: Lineage, upstream: Mapping[str, tuple[Lineage, str]]) -> pd.DataFrame:
    """What ``artifact`` was made from, and one level up: what made each input dataset it names.

    ``upstream`` maps an input's ``repo_id@sha`` to that dataset's own lineage (and sha), for those
    that have one; a model is thus traced to the dataset@sha it trained on and to the selection or
    rewrite command (with its pinned inputs and models) that produced that dataset.
    """
    rows = [_ref_row(artifact, lineage.command, ref) for ref in [*lineage.inputs, *lineage.models]]
    for ref in lineage.inputs:
        found = upstream.get(f"{ref.repo_id}@{ref.sha}")
        if found is not None:
            parent, sha = found
            rows += [_ref_row(f"{ref.repo_id}@{sha[:12]}", parent.command, r) for r in [*parent.inputs, *parent.models]]
    return pd.DataFrame(rows, columns=LINEAGE_COLUMNS)


def _ref_row(artifact: str, command: str, ref: Any) -> list[Any]:
    return [artifact, command, ref.role, ref.repo_id, ref.repo_type, ref.revision, ref.sha]


def histogram(values: Mapping[str, Iterable[float]], bins: int = 20) -> pd.DataFrame:
    """Counts per bin (labelled by its centre) of each named series, on one shared range, in long form."""
    series = {name: np.asarray([v for v in vs if v is not None and np.isfinite(v)], float) for name, vs in values.items()}
    present = [v for v in series.values() if v.size]
    if not present:
        return pd.DataFrame({"bin": [], "count": [], "series": []})
    low, high = min(v.min() for v in present), max(v.max() for v in present)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    centres = np.round((edges[:-1] + edges[1:]) / 2, 4)
    frames = [pd.DataFrame({"bin": centres, "count": np.histogram(v, edges)[0], "series": name})
              for name, v in series.items()]
    return pd.concat(frames, ignore_index=True)


def deita_scores(scored: pd.DataFrame) -> pd.DataFrame:
    """Distributions of the final score and of every turn's complexity and quality score."""
    return histogram({
        "final_score": scored.final_score,
        "complexity (per turn)": [s for row in scored.complexity_scores for s in row],
        "quality (per turn)": [s for row in scored.quality_scores for s in row],
    })


def decision_counts(scored: pd.DataFrame) -> pd.DataFrame:
    """How many scored rows each selection decision got (selected, too_similar, not_scanned...)."""
    counts = scored.selection_decision.value_counts()
    return pd.DataFrame({"decision": counts.index.astype(str), "rows": counts.to_numpy()})


def first_user_message(messages: Any) -> str:
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def deita_selected(selected: pd.DataFrame) -> pd.DataFrame:
    """The selected rows in rank order, with their scores and the similarity to the nearest row chosen before."""
    return pd.DataFrame({
        "rank": selected["rank"], "id": selected.id,
        "prompt": [first_user_message(m) for m in selected.messages],
        "final_score": selected.final_score,
        "complexity_scores": [_scores(s) for s in selected.complexity_scores],
        "quality_scores": [_scores(s) for s in selected.quality_scores],
        "nearest_selected_similarity": selected.nearest_selected_similarity,
    }).sort_values("rank").reset_index(drop=True)


def _scores(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


REJECTED_COLUMNS = ["row_index", "id", "stage", "source", "field", "code", "reason", "score"]


def rejected_rows(rejected: pd.DataFrame) -> pd.DataFrame:
    """A ``rejected`` config with why each row went: its stage and reason (and source and score for PF)."""
    return rejected[[c for c in REJECTED_COLUMNS if c in rejected.columns]].reset_index(drop=True)


PF_SCORES = ["rouge_score", "reward", "nli_similarity", "sts_similarity", "paragraph_clip_scores"]


def pf_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One PF source config: instruction, raw ``original``, rewritten ``output`` and every filter score."""
    table = rows[["id", "input", "original", "output"]].copy()
    for name in PF_SCORES:
        if name in rows.columns:
            table[name] = [_score_text(v) for v in rows[name]]
    if "filtered_paragraphs" in rows.columns:
        table["filtered_paragraphs"] = [len(v) if v is not None else 0 for v in rows.filtered_paragraphs]
    return table.reset_index(drop=True)


def _score_text(value: Any) -> str:
    """A filter score as shown: a number, a list of numbers, or empty where this filter did not run."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return _scores(value)
    return f"{value:.4f}"


def paired_answers(a: pd.DataFrame, b: pd.DataFrame, judgments: pd.DataFrame) -> pd.DataFrame:
    """Two models' saved answers to the same questions, turn by turn, with each one's judge score if graded."""
    keys = ["question_id", "turn"]
    left = a[[*keys, "category", "messages", "answer", "model", "model_sha"]]
    right = b[[*keys, "answer", "model", "model_sha"]]
    both = left.merge(right, on=keys, suffixes=("_a", "_b"))
    both["question"] = [_last_user(m) for m in both.messages]
    for side in ("a", "b"):
        both[f"score_{side}"] = _scores_of(both, judgments, side)
    columns = [*keys, "category", "question", "answer_a", "score_a", "answer_b", "score_b"]
    return both[columns].sort_values(keys).reset_index(drop=True)


def category_scores(judgments: pd.DataFrame) -> pd.DataFrame:
    """MT-Bench's per-category view: each model@sha's mean judge score over the readable judgments of each category
    (FastChat's show_result averages the same way), with how many judgments each mean rests on."""
    columns = ["model", "category", "score", "n", "bar"]
    needed = {"model", "model_sha", "category", "score"}
    if judgments.empty or not needed <= set(judgments.columns):
        return pd.DataFrame(columns=columns)
    readable = judgments[judgments.score.notna() & (judgments.score >= 0)]
    if "parse_ok" in readable.columns:
        readable = readable[readable.parse_ok.astype(bool)]
    if readable.empty:
        return pd.DataFrame(columns=columns)
    labelled = readable.assign(model=[f"{m}@{s[:7]}" for m, s in zip(readable.model, readable.model_sha)])
    grouped = labelled.groupby(["model", "category"], sort=True).score.agg(["mean", "size"]).reset_index()
    grouped.columns = ["model", "category", "score", "n"]
    grouped = grouped.sort_values(["category", "model"], kind="stable").reset_index(drop=True)
    return grouped.assign(bar=[f"{c} | {m}" for c, m in zip(grouped.category, grouped.model)])


def _last_user(messages: Any) -> str:
    return [m["content"] for m in messages if m["role"] == "user"][-1]


def _scores_of(both: pd.DataFrame, judgments: pd.DataFrame, side: str) -> list[float | None]:
    if judgments.empty or "score" not in judgments.columns:
        return [None] * len(both)
    score = {(r.model, r.model_sha, r.question_id, r.turn): r.score for r in judgments.itertuples()}
    return [score.get((m, s, q, t)) for m, s, q, t in zip(both[f"model_{side}"], both[f"model_sha_{side}"],
                                                           both.question_id, both.turn)]


TRAINING_COLUMNS = ["model", "model_sha", "training_dataset", "strategy", "selected_rows", "training_rows"]
UNKNOWN = "unknown"


def card_statistics(text: str) -> dict[str, str]:
    """The ``## Statistics`` table of an alignsmith card's body (``| key | value |`` rows), as strings."""
    stats: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Statistics"
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if inside and line.startswith("|") else []
        if len(cells) == 2 and cells[0] and not set(cells[0]) <= {"-"}:
            stats[cells[0]] = cells[1]
    return stats


def _count(value: Any) -> float:
    try:
        return float(str(value).replace(",", ""))
    except (TypeError, ValueError):
        return float("nan")


def trained_on(lineage: Lineage | None, model_stats: Mapping[str, str],
               datasets: Mapping[str, tuple[Lineage | None, str, Mapping[str, str]]]) -> dict[str, Any]:
    """What one model trained on: its lineage's dataset inputs (``repo@sha``, shortened), the selection strategy
    each records (``selection.strategy`` of its recipe; the making command where it has none), how many rows
    those datasets selected, and the card's ``training rows`` (after any evaluation split).

    ``datasets`` maps an input's ``repo_id@sha`` to that dataset's (lineage or None, sha, card statistics).
    """
    inputs = [r for r in (lineage.inputs if lineage else []) if r.repo_type == "dataset"]
    names, strategies, selected = [], [], []
    for ref in inputs:
        parent, sha, stats = datasets.get(f"{ref.repo_id}@{ref.sha}", (None, ref.sha or "", {}))
        names.append(f"{ref.repo_id}@{(sha or ref.revision or '')[:12]}")
        selection = (parent.recipe.get("selection") or {}) if parent is not None else {}
        strategies.append(selection.get("strategy") or (f"({parent.command})" if parent is not None else UNKNOWN))
        selected.append(_count(stats.get("selected")))
    return {
        "training_dataset": ", ".join(dict.fromkeys(names)),
        "strategy": " + ".join(dict.fromkeys(strategies)) or UNKNOWN,
        "selected_rows": float(sum(selected)) if selected else float("nan"),
        "training_rows": _count(model_stats.get("training rows")),
    }


def training_table(board: pd.DataFrame, trained: Mapping[tuple[str, str], Mapping[str, Any]]) -> pd.DataFrame:
    """The leaderboard with what each model@sha trained on: dataset, strategy, selected and training rows, then
    every score. ``trained`` maps (model, sha) to :func:`trained_on`'s dict; a model it lacks is ``unknown``."""
    blank = {"training_dataset": "", "strategy": UNKNOWN, "selected_rows": float("nan"), "training_rows": float("nan")}
    scores = score_columns(board)
    rows = [{"model": m, "model_sha": s, **blank, **trained.get((m, s), {})} for m, s in zip(board.model, board.model_sha)]
    info = pd.DataFrame(rows, columns=TRAINING_COLUMNS)
    return pd.concat([info, board[scores].reset_index(drop=True)], axis=1)


def training_plot(table: pd.DataFrame, score: str | None) -> pd.DataFrame:
    """One point per model@sha with both a ``score`` value and a training-row count: (model, strategy,
    training_rows, value), for a scatter of score against training-set size coloured by strategy."""
    columns = ["model", "strategy", "training_rows", "value"]
    if table.empty or not score or score not in table.columns:
        return pd.DataFrame({c: [] for c in columns})
    points = table.assign(model=[f"{m}@{s[:7]}" for m, s in zip(table.model, table.model_sha)], value=table[score])
    points = points.dropna(subset=["training_rows", "value"])
    return points[columns].astype({"training_rows": float, "value": float}).reset_index(drop=True)
