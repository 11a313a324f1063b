"""Win rates from pairwise preferences, computed exactly as AlpacaEval's leaderboard computes them.

A preference is 1 (baseline ``output_1`` wins), 2 (model ``output_2`` wins), anything between for a
weighted judge, and 0 or 1.5 for a draw; NaN (no annotation) and values outside [1, 2] are dropped.
With q = preference - 1: ``win_rate`` = 100 mean(q), ``standard_error`` = 100 sem(q) (ddof 1), wins are
q > 0.5, base wins q < 0.5, draws the rows at exactly 0 or 1.5 (counted before dropping), and
``discrete_win_rate`` the same win rate after rounding each preference (half to even) to 1, 1.5 or 2.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from statistics import fmean, stdev
from typing import Any, Sequence

from evaluation.inputs import EvalInputError, read_json, require
from evaluation.length_control import (
    GamedAnnotations,
    length_controlled_winrate,
    read_gamed,
    read_instruction_difficulty,
)

LEADERBOARD_COLUMNS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate")


def _head_to_head(preferences: list[float]) -> dict[str, Any]:
    """AlpacaEval's ``describe_head2head`` on preferences already read as floats (0 already a draw)."""
    n_draws = sum(p == 1.5 for p in preferences)
    q = [p - 1 for p in preferences if 1 <= p <= 2]  # NaN fails both comparisons
    return {
        "win_rate": fmean(q) * 100 if q else math.nan,
        "standard_error": stdev(q) / math.sqrt(len(q)) * 100 if len(q) > 1 else math.nan,
        "n_wins": sum(x > 0.5 for x in q),
        "n_wins_base": sum(x < 0.5 for x in q),
        "n_draws": n_draws,
        "n_total": len(q),
    }


def get_winrate(preferences: Sequence[float | int | str | None]) -> dict[str, Any]:
    """AlpacaEval's ``get_winrate``: the leaderboard's win-rate columns from one model's preferences.

    Strings are read as numbers and ``None`` as NaN, as AlpacaEval's ``astype(float)`` does.
    """
    values = [math.nan if p is None else float(p) for p in preferences]
    continuous = _head_to_head([1.5 if p == 0 else p for p in values])
    # the discrete rule: 1.5 becomes 0 (a draw), the rest is rounded half to even, then 0 means 1.5 again
    rounded = [float(round(0 if p == 1.5 else p)) if math.isfinite(p) else p for p in values]  # inf: out of range
    discrete = _head_to_head([1.5 if p == 0 else p for p in rounded])
    return {**continuous, "discrete_win_rate": discrete["win_rate"]}


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """An AlpacaEval ``annotations.json``: a JSON list of rows with ``instruction``, ``output_1``,
    ``output_2``, ``generator_1`` (baseline), ``generator_2`` (model) and ``preference`` (a number, a
    numeric string or null). Rows are checked here so a bad one is named by file, record and field."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise EvalInputError(f"{path}: expected a JSON list of annotation rows, got a {type(rows).__name__}")
    for number, row in enumerate(rows):
        where = f"{path}: record {number}"
        if not isinstance(row, dict):
            raise EvalInputError(f"{where}: expected an object, got {type(row).__name__}")
        for field in ("generator_1", "generator_2", "output_1", "output_2"):
            require(row, field, where, str)
        preference = require(row, "preference", where, (int, float, str, type(None)))
        if isinstance(preference, str):
            try:
                float(preference)
            except ValueError:
                raise EvalInputError(f"{where}: field 'preference' is not a number: {preference!r:.40}") from None
    return rows


def leaderboard(
    annotations: Sequence[dict[str, Any]],
    *,
    instruction_difficulty: dict[int, float] | None = None,
    gamed: GamedAnnotations | None = None,
    source: str = "annotations",
) -> list[dict[str, Any]]:
    """One AlpacaEval leaderboard row per model (``generator_2``), best first.

    With ``instruction_difficulty`` (index -> difficulty) or ``gamed`` (which carries its own difficulty),
    rows also get ``length_controlled_winrate`` and ``lc_standard_error``; see
    :mod:`evaluation.length_control` for what those precomputed inputs are and where they come from.
    Each model's rows must share one baseline; row i of a model is AlpacaEval instruction i.
    """
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in annotations:
        by_model.setdefault(row["generator_2"], []).append(row)
    difficulty = gamed.difficulty_by_index if gamed is not None else instruction_difficulty
    results = []
    for model, rows in by_model.items():
        baselines = sorted({row["generator_1"] for row in rows})
        if len(baselines) > 1:
            raise EvalInputError(f"{source}: generator {model!r} is compared with several baselines ({', '.join(baselines)})")
        preferences = [None if row["preference"] is None else float(row["preference"]) for row in rows]
        result: dict[str, Any] = {"generator": model, **get_winrate(preferences)}
        if difficulty is not None:
            missing = [i for i in range(len(rows)) if i not in difficulty]
            if missing:
                raise EvalInputError(f"{source}: generator {model!r} has {len(rows)} rows but no instruction "
                                     f"difficulty for index {missing[0]}")
            lc = length_controlled_winrate(
                [math.nan if p is None else p for p in preferences],
                [len(row["output_1"]) for row in rows],
                [len(row["output_2"]) for row in rows],
                [difficulty[i] for i in range(len(rows))],
                is_baseline=model == baselines[0],
                gamed=gamed,
            )
            result.update(length_controlled_winrate=lc.winrate, lc_standard_error=lc.standard_error, lc_glm=lc.glm)
        result["avg_length"] = int(fmean(len(row["output_2"]) for row in rows))
        results.append(result)
    key = "length_controlled_winrate" if difficulty is not None else "win_rate"
    return sorted(results, key=lambda r: -math.inf if math.isnan(r[key]) else -r[key])


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (too few rows) as null, since JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ["length_controlled_winrate", *LEADERBOARD_COLUMNS] if "length_controlled_winrate" in rows[0] else list(LEADERBOARD_COLUMNS)
    lines = [f"{'generator':<32} " + " ".join(f"{c:>{max(len(c), 8)}}" for c in columns)]
    for row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append(f"{row['generator']:<32} " + " ".join(f"{v:>{max(len(c), 8)}}" for v, c in zip(cells, columns)))
    return "\n".join(lines)


def cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="alignsmith eval winrate",
        description="AlpacaEval leaderboard numbers from pairwise annotations (generator_2 is the model, "
                    "generator_1 its baseline).",
    )
    parser.add_argument("--annotations", required=True, nargs="+", help="AlpacaEval annotations.json file(s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per generator, one per line")
    parser.add_argument("--instruction-difficulty", default=None,
                        help="AlpacaEval's instruction_difficulty.csv: adds the length-controlled win rate "
                             "(length_controlled_noreg GLM)")
    parser.add_argument("--gamed", default=None,
                        help="AlpacaEval's df_gamed.csv: adds the length-controlled win rate with the published "
                             "regularised GLM (length_controlled_v1); carries its own instruction difficulty")
    args = parser.parse_args(argv)
    if args.gamed and args.instruction_difficulty:
        parser.error("--gamed carries its own instruction difficulty; give one of --gamed, --instruction-difficulty")
    annotations = [row for path in args.annotations for row in read_annotations(path)]
    if not annotations:
        raise EvalInputError(f"{', '.join(args.annotations)}: no annotation rows")
    rows = leaderboard(
        annotations,
        instruction_difficulty=read_instruction_difficulty(args.instruction_difficulty) if args.instruction_difficulty else None,
        gamed=read_gamed(args.gamed) if args.gamed else None,
        source=", ".join(args.annotations),
    )
    print("\n".join(json.dumps(_jsonable(r)) for r in rows) if args.json else format_table(rows))
    return 0
