"""Deita's score-first, diversity-aware greedy selection, computed blockwise.

Semantics follow the reference implementation (hkust-nlp/deita, ``Combined_Filter`` with its
default ``batch_size=1``):

* ``final_score`` combines per-turn complexity and quality scores (default: the sum over turns of
  their product), and candidates are walked in descending score order.
* A candidate is rejected iff its cosine *similarity* to any already-selected row is strictly
  greater than ``max_similarity`` (a similarity exactly equal to it is kept). Similarities are
  float32 and compared with the threshold rounded to float32, as torch does in the reference.
* The walk stops once ``budget`` rows are selected, or when the pool runs out (fewer rows are then
  returned and :attr:`DeitaSelection.shortfall` says how many are missing).

The output is row-for-row that of the sequential definition, but candidates are processed in
blocks: one matrix product per block against the selected set, then a short sequential pass that
resolves conflicts inside the block against *accepted* block members only. (The reference's own
``batch_size > 1`` also compares against rejected block members and so selects different rows.)

Where alignsmith deliberately differs from the reference:

* Rows with a NaN final score are excluded and reported (:attr:`DeitaSelection.nan_score_rows`);
  the reference sorts them last and may still select them.
* Ties are broken in pool order by default; ``tie_order="reference"`` reproduces pandas' unstable
  quicksort order on the same numpy build for bit-for-bit comparisons.
* ``budget=0`` selects nothing. (The reference seeds its selected list with the top row before
  checking the budget, then truncates the output to ``data_size`` rows, so it also returns nothing.)
* Zero-norm or non-finite embeddings give NaN similarities in the reference, which compare False:
  such rows are always accepted and never cause a rejection. ``invalid_embeddings="accept"``
  reproduces that; ``"reject"`` keeps them out. Either way they are counted.

Embeddings are read one block at a time (any array-like that supports row indexing, e.g. a
float16 ``np.memmap``) and normalised in float32, so the pool is never copied whole; the selected
set is a single ``[budget, d]`` float32 buffer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import numpy as np

from alignsmith.errors import AlignsmithError

TieOrder = Literal["stable", "reference"]
InvalidEmbeddingPolicy = Literal["accept", "reject"]

TIE_ORDERS: tuple[str, ...] = ("stable", "reference")
INVALID_EMBEDDING_POLICIES: tuple[str, ...] = ("accept", "reject")
DEFAULT_MAX_SIMILARITY = 0.9
DEFAULT_BLOCK_SIZE = 1024

# Upper bound on the candidate x selected similarity matrix of one block (elements), so that an
# unbudgeted selection over a large pool keeps memory flat.
_SIMILARITY_CHUNK_ELEMENTS = 1 << 24


class SelectionInputError(AlignsmithError):
    """Selection input that cannot be used as given (names the row and field at fault)."""


class Decision(IntEnum):
    """What happened to a candidate during the greedy scan."""

    SELECTED = 0
    TOO_SIMILAR = 1
    INVALID_EMBEDDING = 2


# ---------------------------------------------------------------------------------------------
# Input validation shared with the selection strategies
# ---------------------------------------------------------------------------------------------


def row_label(ids: Sequence[Any] | None, row: int) -> str:
    """How error messages name a row: its id when the pool has one, else its position."""
    return f"row {row}" if ids is None else f"row {row} (id {ids[row]!r})"


def _as_float(value: Any, field: str, ids: Sequence[Any] | None, row: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, numbers.Real):
        return float(value)
    raise SelectionInputError(f"{row_label(ids, row)}: {field} must be a number, got {value!r}")


def numeric_column(values: Iterable[Any], field: str, ids: Sequence[Any] | None = None) -> np.ndarray:
    """One float64 value per row; ``None`` becomes NaN (a missing value), anything else non-numeric is an error."""
    items = values if isinstance(values, np.ndarray) else list(values)
    try:
        array = np.asarray(items)
    except ValueError:  # ragged nested lists: checked item by item below
        array = None
    if array is not None and array.dtype.kind in "biuf":
        if array.ndim != 1:
            raise SelectionInputError(f"{field} must hold one number per row, got an array of shape {array.shape}")
        return array.astype(np.float64, copy=False)
    return np.fromiter((_as_float(v, field, ids, i) for i, v in enumerate(items)), np.float64, len(items))


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _budget_problem(budget: Any) -> str | None:
    if budget is not None and (not _is_integer(budget) or budget < 0):
        return f"must be a non-negative integer or None (no budget), got {budget!r}"
    return None


def _max_similarity_problem(max_similarity: Any) -> str | None:
    # a cosine similarity lies in [-1, 1]: a threshold above 1 rejects nothing and below -1 everything
    if not isinstance(max_similarity, numbers.Real) or not -1 <= max_similarity <= 1:  # NaN compares False
        return f"must be a finite cosine similarity, between -1 and 1, got {max_similarity!r}"
    return None


def _block_size_problem(block_size: Any) -> str | None:
    if not _is_integer(block_size) or block_size < 1:
        return f"must be a positive integer, got {block_size!r}"
    return None


OPTION_PROBLEMS: dict[str, Callable[[Any], str | None]] = {
    "budget": _budget_problem,
    "max_similarity": _max_similarity_problem,
    "block_size": _block_size_problem,
}
"""Why a value of each numeric option cannot be used (None when it can); the Deita recipe checks its
values with these when it loads, so a bad one fails before any model does."""


def _check_option(name: str, value: Any) -> None:
    problem = OPTION_PROBLEMS[name](value)
    if problem is not None:
        raise SelectionInputError(f"{name} {problem}")


def check_budget(budget: int | None) -> None:
    _check_option("budget", budget)


def check_tie_order(tie_order: str) -> None:
    if tie_order not in TIE_ORDERS:
        raise SelectionInputError(f"tie_order must be one of {TIE_ORDERS}, got {tie_order!r}")


def check_diversity_options(max_similarity: float, invalid_embeddings: str, block_size: int) -> None:
    _check_option("max_similarity", max_similarity)
    if invalid_embeddings not in INVALID_EMBEDDING_POLICIES:
        raise SelectionInputError(
            f"invalid_embeddings must be one of {INVALID_EMBEDDING_POLICIES}, got {invalid_embeddings!r}"
        )
    _check_option("block_size", block_size)


# ---------------------------------------------------------------------------------------------
# Final score: per-turn scores combined into one number per row
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolTurnScores:
    """Per-turn scores of a pool, flattened; row ``r`` owns ``[starts[r], starts[r] + lengths[r])``."""

    complexity: np.ndarray
    quality: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    def per_row(self, values: np.ndarray, reduce: Callable[..., np.ndarray]) -> np.ndarray:
        """Reduce flat per-turn ``values`` row by row.

        Rows are grouped by turn count and reduced along a contiguous axis, which rounds exactly
        like numpy's 1-D ``sum``/``mean`` on each row (the reference's ``x.sum()``), so scores and
        therefore tie orders match it bit for bit. ``np.add.reduceat`` does not.
        """
        out = np.empty(len(self.lengths), np.float64)
        for length in np.unique(self.lengths):
            rows = np.flatnonzero(self.lengths == length)
            out[rows] = reduce(values[self.starts[rows, None] + np.arange(length)], axis=1)
        return out


def _sum_product(turns: PoolTurnScores) -> np.ndarray:
    """Σ_t complexity_t × quality_t: the reference; favours long conversations."""
    return turns.per_row(turns.complexity * turns.quality, np.sum)


def _mean_product(turns: PoolTurnScores) -> np.ndarray:
    """Mean over turns of complexity × quality: no bias towards conversation length."""
    return turns.per_row(turns.complexity * turns.quality, np.mean)


def _complexity(turns: PoolTurnScores) -> np.ndarray:
    """Summed complexity alone (the paper's complexity-only ablation)."""
    return turns.per_row(turns.complexity, np.sum)


def _quality(turns: PoolTurnScores) -> np.ndarray:
    """Summed quality alone (the paper's quality-only ablation)."""
    return turns.per_row(turns.quality, np.sum)


def _first_turn_product(turns: PoolTurnScores) -> np.ndarray:
    """complexity × quality of the first turn only, as single-turn Deita ports score."""
    return turns.complexity[turns.starts] * turns.quality[turns.starts]


SCORE_COMBINATIONS: dict[str, Callable[[PoolTurnScores], np.ndarray]] = {
    "sum_product": _sum_product,
    "mean_product": _mean_product,
    "complexity": _complexity,
    "quality": _quality,
    "first_turn_product": _first_turn_product,
}


def check_score_combination(method: str) -> None:
    if method not in SCORE_COMBINATIONS:
        raise SelectionInputError(f"unknown score combination {method!r}; choose one of {sorted(SCORE_COMBINATIONS)}")


def _flatten_turns(rows: Sequence[Any], field: str, ids: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.empty(len(rows), np.int64)
    flat: list[float] = []
    for r, turns in enumerate(rows):
        if turns is None or isinstance(turns, (str, bytes, numbers.Number)) or not isinstance(turns, Iterable):
            raise SelectionInputError(f"{row_label(ids, r)}: {field} must be a list of per-turn scores, got {turns!r}")
        before = len(flat)
        flat.extend(_as_float(v, field, ids, r) for v in turns)
        lengths[r] = len(flat) - before
        if lengths[r] == 0:
            raise SelectionInputError(f"{row_label(ids, r)}: {field} is empty (no scored turns)")
    return np.asarray(flat, np.float64), lengths


def combine_scores(
    complexity_scores: Sequence[Sequence[float]],
    quality_scores: Sequence[Sequence[float]],
    *,
    method: str = "sum_product",
    ids: Sequence[Any] | None = None,
) -> np.ndarray:
    """One final score per row from per-turn score lists (rows may differ in turn count).

    A ``None`` turn score is a missing score: it makes the row's final score NaN, and the
    selection then excludes and reports that row.
    """
    check_score_combination(method)
    if len(complexity_scores) != len(quality_scores):
        raise SelectionInputError(
            f"complexity_scores has {len(complexity_scores)} rows but quality_scores has {len(quality_scores)}"
        )
    if ids is not None and len(ids) != len(complexity_scores):
        raise SelectionInputError(f"ids has {len(ids)} rows but the scores have {len(complexity_scores)}")
    complexity, c_lengths = _flatten_turns(complexity_scores, "complexity_scores", ids)
    quality, q_lengths = _flatten_turns(quality_scores, "quality_scores", ids)
    mismatched = np.flatnonzero(c_lengths != q_lengths)
    if len(mismatched):
        r = int(mismatched[0])
        raise SelectionInputError(
            f"{row_label(ids, r)}: complexity_scores has {c_lengths[r]} turns but quality_scores has {q_lengths[r]}"
            + (f" ({len(mismatched) - 1} more rows mismatch)" if len(mismatched) > 1 else "")
        )
    starts = np.zeros(len(c_lengths), np.int64)
    np.cumsum(c_lengths[:-1], out=starts[1:])
    return SCORE_COMBINATIONS[method](PoolTurnScores(complexity, quality, starts, c_lengths))


# ---------------------------------------------------------------------------------------------
# Score order
# ---------------------------------------------------------------------------------------------


def score_order(final_scores: np.ndarray, tie_order: TieOrder = "stable") -> tuple[np.ndarray, np.ndarray]:
    """Rows in descending score order, and the NaN-score rows left out of it.

    ``"reference"`` is pandas' ``sort_values(ascending=False)``: NaNs set aside, the rest reversed,
    numpy quicksort (not stable; its tie order depends on the numpy build and CPU), reversed back.
    """
    check_tie_order(tie_order)
    scores = np.asarray(final_scores, np.float64)
    nan_mask = np.isnan(scores)
    rows = np.flatnonzero(~nan_mask)
    values = scores[rows]
    if tie_order == "stable":
        ranked = rows[np.argsort(-values, kind="stable")]
    else:
        ranked = rows[::-1][values[::-1].argsort(kind="quicksort")][::-1]
    return ranked, np.flatnonzero(nan_mask)


# ---------------------------------------------------------------------------------------------
# Greedy diversity filter
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionCounts:
    pool: int
    nan_scores: int
    scanned: int
    selected: int
    rejected_too_similar: int
    invalid_embeddings: int


@dataclass(frozen=True)
class DeitaSelection:
    """Outcome of :func:`select_diverse`, with enough per-row detail to explain every decision.

    Arrays indexed by scan position cover the rows that were examined, in descending score order
    (a prefix of the score order: the scan stops at the budget). Rows never examined are neither
    selected nor rejected.
    """

    scanned: np.ndarray
    """int64 pool rows, in the order examined."""
    decisions: np.ndarray
    """int8 :class:`Decision` per scanned row."""
    nearest_similarity: np.ndarray
    """float32 per scanned row: cosine similarity to its nearest row among those selected before
    it (NaN when none was selected before it, or its embedding is invalid)."""
    nearest_row: np.ndarray
    """int64 per scanned row: the pool row of that nearest selected row (-1 when none)."""
    invalid_embedding: np.ndarray
    """bool per scanned row: zero-norm or non-finite embedding."""
    nan_score_rows: np.ndarray
    """int64 pool rows excluded because their final score is NaN."""
    pool_size: int
    budget: int | None
    max_similarity: float

    @property
    def selected(self) -> np.ndarray:
        """Selected pool rows, in selection order."""
        return self.scanned[self.decisions == Decision.SELECTED]

    @property
    def selected_rank(self) -> np.ndarray:
        """Score rank (0 = best) of each selected row."""
        return np.flatnonzero(self.decisions == Decision.SELECTED)

    @property
    def selected_nearest_similarity(self) -> np.ndarray:
        """For each selected row, its similarity to the nearest row selected before it."""
        return self.nearest_similarity[self.decisions == Decision.SELECTED]

    @property
    def counts(self) -> SelectionCounts:
        return SelectionCounts(
            pool=self.pool_size,
            nan_scores=len(self.nan_score_rows),
            scanned=len(self.scanned),
            selected=int(np.count_nonzero(self.decisions == Decision.SELECTED)),
            rejected_too_similar=int(np.count_nonzero(self.decisions == Decision.TOO_SIMILAR)),
            invalid_embeddings=int(np.count_nonzero(self.invalid_embedding)),
        )

    @property
    def shortfall(self) -> int:
        """How many rows short of the budget the selection is (the pool ran out)."""
        return 0 if self.budget is None else self.budget - len(self.selected)

    def row_report(self) -> dict[str, np.ndarray]:
        """Pool-length columns saying what happened to each row and why, for a scored dataset."""
        decision = np.full(self.pool_size, "not_scanned", dtype=object)
        decision[self.nan_score_rows] = "nan_score"
        decision[self.scanned] = np.array([d.name.lower() for d in Decision], dtype=object)[self.decisions]
        rank = np.full(self.pool_size, -1, np.int64)
        rank[self.selected] = np.arange(len(self.selected))
        similarity = np.full(self.pool_size, np.nan, np.float32)
        similarity[self.scanned] = self.nearest_similarity
        nearest = np.full(self.pool_size, -1, np.int64)
        nearest[self.scanned] = self.nearest_row
        invalid = np.zeros(self.pool_size, bool)
        invalid[self.scanned] = self.invalid_embedding
        return {
            "selection_decision": decision.astype(str),
            "selection_order": rank,
            "nearest_selected_similarity": similarity,
            "nearest_selected_row": nearest,
            "invalid_embedding": invalid,
        }


class _SelectedSet:
    """Normalised embeddings of the selected rows that take part in similarity checks."""

    def __init__(self, capacity: int, dim: int) -> None:
        self.vectors = np.empty((capacity, dim), np.float32)
        self.rows = np.empty(capacity, np.int64)
        self.size = 0

    def add(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        end = self.size + len(rows)
        if end > len(self.rows):  # only without a budget: grow geometrically
            capacity = max(end, 2 * len(self.rows))
            grown = np.empty((capacity, self.vectors.shape[1]), np.float32)
            grown[: self.size] = self.vectors[: self.size]
            self.vectors = grown
            self.rows = np.resize(self.rows, capacity)
        self.vectors[self.size : end] = vectors
        self.rows[self.size : end] = rows
        self.size = end

    def nearest(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per block row: highest similarity to the set (-inf if empty) and the pool row holding it."""
        best = np.full(len(block), -np.inf, np.float32)
        best_row = np.full(len(block), -1, np.int64)
        chunk = max(1, _SIMILARITY_CHUNK_ELEMENTS // max(1, len(block)))
        for start in range(0, self.size, chunk):
            sims = block @ self.vectors[start : min(start + chunk, self.size)].T
            arg = sims.argmax(axis=1)
            top = sims[np.arange(len(block)), arg]
            better = top > best
            best[better] = top[better]
            best_row[better] = self.rows[start + arg[better]]
        return best, best_row


def _normalised_block(embeddings: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows for ``rows`` (zero rows where invalid) and the validity mask.

    Rows are read in increasing order, which is what memory maps and HDF5 datasets like best.
    """
    by_position = np.argsort(rows, kind="stable")
    block = np.empty((len(rows), embeddings.shape[1]), np.float32)
    block[by_position] = np.asarray(embeddings[rows[by_position]])
    norms = np.linalg.norm(block, axis=1)
    valid = np.isfinite(norms) & (norms > 0)
    np.divide(block, norms[:, None], out=block, where=valid[:, None])
    block[~valid] = 0.0
    return block, valid


def _resolve_block(
    inblock: np.ndarray,
    valid: np.ndarray,
    too_similar_before: np.ndarray,
    threshold: np.float32,
    accept_invalid: bool,
    room: int,
) -> tuple[np.ndarray, int]:
    """Sequential accept/reject inside one block; returns the accepted mask and how many rows were examined.

    A row conflicts only with *accepted* earlier rows of the block, which is what makes the blocked
    scan equal to the one-candidate-at-a-time definition.
    """
    candidates = valid & ~too_similar_before
    conflicts = np.tril(inblock > threshold, -1) & candidates[None, :]
    has_conflict = conflicts.any(axis=1).tolist()
    accepted = np.zeros(len(valid), bool)
    taken = 0
    for i, (is_candidate, is_valid) in enumerate(zip(candidates.tolist(), valid.tolist())):
        if is_candidate:
            accept = not (has_conflict[i] and (conflicts[i] & accepted).any())
        else:
            accept = accept_invalid and not is_valid
        if accept:
            accepted[i] = True
            taken += 1
            if taken == room:
                return accepted, i + 1
    return accepted, len(valid)


def _nearest_in_block(inblock: np.ndarray, acceptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: highest similarity to an accepted *earlier* row of the block, and its block index."""
    n = len(acceptors)
    masked = np.where(np.tri(n, k=-1, dtype=bool) & acceptors[None, :], inblock, -np.inf)
    arg = masked.argmax(axis=1)
    return masked[np.arange(n), arg], arg


def select_diverse(
    final_scores: Sequence[float] | np.ndarray,
    embeddings: Any,
    *,
    budget: int | None,
    max_similarity: float = DEFAULT_MAX_SIMILARITY,
    tie_order: TieOrder = "stable",
    invalid_embeddings: InvalidEmbeddingPolicy = "accept",
    block_size: int = DEFAULT_BLOCK_SIZE,
    ids: Sequence[Any] | None = None,
) -> DeitaSelection:
    """Deita selection: best score first, skipping rows too similar to what is already selected.

    ``embeddings`` is any ``[n_rows, d]`` array-like indexable by an integer array (numpy array,
    ``np.memmap``, torch CPU tensor), in any float dtype; it is read block by block. ``budget=None``
    selects every row that survives. ``block_size`` only trades speed for memory: the output is
    the same for every value.
    """
    check_budget(budget)
    check_diversity_options(max_similarity, invalid_embeddings, block_size)
    scores = numeric_column(final_scores, "final_score", ids)
    if not (hasattr(embeddings, "shape") and hasattr(embeddings, "__getitem__")):
        embeddings = np.asarray(embeddings)
    if len(embeddings.shape) != 2:
        raise SelectionInputError(f"embeddings must be a [rows, dim] matrix, got shape {tuple(embeddings.shape)}")
    if embeddings.shape[0] != len(scores):
        raise SelectionInputError(
            f"embeddings have {embeddings.shape[0]} rows but there are {len(scores)} final scores"
        )

    order, nan_rows = score_order(scores, tie_order)
    limit = len(order) if budget is None else min(budget, len(order))
    threshold = np.float32(max_similarity)
    capacity = limit if budget is not None else min(limit, 4 * block_size)
    selected = _SelectedSet(capacity, embeddings.shape[1])

    decisions = np.empty(len(order), np.int8)
    nearest_similarity = np.empty(len(order), np.float32)
    nearest_row = np.empty(len(order), np.int64)
    invalid = np.empty(len(order), bool)
    n_scanned = n_selected = 0
    while n_scanned < len(order) and n_selected < limit:
        rows = order[n_scanned : n_scanned + block_size]
        block, valid = _normalised_block(embeddings, rows)
        before_sim, before_row = selected.nearest(block)
        inblock = block @ block.T
        too_similar_before = valid & (before_sim > threshold)
        accepted, examined = _resolve_block(
            inblock, valid, too_similar_before, threshold, invalid_embeddings == "accept", limit - n_selected
        )
        rows, block, valid, accepted = rows[:examined], block[:examined], valid[:examined], accepted[:examined]
        before_sim, before_row = before_sim[:examined], before_row[:examined]
        in_sim, in_arg = _nearest_in_block(inblock[:examined, :examined], accepted & valid)

        from_block = in_sim > before_sim
        sim = np.where(from_block, in_sim, before_sim)
        span = slice(n_scanned, n_scanned + examined)
        nearest_similarity[span] = np.where(valid & np.isfinite(sim), sim, np.nan)
        nearest_row[span] = np.where(valid & np.isfinite(sim), np.where(from_block, rows[in_arg], before_row), -1)
        decisions[span] = np.where(
            accepted, Decision.SELECTED, np.where(valid, Decision.TOO_SIMILAR, Decision.INVALID_EMBEDDING)
        )
        invalid[span] = ~valid
        selected.add(block[accepted & valid], rows[accepted & valid])
        n_scanned += examined
        n_selected += int(accepted.sum())

    return DeitaSelection(
        scanned=order[:n_scanned].copy(),
        decisions=decisions[:n_scanned],
        nearest_similarity=nearest_similarity[:n_scanned],
        nearest_row=nearest_row[:n_scanned],
        invalid_embedding=invalid[:n_scanned],
        nan_score_rows=nan_rows,
        pool_size=len(scores),
        budget=budget,
        max_similarity=float(max_similarity),
    )
