"""`eval metrics`: Polite Flamingo's judge-free evaluators, pure metrics by hand and end to end on tiny models."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import yaml
from datasets import Dataset, load_dataset
from huggingface_hub import HfApi, ModelCard
from rouge_score import rouge_scorer
from transformers import AutoModelForSequenceClassification

from alignsmith.cli import main
from alignsmith.models import tiny
from alignsmith.models.loading import pinned
from alignsmith.models.scorers import NliScorer, nli_pair
from alignsmith.recipes import RecipeError, build
from alignsmith.results import ResultRow, append_results
from evaluation.reference_metrics import (
    Answer,
    MetricsInputError,
    MetricsRecipe,
    match_opponent,
    measure_reward_winrate,
    measure_rouge_l,
    nli_accuracy,
    win_rate,
    with_reference,
)

NLI_ORDER = ["contradiction", "entailment", "neutral"]


def _answer(qid: str, answer: str, reference: str | None, turn: int = 1) -> Answer:
    return Answer(qid, turn, "What is in the image?", answer, reference, f"record {qid}")


@contextlib.contextmanager
def _predicting(model: torch.nn.Module, label: str):
    """Bias the tiny classifier so every pair's argmax is ``label`` (restored afterwards)."""
    bias, saved = model.classifier.bias, model.classifier.bias.detach().clone()
    with torch.no_grad():
        bias[model.config.label2id[label]] += 100.0
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_nli_accuracy_counts_only_entailment():
    value, n, stderr = nli_accuracy([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 9.0, 1.0]])
    assert (value, n) == (0.5, 4) and stderr == pytest.approx(math.sqrt(0.25 / 4))
    with pytest.raises(MetricsInputError, match=r"\[n >= 1, 3\]"):
        nli_accuracy([[1.0, 2.0]])


def test_an_entailing_answer_counts_and_a_contradiction_does_not(tmp_path):
    folder = tiny.build_sequence_classifier(tmp_path / "nli", num_labels=3, id2label=NLI_ORDER)
    nli = NliScorer(pinned(str(folder), None, "nli_model"), device="cpu")
    question, answer, truth = "What color is the bus?", "The bus is red.", "red"
    with _predicting(nli.model, "entailment"):
        assert nli_accuracy(nli.logits([question], [answer], [truth]))[:2] == (1.0, 1)
    with _predicting(nli.model, "contradiction"):
        assert nli_accuracy(nli.logits([question], [answer], [truth]))[:2] == (0.0, 1)
    assert nli_pair(question, answer, truth)[0] == '"The bus is red." is the answer to the question: ' \
                                                   '"What color is the bus?"'


def test_win_rate_counts_ties_as_half():
    value, n, stderr = win_rate([3.0, 1.0, 2.0, 0.5], [1.0, 2.0, 2.0, 0.5])
    assert (value, n) == (0.5, 4)  # win, loss, tie, tie
    outcomes = [1.0, 0.0, 0.5, 0.5]
    sd = math.sqrt(sum((o - 0.5) ** 2 for o in outcomes) / 3)
    assert stderr == pytest.approx(sd / 2)


def test_rouge_l_is_rouge_scores_stemmed_mean_and_null_references_are_skipped(caplog):
    rows = [_answer("1", "The cats are running home.", "A cat runs home."), _answer("2", "Blue sky", None),
            _answer("3", "red", "The bus is red.")]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [scorer.score(ref, out)["rougeL"].fmeasure for out, ref in (("The cats are running home.",
                                                                            "A cat runs home."),
                                                                           ("red", "The bus is red."))]
    with caplog.at_level("INFO"):
        (measured,) = measure_rouge_l(None, rows)
    assert (measured.metric, measured.n) == ("rouge_l", 2)
    assert measured.value == pytest.approx(sum(expected) / 2) and measured.scorer is None
    assert "rouge_l: 1 of 3 answer(s) have no reference and are skipped" in caplog.text
    with pytest.raises(MetricsInputError, match="sts: none of the 1 answer"):
        with_reference([_answer("2", "x", None)], "sts")


def test_reward_win_rate_against_the_reference_skips_rows_without_one(tmp_path):
    folder = tiny.build_sequence_classifier(tmp_path / "reward", num_labels=1, seed=1)
    recipe = build(MetricsRecipe, {"answers": {"path": "a/b"}, "results_repo": "a/results", "device": "cpu",
                                   "metrics": ["reward_winrate"], "reward_model": {"model": str(folder)}})
    win, mean = measure_reward_winrate(recipe, [_answer("1", "Sure, it is red.", "Sure, it is red."),
                                                _answer("2", "blue", None)])
    assert (win.metric, win.value, win.n) == ("reward_win_rate", 0.5, 1)  # the same text: a tie
    assert (mean.metric, mean.n, mean.stderr) == ("reward_mean", 1, None) and win.scorer.repo_id == str(folder)


def test_an_opponent_without_an_answer_is_named():
    rows = [_answer("1", "a", None), _answer("1", "b", None, turn=2), _answer("7", "c", None)]
    with pytest.raises(MetricsInputError, match="record 1: the opponent has no answer to question 1 turn 2"):
        match_opponent(rows, [_answer("1", "x", None), _answer("7", "y", None)])


def test_recipe_checks_each_metric_has_its_model():
    base = {"answers": {"path": "a/b"}, "results_repo": "a/results"}
    with pytest.raises(RecipeError, match="nli_model: required by metric 'vqa_nli'"):
        build(MetricsRecipe, {**base, "metrics": ["vqa_nli"]})
    with pytest.raises(RecipeError, match="sts_model: required by metric 'sts' and used by no other"):
        build(MetricsRecipe, {**base, "metrics": ["rouge_l"], "sts_model": {"model": "x/y"}})
    with pytest.raises(RecipeError, match="opponent: used only by metric 'reward_winrate'"):
        build(MetricsRecipe, {**base, "metrics": ["rouge_l"], "opponent": {"path": "c/d"}})
    with pytest.raises(RecipeError, match="listed twice"):
        build(MetricsRecipe, {**base, "metrics": ["pope", "pope"]})


# --- end to end ---------------------------------------------------------------------------------------------


def _publish_model(folder, repo: str) -> str:
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    sha = api.upload_folder(repo_id=repo, folder_path=str(folder)).oid
    api.create_tag(repo, tag="v1", revision=sha)
    return sha


def _publish_answers(repo: str, model: str, sha: str, prompt_set: str, rows: list[tuple]) -> None:
    from alignsmith.cards import CardContent
    from alignsmith.lineage import Lineage
    from alignsmith.publish import publish_dataset
    from alignsmith.recipes import OutputRepo

    data = Dataset.from_list([
        {"question_id": qid, "category": "vqa", "turn": 1, "answer": answer, "reference": reference, "model": model,
         "model_sha": sha, "prompt_set": prompt_set, "decoding": "{}",
         "messages": [{"role": "user", "content": f"<image>\n{question}"}]}
        for qid, question, answer, reference in rows])
    publish_dataset(OutputRepo(repo_id=repo, tag="v1"), {"answers": {"train": data}},
                    CardContent(title="answers", summary="test answers"), Lineage(command="test", recipe={}),
                    default_config="answers")


def test_eval_metrics_appends_rows_beside_other_evaluators_and_into_the_model_card(tmp_path, hub):
    nli = tiny.build_sequence_classifier(tmp_path / "nli", num_labels=3, id2label=NLI_ORDER)
    model = AutoModelForSequenceClassification.from_pretrained(nli)
    with _predicting(model, "entailment"):  # saved steered: every pair reads as entailment
        model.save_pretrained(nli)
    shas = {name: _publish_model(folder, f"metrics-test/{name}") for name, folder in (
        ("nli", nli), ("sts", tiny.build_sentence_transformer(tmp_path / "sts")),
        ("reward", tiny.build_sequence_classifier(tmp_path / "reward", num_labels=1, seed=1)))}
    model_sha = _publish_model(tmp_path / "nli", "metrics-test/chat")  # stands in for the answering model
    vqa = [("q1", "What is on the mat?", "A cat sits on the mat.", "cat"),
           ("q2", "What color is the bus?", "The bus is red.", "red"),
           ("q3", "How many dogs?", "Two dogs.", None)]
    _publish_answers("metrics-test/vqa-answers", "metrics-test/chat", model_sha, "vqav2", vqa)
    _publish_answers("metrics-test/other-answers", "metrics-test/other", model_sha, "vqav2", vqa)
    pope = [("p1", "Is there a dog?", "Yes, there is.", "yes"), ("p2", "Is there a cat?", "No.", "yes"),
            ("p3", "Is there a car?", "There is not a car.", "no"), ("p4", "Is there a bus?", "Yes", "no")]
    _publish_answers("metrics-test/pope-answers", "metrics-test/chat", model_sha, "pope_questions", pope)
    append_results("metrics-test/results", [ResultRow("metrics-test/chat", model_sha, "mt_bench", "score", 7.0, 4,
                                                      judge="fake/judge", judge_sha="a" * 40)])

    def run(name: str, **recipe) -> int:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"hub": hub.url, "device": "cpu", "results_repo": "metrics-test/results",
                                        **recipe}))
        return main(["eval", "metrics", "--config", str(path)])

    src = {"path": "metrics-test/vqa-answers", "config": "answers", "revision": "v1"}
    assert run("vqa", answers=src, metrics=["vqa_nli", "rouge_l", "sts", "reward_winrate"],
               nli_model={"model": "metrics-test/nli", "revision": "v1"},
               sts_model={"model": "metrics-test/sts", "revision": "v1"},
               reward_model={"model": "metrics-test/reward", "revision": "v1"},
               opponent={**src, "path": "metrics-test/other-answers"}) == 0
    assert run("pope", answers={**src, "path": "metrics-test/pope-answers"}, metrics=["pope"],
               benchmark="pope_random") == 0

    results = load_dataset("metrics-test/results", split="train")
    by_metric = {r["metric"]: r for r in results}
    assert by_metric["score"]["benchmark"] == "mt_bench"  # the other evaluator's row is still there
    answers_sha = HfApi().dataset_info("metrics-test/vqa-answers", revision="v1").sha
    nli_row = by_metric["nli_accuracy"]
    assert (nli_row["value"], nli_row["n"], nli_row["stderr"]) == (1.0, 2, 0.0)  # q3 has no reference
    assert (nli_row["model"], nli_row["model_sha"], nli_row["benchmark"]) == ("metrics-test/chat", model_sha, "vqav2")
    assert (nli_row["judge"], nli_row["judge_sha"]) == ("metrics-test/nli", shas["nli"])
    assert (nli_row["prompt_set"], nli_row["prompt_set_sha"]) == ("metrics-test/vqa-answers", answers_sha)
    assert by_metric["rouge_l"]["n"] == 2 and by_metric["rouge_l"]["judge"] is None
    assert by_metric["sts_cosine"]["judge_sha"] == shas["sts"] and -1 <= by_metric["sts_cosine"]["value"] <= 1
    win = by_metric["reward_win_rate_vs_metrics-test/other"]  # same answers as the opponent: all ties
    assert (win["value"], win["n"], win["judge"]) == (0.5, 3, "metrics-test/reward")
    assert by_metric["reward_mean"]["n"] == 3
    # p1 TP, p2 FN, p3 TN, p4 FP
    assert {m: (by_metric[m]["value"], by_metric[m]["benchmark"], by_metric[m]["n"]) for m in
            ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")} == {
        m: (0.5, "pope_random", 4) for m in ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1",
                                            "pope_yes_ratio")}

    card = ModelCard.load("metrics-test/chat")
    index = {(e.dataset_name, e.metric_type): e.metric_value for e in card.data.eval_results}
    assert index[("vqav2", "nli_accuracy")] == 1.0 and index[("pope_random", "pope_f1")] == 0.5
    assert HfApi().list_repo_refs("metrics-test/chat").tags[0].target_commit == model_sha  # the tag did not move
