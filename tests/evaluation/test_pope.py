"""POPE's yes/no reading and metrics, checked by hand against POPE's evaluate.py rules."""

from __future__ import annotations

import pytest

from evaluation.pope import PopeInputError, pope_answer, pope_label, pope_metrics


@pytest.mark.parametrize("text, expected", [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog.", "no"),
    ("There is not a dog in the image.", "no"),
    ("There is a cat. No dog is visible.", "yes"),  # only the first sentence counts
    ("no", "no"),
    ("NO", "yes"),  # POPE's words are case-sensitive: No, not, no
    ("Nope, nothing there", "yes"),  # whole words only
    ("I see no, dog", "no"),  # commas are removed before splitting
])
def test_answers_are_read_as_popes_evaluate_py_reads_them(text, expected):
    assert pope_answer(text) == expected


def test_metrics_on_a_hand_checked_set():
    answers = ["Yes.", "Yes, there is.", "No.", "Yes", "There is not.", "No, there is none.", "Yes.", "yes", "no",
               "Yes it is."]
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes", "Yes", "No."]
    # predicted: Y Y N Y N N Y Y N Y ; truth: Y Y Y N N N N Y Y N
    # TP = 3 (0, 1, 7), FP = 3 (3, 6, 9), TN = 2 (4, 5), FN = 2 (2, 8)
    metrics = pope_metrics(answers, labels)
    assert metrics == pytest.approx({"accuracy": 5 / 10, "precision": 3 / 6, "recall": 3 / 5,
                                     "f1": 2 * 0.5 * 0.6 / 1.1, "yes_ratio": 6 / 10})


def test_no_yes_predicted_gives_zero_precision_not_an_error():
    assert pope_metrics(["No."] * 2, ["yes", "no"]) == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                        "yes_ratio": 0.0}


def test_a_reference_that_is_not_yes_or_no_is_refused():
    assert pope_label(" Yes. ", "row") == "yes"
    with pytest.raises(PopeInputError, match="row 3: a POPE reference must be 'yes' or 'no', got 'maybe'"):
        pope_label("maybe", "row 3")
