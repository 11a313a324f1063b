"""Deita selection: the blocked greedy filter against a plain sequential definition, and the strategies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from builders.deita.selection import (
    Decision,
    SelectionInputError,
    combine_scores,
    score_order,
    select_diverse,
)
from builders.deita.strategies import make_strategy, select, strategy_options

# ---------------------------------------------------------------------------------------------
# The sequential definition (Deita's reference semantics, one candidate at a time)
# ---------------------------------------------------------------------------------------------


def stable_descending(scores: np.ndarray) -> list[int]:
    return sorted((r for r in range(len(scores)) if not math.isnan(scores[r])), key=lambda r: -scores[r])


def sequential_select(
    embeddings: np.ndarray, order: list[int], budget: int | None, max_similarity: float, accept_invalid: bool = True
) -> tuple[list[int], list[int], list[float]]:
    """Selected rows, the decision of every scanned row, and its max similarity to earlier selections.

    Invalid embeddings normalise to NaN, and NaN similarities compare False, exactly as in the
    reference; with ``accept_invalid=False`` such rows are skipped instead.
    """
    threshold = np.float32(max_similarity)
    chosen: list[np.ndarray] = []
    selected: list[int] = []
    decisions: list[int] = []
    nearest: list[float] = []
    for row in order:
        if budget is not None and len(selected) >= budget:
            break
        vector = np.asarray(embeddings[row], np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            vector = vector / np.linalg.norm(vector)
        sims = np.stack(chosen) @ vector if chosen else np.zeros(0, np.float32)
        valid = bool(np.isfinite(vector).all())
        nearest.append(float(np.nanmax(sims)) if valid and np.isfinite(sims).any() else math.nan)
        if not valid and not accept_invalid:
            decisions.append(Decision.INVALID_EMBEDDING)
        elif (sims > threshold).any():
            decisions.append(Decision.TOO_SIMILAR)
        else:
            decisions.append(Decision.SELECTED)
            selected.append(row)
            chosen.append(vector)
    return selected, decisions, nearest


def clustered(n: int, dim: int, n_centres: int, seed: int) -> np.ndarray:
    """Noisy, randomly scaled copies of unit centres: many cosines straddle 0.9."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noisy = centres[rng.integers(0, n_centres, n)] + rng.standard_normal((n, dim)) * 0.35 / np.sqrt(dim)
    return (noisy * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)


def separated_threshold(embeddings: np.ndarray, near: float = 0.9, margin: float = 1e-5) -> float:
    """A threshold near ``near`` that no pairwise cosine comes within ``margin`` of.

    Blocked and sequential code round dot products differently (GEMM vs GEMV), so comparing them
    at a threshold some pair sits on would test the BLAS, not the algorithm.
    """
    unit = embeddings.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    sims = np.sort((unit @ unit.T)[np.triu_indices(len(unit), 1)])
    window = sims[(sims > near - 0.02) & (sims < near + 0.02)]
    edges = np.concatenate([[near - 0.02], window, [near + 0.02]])
    gaps = np.diff(edges)
    best = int(np.argmax(gaps))
    assert gaps[best] > 2 * margin, "no clean threshold near 0.9 in this data"
    return float((edges[best] + edges[best + 1]) / 2)


@pytest.fixture(scope="module")
def pools() -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(1)
    pools = {
        "random": rng.standard_normal((600, 24)).astype(np.float32),
        "clustered": clustered(1200, 32, 300, seed=2),
    }
    out = {}
    for name, embeddings in pools.items():
        scores = rng.uniform(1, 36, len(embeddings))
        near = 0.3 if name == "random" else 0.9  # random Gaussian vectors in d=24 are rarely 0.9-similar
        out[name] = (embeddings, scores, separated_threshold(embeddings, near))
    return out


def assert_matches_sequential(result, embeddings, order, budget, max_similarity, accept_invalid=True) -> None:
    selected, decisions, nearest = sequential_select(embeddings, order, budget, max_similarity, accept_invalid)
    assert result.selected.tolist() == selected
    assert result.scanned.tolist() == order[: len(decisions)]
    assert result.decisions.tolist() == decisions
    np.testing.assert_allclose(result.nearest_similarity, nearest, rtol=0, atol=1e-5)
    # The reported nearest row really is that similar, and was selected earlier.
    has = result.nearest_row >= 0
    assert np.array_equal(has, ~np.isnan(result.nearest_similarity))
    rank = {row: i for i, row in enumerate(result.selected.tolist())}
    for position in np.flatnonzero(has):
        row, other = result.scanned[position], result.nearest_row[position]
        a, b = (embeddings[r].astype(np.float64) for r in (row, other))
        assert abs(a @ b / np.linalg.norm(a) / np.linalg.norm(b) - result.nearest_similarity[position]) < 1e-5
        assert rank[other] < rank.get(row, len(rank))


# ---------------------------------------------------------------------------------------------
# Greedy selection == sequential definition
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["random", "clustered"])
@pytest.mark.parametrize("block_size", [1, 5, 64, 5000])
@pytest.mark.parametrize("budget", [None, 250])
def test_blocked_selection_equals_sequential_definition(pools, pool, block_size, budget):
    embeddings, scores, threshold = pools[pool]
    result = select_diverse(scores, embeddings, budget=budget, max_similarity=threshold, block_size=block_size)
    assert_matches_sequential(result, embeddings, stable_descending(scores), budget, threshold)
    counts = result.counts
    assert counts.rejected_too_similar > 0  # the filter was exercised
    assert counts.selected + counts.rejected_too_similar == counts.scanned
    assert result.selected_rank.tolist() == [result.scanned.tolist().index(r) for r in result.selected]


def test_ties_keep_pool_order(pools):
    embeddings, _, threshold = pools["clustered"]
    scores = np.random.default_rng(3).integers(0, 4, len(embeddings)).astype(float)  # ~300 rows per tie
    order, _ = score_order(scores)
    assert order.tolist() == stable_descending(scores)
    result = select_diverse(scores, embeddings, budget=None, max_similarity=threshold, block_size=100)
    assert_matches_sequential(result, embeddings, stable_descending(scores), None, threshold)


def test_reference_tie_order_is_pandas_descending_sort(pools):
    embeddings, _, threshold = pools["clustered"]
    scores = np.random.default_rng(4).integers(0, 4, len(embeddings)).astype(float)
    scores[::37] = np.nan
    pandas_order = pd.DataFrame({"s": scores}).sort_values(by="s", ascending=False).index.to_numpy()
    non_nan = np.flatnonzero(~np.isnan(scores))
    formula = np.arange(len(non_nan))[::-1][scores[non_nan][::-1].argsort(kind="quicksort")][::-1]

    order, nan_rows = score_order(scores, "reference")
    assert order.tolist() == pandas_order[: len(non_nan)].tolist() == non_nan[formula].tolist()
    assert nan_rows.tolist() == pandas_order[len(non_nan) :].tolist()
    result = select_diverse(scores, embeddings, budget=None, max_similarity=threshold, tie_order="reference")
    assert_matches_sequential(result, embeddings, order.tolist(), None, threshold)


# ---------------------------------------------------------------------------------------------
# Threshold semantics
# ---------------------------------------------------------------------------------------------


def signed_unit(flips: int, dim: int = 64, scale: float = 1.0) -> np.ndarray:
    """Entries ±scale/8: unit-norm after normalisation, and cosines between such vectors are exact."""
    vector = np.full(dim, scale / 8, np.float32)
    vector[:flips] *= -1
    return vector


@pytest.mark.parametrize("block_size", [1, 3])
def test_similarity_equal_to_max_similarity_is_kept(block_size):
    # cosines to the first row: 1 - 2*flips/64, exactly: 0.90625 (3 flips) and 0.875 (4 flips)
    embeddings = np.stack([signed_unit(0, scale=3.0), signed_unit(3), signed_unit(4, scale=0.5)])
    scores = [3.0, 2.0, 1.0]

    default = select_diverse(scores, embeddings, budget=None, block_size=block_size)
    assert default.selected.tolist() == [0, 2]  # 0.90625 > 0.9 rejected; 0.875 kept
    assert default.nearest_similarity.tolist() == [pytest.approx(np.nan, nan_ok=True), 0.90625, 0.875]
    assert default.nearest_row.tolist() == [-1, 0, 0]

    pair = embeddings[[0, 2]]
    at_boundary = select_diverse(scores[:2], pair, budget=None, max_similarity=0.875, block_size=block_size)
    assert at_boundary.selected.tolist() == [0, 1]
    just_below = float(np.nextafter(np.float32(0.875), np.float32(0)))
    below = select_diverse(scores[:2], pair, budget=None, max_similarity=just_below)
    assert below.selected.tolist() == [0]


# ---------------------------------------------------------------------------------------------
# Missing scores, invalid embeddings, budgets, storage
# ---------------------------------------------------------------------------------------------


def test_nan_scores_are_excluded_and_reported(pools):
    embeddings, scores, threshold = pools["clustered"]
    scores = scores.copy()
    scores[[5, 17, 400]] = np.nan
    result = select_diverse(scores, embeddings, budget=None, max_similarity=threshold)
    assert result.nan_score_rows.tolist() == [5, 17, 400]
    assert result.counts.nan_scores == 3
    assert not set(result.selected.tolist()) & {5, 17, 400}
    assert_matches_sequential(result, embeddings, stable_descending(scores), None, threshold)
    assert result.row_report()["selection_decision"][[5, 17, 400]].tolist() == ["nan_score"] * 3


@pytest.mark.parametrize("policy", ["accept", "reject"])
def test_zero_and_nan_embeddings(pools, policy):
    embeddings, scores, threshold = pools["clustered"]
    embeddings = embeddings.copy()
    top = np.argsort(-scores)[:3]
    embeddings[top[0]] = 0.0  # the top row is invalid
    embeddings[top[2], 3] = np.nan
    embeddings[np.argsort(-scores)[500]] = 0.0
    invalid_rows = {int(top[0]), int(top[2]), int(np.argsort(-scores)[500])}

    result = select_diverse(scores, embeddings, budget=None, max_similarity=threshold, invalid_embeddings=policy)
    assert_matches_sequential(result, embeddings, stable_descending(scores), None, threshold, policy == "accept")
    assert set(result.scanned[result.invalid_embedding].tolist()) == invalid_rows
    assert result.counts.invalid_embeddings == 3
    if policy == "accept":
        assert invalid_rows <= set(result.selected.tolist())
    else:
        assert not invalid_rows & set(result.selected.tolist())
        assert (result.decisions[result.invalid_embedding] == Decision.INVALID_EMBEDDING).all()
    assert np.isnan(result.nearest_similarity[result.invalid_embedding]).all()
    assert not np.isin(result.nearest_row, list(invalid_rows)).any()  # they never explain a rejection


def test_invalid_embeddings_never_cause_rejections_even_below_zero_threshold():
    # with max_similarity < 0 a zero vector (similarity 0) would reject everything if it took part
    embeddings = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    result = select_diverse([3.0, 2.0, 1.0], embeddings, budget=None, max_similarity=-0.5)
    assert result.selected.tolist() == [0, 1, 2]


def test_budgets(pools):
    embeddings, scores, threshold = pools["clustered"]
    everything = select_diverse(scores, embeddings, budget=None, max_similarity=threshold)
    assert everything.shortfall == 0

    too_big = select_diverse(scores, embeddings, budget=5000, max_similarity=threshold)
    assert too_big.selected.tolist() == everything.selected.tolist()
    assert too_big.shortfall == 5000 - len(everything.selected) > 0
    assert too_big.counts.scanned == len(embeddings)

    none = select_diverse(scores, embeddings, budget=0)
    assert len(none.selected) == 0 and none.counts.scanned == 0

    one = select_diverse(scores, embeddings, budget=1, block_size=64)
    assert one.selected.tolist() == [int(np.argmax(scores))]
    assert one.counts.scanned == 1
    assert one.row_report()["selection_decision"].tolist().count("not_scanned") == len(scores) - 1


def test_float16_and_memmap_embeddings(pools, tmp_path):
    embeddings, scores, threshold = pools["clustered"]
    half = embeddings.astype(np.float16)
    mapped = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float16, shape=half.shape)
    mapped[:] = half
    mapped.flush()
    reopened = np.load(tmp_path / "emb.npy", mmap_mode="r")

    expected, _, _ = sequential_select(half, stable_descending(scores), None, threshold)
    for source in (half, reopened):
        result = select_diverse(scores, source, budget=None, max_similarity=threshold, block_size=128)
        assert result.selected.tolist() == expected


def test_row_report_explains_every_row(pools):
    embeddings, scores, threshold = pools["clustered"]
    result = select_diverse(scores, embeddings, budget=300, max_similarity=threshold)
    report = result.row_report()
    assert all(len(column) == len(scores) for column in report.values())
    decision = report["selection_decision"]
    assert np.flatnonzero(decision == "selected").tolist() == sorted(result.selected.tolist())
    assert report["selection_order"][result.selected].tolist() == list(range(300))
    rejected = np.flatnonzero(decision == "too_similar")
    assert len(rejected) == result.counts.rejected_too_similar
    assert (report["nearest_selected_similarity"][rejected] > np.float32(threshold)).all()
    assert (decision[report["selection_order"] < 0] != "selected").all()


# ---------------------------------------------------------------------------------------------
# Final score
# ---------------------------------------------------------------------------------------------

MULTI_TURN_C = [[2.0, 3.0], [4.0], [1.5, 2.5, 5.0], [6.0, 1.0]]
MULTI_TURN_Q = [[3.0, 1.0], [5.0], [2.0, 2.0, 1.0], [1.0, 6.0]]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("sum_product", [9.0, 20.0, 13.0, 12.0]),
        ("mean_product", [4.5, 20.0, 13.0 / 3, 6.0]),
        ("complexity", [5.0, 4.0, 9.0, 7.0]),
        ("quality", [4.0, 5.0, 5.0, 7.0]),
        ("first_turn_product", [6.0, 20.0, 3.0, 6.0]),
    ],
)
def test_score_combinations_over_multi_turn_rows(method, expected):
    assert combine_scores(MULTI_TURN_C, MULTI_TURN_Q, method=method).tolist() == pytest.approx(expected)


def test_sum_product_rounds_exactly_like_the_reference():
    rng = np.random.default_rng(5)
    complexity = [rng.uniform(1, 6, n).tolist() for n in rng.integers(1, 60, 400)]
    quality = [rng.uniform(1, 6, len(c)).tolist() for c in complexity]
    reference = [(np.array(c) * np.array(q)).sum() for c, q in zip(complexity, quality)]
    assert combine_scores(complexity, quality).tolist() == reference  # bit for bit, so tie orders agree


def test_missing_turn_score_makes_the_row_nan():
    scores = combine_scores([[1.0, None], [2.0]], [[1.0, 1.0], [2.0]])
    assert math.isnan(scores[0]) and scores[1] == 4.0


@pytest.mark.parametrize(
    ("complexity", "quality", "message"),
    [
        (
            [[1.0, 2.0], [3.0]],
            [[1.0, 2.0], [3.0, 4.0]],
            r"row 1 \(id 'b'\): complexity_scores has 1 turns but quality_scores has 2",
        ),
        ([[1.0], []], [[1.0], []], r"row 1 \(id 'b'\): complexity_scores is empty"),
        ([[1.0], ["high"]], [[1.0], [2.0]], r"row 1 \(id 'b'\): complexity_scores must be a number, got 'high'"),
        ([[1.0], 2.0], [[1.0], [2.0]], r"row 1 \(id 'b'\): complexity_scores must be a list"),
        ([[1.0]], [[1.0], [2.0]], "complexity_scores has 1 rows but quality_scores has 2"),
    ],
)
def test_bad_turn_scores_name_the_row_and_field(complexity, quality, message):
    with pytest.raises(SelectionInputError, match=message):
        combine_scores(complexity, quality, ids=["a", "b"][: len(complexity)])


def test_unknown_score_combination():
    with pytest.raises(SelectionInputError, match="unknown score combination 'product'"):
        combine_scores([[1.0]], [[1.0]], method="product")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embeddings": np.ones((3, 4))}, "embeddings have 3 rows but there are 2 final scores"),
        ({"embeddings": np.ones(2)}, r"embeddings must be a \[rows, dim\] matrix"),
        ({"max_similarity": float("nan")}, "max_similarity must be a finite"),
        ({"block_size": 0}, "block_size must be a positive integer"),
        ({"tie_order": "pandas"}, "tie_order must be one of"),
        ({"invalid_embeddings": "drop"}, "invalid_embeddings must be one of"),
        ({"budget": -1}, "budget must be a non-negative integer"),
        ({"final_scores": [1.0, "x"]}, "final_score must be a number"),
    ],
)
def test_bad_selection_input(kwargs, message):
    arguments = {"final_scores": [1.0, 2.0], "embeddings": np.ones((2, 4)), "budget": 1} | kwargs
    with pytest.raises(SelectionInputError, match=message):
        select_diverse(**arguments)


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def table() -> dict[str, list]:
    return {
        "id": ["a", "b", "c", "d", "e"],
        "complexity_scores": [[2.0], [3.0, 3.0], [1.0], [4.0], [2.0]],
        "quality_scores": [[2.0], [1.0, 2.0], [5.0], [4.0], [2.0]],
        "instruction_length": [10, 50, 30, 50, 5],
        "response_length": [200, 10, 400, 90, 90],
        "perplexity": [3.5, None, 1.2, 8.0, 2.0],
        "ifd": [0.4, 1.3, 0.9, 0.95, float("nan")],
    }


@pytest.mark.parametrize(
    ("name", "options", "expected", "missing", "filtered"),
    [
        ("topk", {}, [3, 1, 2, 0, 4], [], []),  # final scores 4, 9, 5, 16, 4: tied a, e keep pool order
        ("instruction_length", {}, [1, 3, 2, 0, 4], [], []),
        ("response_length", {}, [2, 0, 3, 4, 1], [], []),
        ("perplexity", {}, [3, 0, 4, 2], [1], []),
        ("perplexity", {"descending": False}, [2, 4, 0, 3], [1], []),
        ("ifd", {}, [1, 3, 2, 0], [4], []),
        ("ifd", {"below_one": True}, [3, 2, 0], [4], [1]),
    ],
)
def test_ranking_strategies(table, name, options, expected, missing, filtered):
    result = select(name, table, budget=None, **options)
    assert result.strategy == name
    assert result.selected.tolist() == expected
    assert result.missing_rows.tolist() == missing
    assert result.filtered_rows.tolist() == filtered
    assert select(name, table, budget=2, **options).selected.tolist() == expected[:2]


def test_topk_uses_the_chosen_combination_and_ready_final_scores(table):
    assert select("topk", table, budget=None, score="mean_product").selected.tolist() == [3, 2, 1, 0, 4]
    ready = {"final_score": [1.0, 3.0, float("nan"), 2.0]}
    result = select("topk", ready, budget=None)
    assert result.selected.tolist() == [1, 3, 0] and result.missing_rows.tolist() == [2]


def test_random_strategy_is_seeded(table):
    first = select("random", table, budget=3, seed=7).selected
    assert first.tolist() == select("random", table, budget=3, seed=7).selected.tolist()
    draws = {tuple(select("random", table, budget=None, seed=s).selected.tolist()) for s in range(20)}
    assert all(sorted(d) == list(range(5)) for d in draws) and len(draws) > 1


def test_deita_strategy_matches_select_diverse(pools):
    embeddings, scores, threshold = pools["clustered"]
    rng = np.random.default_rng(6)
    complexity = [rng.uniform(1, 6, n).tolist() for n in rng.integers(1, 4, len(scores))]
    quality = [rng.uniform(1, 6, len(c)).tolist() for c in complexity]
    table = {"complexity_scores": complexity, "quality_scores": quality}
    strategy = make_strategy("deita", max_similarity=threshold, block_size=200)
    result = strategy.select(table, budget=100, embeddings=embeddings)
    direct = select_diverse(combine_scores(complexity, quality), embeddings, budget=100, max_similarity=threshold)
    assert result.selected.tolist() == direct.selected.tolist()
    assert result.deita is not None and result.deita.counts.selected == 100


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: select("perplexity", {"id": t["id"]}, budget=1), r"'perplexity' needs column\(s\) \['perplexity'\]"),
        (lambda t: select("ifd", {"x": [1]}, budget=1), r"strategy 'ifd' needs column\(s\) \['ifd'\]"),
        (lambda t: select("deita", t, budget=1), "strategy 'deita' needs embeddings"),
        (lambda t: select("topk", {"final_score": [1.0]}, budget=1, score="quality"), "'topk' with score 'quality' needs"),
        (lambda t: select("knn", t, budget=1), "unknown selection strategy 'knn'"),
        (lambda t: select("ifd", t, budget=1, below=1.0), r"strategy 'ifd' does not take option\(s\) \['below'\]"),
        (lambda t: select("random", {"a": [1, 2], "b": [1]}, budget=1), "columns differ in length"),
        (
            lambda t: select("perplexity", t | {"perplexity": [1, 2, "low", 3, 4]}, budget=1),
            r"row 2 \(id 'c'\): perplexity must be a number",
        ),
        (lambda t: make_strategy("deita", max_similarity="high"), "max_similarity must be a finite"),
    ],
)
def test_strategy_errors_name_strategy_and_column(table, call, message):
    with pytest.raises(SelectionInputError, match=message):
        call(table)


def test_every_strategy_lists_its_options():
    assert "max_similarity" in strategy_options("deita")
    assert strategy_options("random") == []
    assert strategy_options("ifd") == ["descending", "below_one"]


def test_selected_set_read_in_chunks(pools, monkeypatch):
    """Memory-bounded similarity chunks (used for large selected sets) give the same selection."""
    embeddings, scores, threshold = pools["clustered"]
    monkeypatch.setattr("builders.deita.selection._SIMILARITY_CHUNK_ELEMENTS", 64 * 13)  # 13 selected rows per chunk
    result = select_diverse(scores, embeddings, budget=None, max_similarity=threshold, block_size=64)
    assert_matches_sequential(result, embeddings, stable_descending(scores), None, threshold)


def test_strategies_read_a_datasets_table(table):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict(table)
    for name in ("topk", "perplexity", "ifd"):
        expected = select(name, table, budget=None).selected.tolist()
        assert select(name, dataset, budget=None).selected.tolist() == expected
