"""Data-selection strategies behind one call shape, so a recipe can swap Deita for a baseline.

Every strategy is built by name with its options (:func:`make_strategy`) and then called as
``strategy.select(table, budget=..., seed=..., embeddings=...)``. ``table`` maps column names to
one value per pool row (a dict of lists or arrays, or a ``datasets.Dataset``); an ``id`` column,
when present, names rows in error messages. Strategies only rank by columns they are given:
perplexity and IFD values are computed elsewhere.

Rows a strategy cannot rank (a missing or NaN value) and rows outside its allowed range (IFD ≥ 1
with ``below_one``) are excluded and listed in the result, never dropped silently.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Protocol

import numpy as np

from builders.deita.selection import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAX_SIMILARITY,
    DeitaSelection,
    InvalidEmbeddingPolicy,
    SelectionInputError,
    TieOrder,
    check_budget,
    check_diversity_options,
    check_score_combination,
    check_tie_order,
    combine_scores,
    numeric_column,
    score_order,
    select_diverse,
)

PER_TURN_COLUMNS = ("complexity_scores", "quality_scores")
FINAL_SCORE_COLUMN = "final_score"
ID_COLUMN = "id"


@dataclass(frozen=True)
class StrategyResult:
    strategy: str
    selected: np.ndarray
    """int64 pool rows, in selection order (best first)."""
    pool_size: int
    budget: int | None
    missing_rows: np.ndarray
    """Pool rows excluded because their ranking value is missing (None or NaN)."""
    filtered_rows: np.ndarray
    """Pool rows excluded because their value is outside the strategy's allowed range."""
    deita: DeitaSelection | None = None
    """Per-candidate decisions, for the ``deita`` strategy."""

    @property
    def shortfall(self) -> int:
        """How many rows short of the budget the selection is (the eligible pool ran out)."""
        return 0 if self.budget is None else self.budget - len(self.selected)


class SelectionStrategy(Protocol):
    name: str

    def select(
        self, table: Any, *, budget: int | None, seed: int = 0, embeddings: Any | None = None
    ) -> StrategyResult: ...


_NO_ROWS = np.zeros(0, np.int64)


def _column_names(table: Any) -> list[str]:
    names = getattr(table, "column_names", None)
    return list(names if names is not None else table.keys())


def _pool_size(table: Any) -> int:
    if hasattr(table, "num_rows"):
        return int(table.num_rows)
    lengths = {name: len(table[name]) for name in _column_names(table)}
    if not lengths:
        raise SelectionInputError("the selection table has no columns, so the pool size is unknown")
    if len(set(lengths.values())) > 1:
        raise SelectionInputError(f"selection table columns differ in length: {lengths}")
    return next(iter(lengths.values()))


def _require(table: Any, strategy: str, *columns: str) -> None:
    missing = [c for c in columns if c not in _column_names(table)]
    if missing:
        raise SelectionInputError(
            f"strategy {strategy!r} needs column(s) {missing}; the table has {_column_names(table)}"
        )


def _checked_ids(table: Any, budget: int | None) -> list[Any] | None:
    """Validates the call (budget, equal column lengths) and returns the row ids for error messages."""
    check_budget(budget)
    _pool_size(table)
    return list(table[ID_COLUMN]) if ID_COLUMN in _column_names(table) else None


def _take(order: np.ndarray, budget: int | None) -> np.ndarray:
    return order if budget is None else order[:budget]


@dataclass(frozen=True)
class _ScoreRanked:
    """Ranks by the Deita final score: combined from per-turn columns, else a ready ``final_score``.

    Per-turn columns win when both are present, so a non-default ``score`` is never silently
    ignored in favour of a column computed another way.
    """

    score: str = "sum_product"
    tie_order: TieOrder = "stable"

    def __post_init__(self) -> None:
        check_score_combination(self.score)
        check_tie_order(self.tie_order)

    def final_scores(self, table: Any, strategy: str, ids: list[Any] | None) -> np.ndarray:
        names = _column_names(table)
        if all(c in names for c in PER_TURN_COLUMNS):
            return combine_scores(*(table[c] for c in PER_TURN_COLUMNS), method=self.score, ids=ids)
        if FINAL_SCORE_COLUMN in names and self.score == "sum_product":
            return numeric_column(table[FINAL_SCORE_COLUMN], FINAL_SCORE_COLUMN, ids)
        needed = "" if self.score != "sum_product" else f" (or {FINAL_SCORE_COLUMN!r})"
        raise SelectionInputError(
            f"strategy {strategy!r} with score {self.score!r} needs columns {list(PER_TURN_COLUMNS)}{needed}; "
            f"the table has {names}"
        )


@dataclass(frozen=True)
class DeitaStrategy(_ScoreRanked):
    """Best final score first, skipping rows too similar to those already selected."""

    max_similarity: float = DEFAULT_MAX_SIMILARITY
    invalid_embeddings: InvalidEmbeddingPolicy = "accept"
    block_size: int = DEFAULT_BLOCK_SIZE
    name: ClassVar[str] = "deita"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_diversity_options(self.max_similarity, self.invalid_embeddings, self.block_size)

    def select(
        self, table: Any, *, budget: int | None, seed: int = 0, embeddings: Any | None = None
    ) -> StrategyResult:
        ids = _checked_ids(table, budget)
        if embeddings is None:
            raise SelectionInputError(f"strategy {self.name!r} needs embeddings for its diversity filter")
        result = select_diverse(
            self.final_scores(table, self.name, ids),
            embeddings,
            budget=budget,
            max_similarity=self.max_similarity,
            tie_order=self.tie_order,
            invalid_embeddings=self.invalid_embeddings,
            block_size=self.block_size,
            ids=ids,
        )
        return StrategyResult(
            self.name, result.selected, result.pool_size, budget, result.nan_score_rows, _NO_ROWS, deita=result
        )


@dataclass(frozen=True)
class TopKStrategy(_ScoreRanked):
    """Best final score first, without the diversity filter (the paper's score-only baseline)."""

    name: ClassVar[str] = "topk"

    def select(
        self, table: Any, *, budget: int | None, seed: int = 0, embeddings: Any | None = None
    ) -> StrategyResult:
        scores = self.final_scores(table, self.name, _checked_ids(table, budget))
        order, nan_rows = score_order(scores, self.tie_order)
        return StrategyResult(self.name, _take(order, budget), len(scores), budget, nan_rows, _NO_ROWS)


@dataclass(frozen=True)
class RandomStrategy:
    """A seeded uniform sample, in random order (the paper's random baseline)."""

    name: ClassVar[str] = "random"

    def select(
        self, table: Any, *, budget: int | None, seed: int = 0, embeddings: Any | None = None
    ) -> StrategyResult:
        check_budget(budget)
        pool = _pool_size(table)
        order = np.random.default_rng(seed).permutation(pool).astype(np.int64)
        return StrategyResult(self.name, _take(order, budget), pool, budget, _NO_ROWS, _NO_ROWS)


@dataclass(frozen=True)
class RankByColumn:
    """Rows ranked by one numeric column (ties keep pool order)."""

    name: str
    column: str
    descending: bool = True
    below: float | None = None
    """Keep only rows whose value is strictly below this."""

    def __post_init__(self) -> None:
        if not isinstance(self.descending, bool):
            raise SelectionInputError(
                f"strategy {self.name!r}: descending must be true or false, got {self.descending!r}"
            )
        if self.below is not None and not isinstance(self.below, (int, float)):
            raise SelectionInputError(f"strategy {self.name!r}: below must be a number, got {self.below!r}")

    def select(
        self, table: Any, *, budget: int | None, seed: int = 0, embeddings: Any | None = None
    ) -> StrategyResult:
        ids = _checked_ids(table, budget)
        _require(table, self.name, self.column)
        values = numeric_column(table[self.column], self.column, ids)
        missing = np.isnan(values)
        filtered = ~missing & (values >= self.below) if self.below is not None else np.zeros(len(values), bool)
        eligible = np.flatnonzero(~missing & ~filtered)
        key = -values[eligible] if self.descending else values[eligible]
        order = eligible[np.argsort(key, kind="stable")]
        return StrategyResult(
            self.name, _take(order, budget), len(values), budget, np.flatnonzero(missing), np.flatnonzero(filtered)
        )


def _ifd(*, descending: bool = True, below_one: bool = False) -> RankByColumn:
    """IFD ranking; ``below_one`` drops rows whose response does not help (IFD ≥ 1), as the IFD paper does."""
    return RankByColumn("ifd", "ifd", descending=descending, below=1.0 if below_one else None)


STRATEGIES: dict[str, Callable[..., SelectionStrategy]] = {
    "deita": DeitaStrategy,
    "topk": TopKStrategy,
    "random": RandomStrategy,
    "instruction_length": partial(RankByColumn, "instruction_length", "instruction_length"),
    "response_length": partial(RankByColumn, "response_length", "response_length"),
    "perplexity": partial(RankByColumn, "perplexity", "perplexity"),
    "ifd": _ifd,
}


def strategy_options(name: str) -> list[str]:
    """Options :func:`make_strategy` accepts for ``name``."""
    if name not in STRATEGIES:
        raise SelectionInputError(f"unknown selection strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return list(inspect.signature(STRATEGIES[name]).parameters)


def make_strategy(name: str, **options: Any) -> SelectionStrategy:
    """The strategy called ``name``, configured with ``options`` (see :func:`strategy_options`)."""
    accepted = strategy_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SelectionInputError(f"strategy {name!r} does not take option(s) {unknown}; it takes {accepted}")
    return STRATEGIES[name](**options)


def select(
    name: str,
    table: Any,
    *,
    budget: int | None,
    seed: int = 0,
    embeddings: Any | None = None,
    **options: Any,
) -> StrategyResult:
    """Build strategy ``name`` with ``options`` and run it on ``table``."""
    return make_strategy(name, **options).select(table, budget=budget, seed=seed, embeddings=embeddings)
