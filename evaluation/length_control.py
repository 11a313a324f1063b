"""AlpacaEval 2's length-controlled win rate: the win rate a model would have if its outputs were as long
as the baseline's (``alpaca_eval/metrics/glm_winrate.py``).

Per model, a logistic regression (no intercept) predicts the judge's preference for the model from

    tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline

where ``std_delta_len`` is (baseline length - model length) in characters divided by its standard
deviation over the model's rows, ``instruction_difficulty`` a per-instruction number, and
``not_gamed_baseline`` 1 (it is 0 only for the gamed baselines below, so its weight is the model's
own bias). The fit uses the soft preference as a probability (each row twice, labelled 1 and 0, weighted
p and 1 - p), an L1 penalty with C chosen by 5-fold grouped cross-validation on a continuous log-loss,
as AlpacaEval does with scikit-learn. The LC win rate is 100 times the mean prediction with the length
term set to 0. A model judged against itself is 50 by construction.

Two inputs are precomputed by AlpacaEval and are not bundled (they live in the ``tatsu-lab/alpaca_eval``
Hub dataset):

* ``instruction_difficulty.csv``: per-instruction difficulty, fitted once jointly over every leaderboard
  model (in AlpacaEval's notebooks, not its package). Rows are matched by position: row i of a model's
  annotations is instruction i of the AlpacaEval set, exactly as AlpacaEval looks it up.
* ``df_gamed.csv``: annotations of deliberately verbose/concise baselines. AlpacaEval's published
  ``length_controlled_v1`` adds them to every fit with weight 0.2 / 2 to regularise toward the baseline.
  With that file we fit ``length_controlled_v1``; without it, ``length_controlled_noreg`` (the same GLM
  unregularised, also defined by AlpacaEval), whose numbers differ slightly from the leaderboard's.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev
from typing import Sequence

import numpy as np

from evaluation.inputs import EvalInputError

REGULARIZE_TO_BASELINE_LAMBDA = 0.2  # AlpacaEval's length_controlled_v1 weight for the gamed baselines (split over 2)
N_SPLITS = 5
CS = 10  # scikit-learn's default grid of 10 Cs from 1e-4 to 1e4, which AlpacaEval uses
RANDOM_STATE = 123
CLIP = 1e-15


@dataclass(frozen=True)
class GamedAnnotations:
    """AlpacaEval's ``df_gamed.csv``: featurised rows of the gamed baselines, plus the difficulty they carry."""

    preference: np.ndarray  # in [0, 1], 1 = the gamed model wins
    std_delta_len: np.ndarray
    instruction_difficulty: np.ndarray
    not_gamed_baseline: np.ndarray
    difficulty_by_index: dict[int, float]


@dataclass(frozen=True)
class LengthControlled:
    winrate: float
    standard_error: float
    weights: dict[str, float]  # the fitted GLM coefficients, by AlpacaEval's column names
    glm: str  # "length_controlled_v1" or "length_controlled_noreg"


COLUMNS = ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)")


def read_instruction_difficulty(path: str | Path) -> dict[int, float]:
    """AlpacaEval's ``instruction_difficulty.csv``: first column the instruction's index, second its difficulty."""
    rows = _read_csv(path)
    try:
        return {int(row[0]): float(row[1]) for row in rows[1:] if row}
    except (ValueError, IndexError):
        raise EvalInputError(f"{path}: expected rows 'index,difficulty' (AlpacaEval's instruction_difficulty.csv)") from None


def read_gamed(path: str | Path) -> GamedAnnotations:
    """AlpacaEval's ``df_gamed.csv`` (columns ``index``, ``preference``, ``std_delta_len``,
    ``instruction_difficulty``, ``not_gamed_baseline``, as its GLM code reads them)."""
    rows = _read_csv(path)
    header, body = rows[0], [r for r in rows[1:] if r]
    wanted = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")
    missing = [c for c in wanted if c not in header]
    if missing:
        raise EvalInputError(f"{path}: missing column(s) {', '.join(missing)}")
    col = {c: header.index(c) for c in wanted}
    try:
        def floats(name: str) -> np.ndarray:
            return np.array([float(r[col[name]]) if r[col[name]] != "" else math.nan for r in body])

        not_gamed = np.array([r[col["not_gamed_baseline"]].strip().lower() in ("true", "1", "1.0") for r in body])
        difficulty: dict[int, float] = {}
        for r in body:
            difficulty.setdefault(int(float(r[col["index"]])), float(r[col["instruction_difficulty"]]))
        return GamedAnnotations(floats("preference"), floats("std_delta_len"), floats("instruction_difficulty"),
                                not_gamed, difficulty)
    except (ValueError, IndexError) as err:
        raise EvalInputError(f"{path}: unreadable row ({err})") from None


def _read_csv(path: str | Path) -> list[list[str]]:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise EvalInputError(f"{path}: empty CSV")
    return rows


def length_controlled_winrate(
    preferences: Sequence[float],
    baseline_lengths: Sequence[int],
    model_lengths: Sequence[int],
    instruction_difficulty: Sequence[float],
    *,
    is_baseline: bool = False,
    gamed: GamedAnnotations | None = None,
) -> LengthControlled:
    """The LC win rate of one model against its baseline, from its annotation rows (in AlpacaEval order).

    ``preferences`` are AlpacaEval preferences (1 baseline wins, 2 model wins, 0 or 1.5 draw, NaN none);
    the lengths are the characters of ``output_1`` (baseline) and ``output_2`` (model); the difficulty is
    row i's instruction difficulty. ``gamed`` switches to AlpacaEval's regularised ``length_controlled_v1``.
    """
    prefs = np.array([1.5 if p == 0 else p for p in preferences], dtype=float) - 1
    n = len(prefs)
    if not (n == len(baseline_lengths) == len(model_lengths) == len(instruction_difficulty)):
        raise ValueError("preferences, lengths and difficulties must have one entry per row")
    glm = "length_controlled_v1" if gamed is not None else "length_controlled_noreg"
    if is_baseline:
        predicted = prefs * 0 + 0.5  # AlpacaEval: rows without a preference stay out of the mean
        return LengthControlled(*_mean_and_sem(predicted), dict.fromkeys(COLUMNS, 0.0), glm)

    delta = np.array(baseline_lengths, dtype=float) - np.array(model_lengths, dtype=float)
    spread = stdev(delta) if n > 1 else 0.0
    if not spread > 0:
        raise EvalInputError("the length-controlled win rate needs output lengths that differ between rows")
    difficulty = np.array(instruction_difficulty, dtype=float)
    x = np.column_stack([np.tanh(delta / spread), difficulty, np.ones(n)])
    y, weight = prefs, None
    if gamed is not None:
        gamed_x = np.column_stack([np.tanh(gamed.std_delta_len), gamed.instruction_difficulty,
                                   gamed.not_gamed_baseline.astype(float)])
        x, y = np.vstack([gamed_x, x]), np.concatenate([gamed.preference, prefs])
        not_gamed = np.concatenate([gamed.not_gamed_baseline, np.ones(n, dtype=bool)])
        weight = not_gamed + REGULARIZE_TO_BASELINE_LAMBDA * ~not_gamed / 2
    keep = ~np.isnan(y)
    if keep.sum() < N_SPLITS:
        raise EvalInputError(f"the length-controlled win rate needs at least {N_SPLITS} annotated rows, got {int(keep.sum())}")
    coef = _fit_soft_logistic(x[keep], y[keep], None if weight is None else weight[keep])
    test = np.column_stack([np.zeros(n), difficulty, np.ones(n)])  # as if every output had the baseline's length
    predicted = 1 / (1 + np.exp(-(test @ coef)))
    return LengthControlled(*_mean_and_sem(predicted), dict(zip(COLUMNS, coef.tolist())), glm)


def _mean_and_sem(values: np.ndarray) -> tuple[float, float]:
    """100 x (mean, standard error with ddof=1) over the non-NaN values, as pandas computes them."""
    finite = [float(v) for v in values if not math.isnan(v)]
    mean = fmean(finite) * 100 if finite else math.nan
    sem = stdev(finite) / math.sqrt(len(finite)) * 100 if len(finite) > 1 else math.nan
    return mean, sem


def _soft_log_loss(y_true: np.ndarray, y_pred: np.ndarray, true_prob: np.ndarray,
                   true_sample_weight: np.ndarray | None = None) -> float:
    """AlpacaEval's log-loss against the soft target (each copy's label turned back into p), weighted per row."""
    p = np.where(y_true == 1, true_prob, 1 - true_prob)
    q = np.clip(y_pred, CLIP, 1 - CLIP)
    losses = p * np.log(q) + (1 - p) * np.log(1 - q)
    return float(-np.mean(losses if true_sample_weight is None else losses * true_sample_weight))


def _fit_soft_logistic(x: np.ndarray, p: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """L1 logistic regression on soft labels, C by 5-fold grouped CV: AlpacaEval's ``fit_LogisticRegressionCV``.

    Each row appears twice (label 1 weighted p, label 0 weighted 1 - p, both copies in the same fold),
    and scikit-learn's LogisticRegressionCV picks C on the soft log-loss, so near-ties between Cs break
    the same way as in AlpacaEval. Metadata routing is switched on only for this fit.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    n = len(p)
    labels = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    true_prob = np.concatenate([p, 1 - p])
    row_weight = None if weight is None else np.concatenate([weight, weight])
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(_soft_log_loss, response_method="predict_proba", greater_is_better=False)
        model = LogisticRegressionCV(
            Cs=CS, l1_ratios=[1.0], cv=GroupKFold(n_splits=N_SPLITS), solver="liblinear", fit_intercept=False,
            random_state=RANDOM_STATE, use_legacy_attributes=False,
            scoring=scorer.set_score_request(true_sample_weight=True, true_prob=True),
        )
        model.set_fit_request(sample_weight=True)
        model.fit(np.vstack([x, x]), labels, sample_weight=true_prob * (1 if row_weight is None else row_weight),
                  groups=np.concatenate([np.arange(n), np.arange(n)]), true_prob=true_prob, true_sample_weight=row_weight)
    return model.coef_[0]
