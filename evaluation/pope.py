"""POPE (object-hallucination polling): yes/no answers read and scored as POPE's own ``evaluate.py`` does.

POPE asks "Is there a <object> in the image?" and reads a free-form answer as "no" when its first
sentence (the text before the first ``.``, commas removed, split on single spaces) holds one of the
words ``No``, ``not`` or ``no`` (case-sensitive: "NO" and "Not" read as yes), else as "yes". "yes" is
the positive class. Where POPE divides by zero (no "yes" predicted, or no "yes" label) precision,
recall or F1 is 0 here instead of an exception.
"""

from __future__ import annotations

from typing import Sequence

from evaluation.inputs import EvalInputError

NEGATION_WORDS = ("No", "not", "no")  # POPE evaluate.py: 'No' in words or 'not' in words or 'no' in words
LABELS = ("yes", "no")


class PopeInputError(EvalInputError):
    """A POPE reference that is not a yes/no label."""


def pope_answer(text: str) -> str:
    """``"yes"`` or ``"no"``: the free-form answer as POPE's evaluate.py reads it."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(word in NEGATION_WORDS for word in words) else "yes"


def pope_label(reference: str, where: str) -> str:
    """The reference as a label: ``yes`` or ``no`` (any case, surrounding blanks and a final ``.`` ignored)."""
    label = reference.strip().rstrip(".").lower()
    if label not in LABELS:
        raise PopeInputError(f"{where}: a POPE reference must be 'yes' or 'no', got {reference!r:.80}")
    return label


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """accuracy, precision, recall, f1 and yes_ratio of free-form ``answers`` against yes/no ``labels``."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers but {len(labels)} labels")
    if not answers:
        raise PopeInputError("POPE: no answers to score")
    predicted = [pope_answer(a) == "yes" for a in answers]
    truth = [pope_label(label, f"POPE label {i}") == "yes" for i, label in enumerate(labels)]
    tp = sum(p and t for p, t in zip(predicted, truth))
    fp = sum(p and not t for p, t in zip(predicted, truth))
    tn = sum(not p and not t for p, t in zip(predicted, truth))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, sum(truth))
    return {
        "accuracy": (tp + tn) / len(answers),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": sum(predicted) / len(answers),
    }
