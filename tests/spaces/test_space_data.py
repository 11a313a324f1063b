"""The Space's pure views: results to leaderboard, filters, plot data, lineage and explorer tables."""

import math

import pandas as pd
import pytest

from alignsmith.lineage import ArtifactRef, Lineage
from alignsmith.recipes import RecipeError, build
from spaces import data
from spaces.config import RepoAt, SpaceConfig


def _row(model, sha, benchmark, metric, value, date="2025-01-01T00:00:00+00:00"):
    return {"model": model, "model_sha": sha, "benchmark": benchmark, "metric": metric, "value": value,
            "stderr": None, "n": 10, "judge": None, "prompt_set": None, "date": date, "run_id": "r"}


RESULTS = pd.DataFrame([
    _row("org/a", "a1", "mt_bench", "score", 5.0),
    _row("org/a", "a1", "mt_bench", "score", 6.0, date="2025-02-01T00:00:00+00:00"),  # a rerun: newer wins
    _row("org/a", "a1", "tiny_mc", "acc", 0.5),
    _row("org/a", "a2", "tiny_mc", "acc", 0.25),  # another revision of the same model: its own row
    _row("org/b", "b1", "mt_bench", "score", 7.0),
])


def test_leaderboard_has_one_row_per_model_revision_and_a_column_per_metric():
    table = data.leaderboard(RESULTS)
    assert list(table.columns) == ["model", "model_sha", "mt_bench/score", "tiny_mc/acc"]
    assert list(zip(table.model, table.model_sha)) == [("org/a", "a1"), ("org/a", "a2"), ("org/b", "b1")]
    assert table.set_index("model_sha").loc["a1", "mt_bench/score"] == 6.0
    assert math.isnan(table.set_index("model_sha").loc["b1", "tiny_mc/acc"])
    assert data.benchmarks(table) == ["mt_bench", "tiny_mc"]
    assert data.leaderboard(RESULTS.iloc[:0]).empty


def test_the_first_score_plotted_is_the_one_most_models_have():
    assert data.widest_score(data.leaderboard(RESULTS)) == "mt_bench/score"  # two each: the first column
    more = pd.concat([RESULTS, pd.DataFrame([_row("org/c", "c1", "tiny_mc", "acc", 0.75)])])
    assert data.widest_score(data.leaderboard(more)) == "tiny_mc/acc"
    assert data.widest_score(data.leaderboard(RESULTS.iloc[:0])) is None


def test_filter_by_search_and_benchmarks():
    table = data.leaderboard(RESULTS)
    assert list(data.filter_leaderboard(table, "ORG/A").model_sha) == ["a1", "a2"]
    assert list(data.filter_leaderboard(table, "b1").model) == ["org/b"]
    assert list(data.filter_leaderboard(table, "", ["tiny_mc"]).columns) == ["model", "model_sha", "tiny_mc/acc"]
    assert len(data.filter_leaderboard(table, "nothing")) == 0


def test_plot_data_is_long_and_skips_missing_scores():
    long = data.plot_data(data.leaderboard(RESULTS))
    assert list(long.columns) == ["model", "score", "value", "bar"]
    assert len(long) == 4 and set(long.model) == {"org/a@a1", "org/a@a2", "org/b@b1"}
    assert long.bar.is_unique and all(bar == f"{s} | {m}" for bar, s, m in zip(long.bar, long.score, long.model))


def test_model_results_are_those_of_that_revision_only():
    assert list(data.model_results(RESULTS, "org/a", "a2").value) == [0.25]
    assert len(data.model_results(RESULTS, "org/a", "a1")) == 3


def test_lineage_table_follows_the_training_dataset_to_what_made_it():
    model = Lineage("train sft", {}, inputs=[ArtifactRef("train", "org/deita", "dataset", "v1", "d" * 40)],
                    models=[ArtifactRef("base_model", "org/base", "model", None, "b" * 40)])
    deita = Lineage("build deita", {}, inputs=[ArtifactRef("pool", "org/pool", "dataset", "v0", "p" * 40)],
                    models=[ArtifactRef("complexity_scorer", "org/scorer", "model", None, "s" * 40)])
    table = data.lineage_table("org/m@123", model, {f"org/deita@{'d' * 40}": (deita, "d" * 40)})
    assert list(table.repo_id) == ["org/deita", "org/base", "org/pool", "org/scorer"]
    assert list(table.made_by) == ["train sft", "train sft", "build deita", "build deita"]
    assert table.artifact.iloc[2] == "org/deita@dddddddddddd"


def test_card_summary_lists_training_metrics():
    summary = data.card_summary({"license": "mit", "datasets": ["x", "y"], "training_metrics": {"train_loss": 1.5}})
    assert summary.values.tolist() == [["license", "mit"], ["datasets", "x, y"], ["training_metrics.train_loss", "1.5"]]


def test_histogram_shares_bins_across_series():
    hist = data.histogram({"a": [0.0, 1.0, 1.0], "b": [0.5, float("nan")]}, bins=2)
    assert hist.groupby("series")["count"].sum().to_dict() == {"a": 3, "b": 1}
    assert list(hist[hist.series == "a"].bin) == list(hist[hist.series == "b"].bin)


def test_deita_views():
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    scored = pd.DataFrame({"final_score": [3.0, 1.0], "complexity_scores": [[1.0], [2.0]],
                           "quality_scores": [[3.0], [4.0]], "selection_decision": ["selected", "too_similar"]})
    assert set(data.deita_scores(scored).series) == {"final_score", "complexity (per turn)", "quality (per turn)"}
    assert data.decision_counts(scored).set_index("decision").rows.to_dict() == {"selected": 1, "too_similar": 1}
    selected = pd.DataFrame({"rank": [1, 0], "id": ["y", "x"], "messages": [messages, messages],
                             "final_score": [2.0, 3.0], "complexity_scores": [[1.0], [2.0]],
                             "quality_scores": [[3.0, 1.5], [4.0]], "nearest_selected_similarity": [0.9, None]})
    view = data.deita_selected(selected)
    assert list(view.id) == ["x", "y"] and view.prompt[0] == "q1" and view.quality_scores[1] == "3.000, 1.500"


def test_pf_views_show_every_filter_score_and_rejections():
    rows = pd.DataFrame({"id": ["r"], "input": ["What? <image>"], "original": ["red"], "output": ["It is red."],
                         "rouge_score": [0.1], "reward": [0.5], "nli_similarity": [[0.1, 0.8, 0.1]],
                         "sts_similarity": [None], "paragraph_clip_scores": [[]], "filtered_paragraphs": [[]]})
    view = data.pf_rows(rows)
    assert view.iloc[0].to_dict() == {"id": "r", "input": "What? <image>", "original": "red", "output": "It is red.",
                                      "rouge_score": "0.1000", "reward": "0.5000", "nli_similarity": "0.100, 0.800, 0.100",
                                      "sts_similarity": "", "paragraph_clip_scores": "", "filtered_paragraphs": 0}
    rejected = pd.DataFrame({"row_index": [3], "id": ["z"], "stage": ["length"], "source": ["vqa"], "field": [None],
                             "code": ["too_short"], "reason": ["4 characters"], "score": ["4"], "raw": ["{}"]})
    assert list(data.rejected_rows(rejected).columns) == ["row_index", "id", "stage", "source", "field", "code",
                                                          "reason", "score"]


def test_paired_answers_carry_judge_scores():
    def answers(model, sha, text):
        return pd.DataFrame({"question_id": ["81", "81"], "turn": [1, 2], "category": ["writing"] * 2,
                             "messages": [[{"role": "user", "content": "t1"}],
                                          [{"role": "user", "content": "t1"}, {"role": "assistant", "content": "x"},
                                           {"role": "user", "content": "t2"}]],
                             "answer": [text + "1", text + "2"], "model": [model] * 2, "model_sha": [sha] * 2})
    judged = pd.DataFrame({"model": ["org/a"], "model_sha": ["a1"], "question_id": ["81"], "turn": [2], "score": [7.0]})
    pairs = data.paired_answers(answers("org/a", "a1", "A"), answers("org/b", "b1", "B"), judged)
    assert pairs[["question", "answer_a", "answer_b"]].values.tolist() == [["t1", "A1", "B1"], ["t2", "A2", "B2"]]
    assert pairs.score_a.fillna(-1).tolist() == [-1, 7.0] and pairs.score_b.isna().all()  # b was not graded


def test_config_names_repos_with_revisions():
    config = build(SpaceConfig, {"results": "org/results", "models": ["org/a@v1", "org/a@v2"], "pf": ["org/pf@v1"]})
    assert config.model_ids() == ["org/a"] and config.dataset_ids() == ["org/results", "org/pf"]
    assert RepoAt.parse("org/a@v1") == RepoAt("org/a", "v1") and str(RepoAt("org/a")) == "org/a"
    with pytest.raises(RecipeError, match="namespace/name"):
        build(SpaceConfig, {"models": ["no-namespace@v1"]})


def test_category_scores_average_readable_judgments_per_model_and_category():
    judgments = pd.DataFrame([
        {"model": "org/a", "model_sha": "a1" * 20, "category": "writing", "score": 8.0, "parse_ok": True},
        {"model": "org/a", "model_sha": "a1" * 20, "category": "writing", "score": 6.0, "parse_ok": True},
        {"model": "org/a", "model_sha": "a1" * 20, "category": "math", "score": -1.0, "parse_ok": False},  # unreadable
        {"model": "org/b", "model_sha": "b1" * 20, "category": "math", "score": 3.0, "parse_ok": True},
    ])
    table = data.category_scores(judgments)
    assert [(r.bar, r.score, r.n) for r in table.itertuples()] == [
        ("math | org/b@b1b1b1b", 3.0, 1), ("writing | org/a@a1a1a1a", 7.0, 2)]
    assert data.category_scores(judgments[judgments.score < 0]).empty


CARD = """---
license: mit
---
# A model

## Statistics

| | |
|---|---|
| training rows | 1,234 |
| selected | 100 |

## Lineage

| not | statistics |
"""


def test_card_statistics_reads_the_statistics_table_only():
    assert data.card_statistics(CARD) == {"training rows": "1,234", "selected": "100"}
    assert data.card_statistics("# no statistics\n") == {}


def _trained(strategy, rows, selected=100):
    model = Lineage("train sft", {}, inputs=[ArtifactRef("train", f"org/{strategy}", "dataset", "v1", strategy[0] * 40)])
    deita = Lineage("build deita", {"selection": {"strategy": strategy, "budget": selected}})
    return data.trained_on(model, {"training rows": str(rows)},
                           {f"org/{strategy}@{strategy[0] * 40}": (deita, strategy[0] * 40, {"selected": str(selected)})})


def test_trained_on_follows_the_lineage_to_the_dataset_strategy_and_rows():
    assert _trained("deita", 90) == {"training_dataset": f"org/deita@{'d' * 12}", "strategy": "deita",
                                     "selected_rows": 100.0, "training_rows": 90.0}
    other = Lineage("train sft", {}, inputs=[ArtifactRef("train", "org/prefs", "dataset", "v1", "p" * 40),
                                             ArtifactRef("base", "org/base", "model", None, "b" * 40)])
    made = Lineage("build preferences", {})
    got = data.trained_on(other, {}, {f"org/prefs@{'p' * 40}": (made, "p" * 40, {})})
    assert got["strategy"] == "(build preferences)" and math.isnan(got["training_rows"])
    assert got["training_dataset"] == f"org/prefs@{'p' * 12}" and math.isnan(got["selected_rows"])
    nothing = data.trained_on(None, {}, {})  # not made by alignsmith: no lineage
    assert nothing["strategy"] == "unknown" and nothing["training_dataset"] == ""


def test_training_table_and_plot_put_scores_against_training_rows_by_strategy():
    board = data.leaderboard(pd.DataFrame([_row("org/a", "a1", "tiny_mc", "acc", 0.5),
                                           _row("org/b", "b1", "tiny_mc", "acc", 0.25),
                                           _row("org/c", "c1", "mt_bench", "score", 6.0)]))
    table = data.training_table(board, {("org/a", "a1"): _trained("deita", 90),
                                        ("org/b", "b1"): _trained("random", 180, 200)})
    assert list(table.columns) == [*data.TRAINING_COLUMNS, "mt_bench/score", "tiny_mc/acc"]
    assert list(table.strategy) == ["deita", "random", "unknown"]  # org/c: nothing known of its training
    points = data.training_plot(table, "tiny_mc/acc")
    assert points.values.tolist() == [["org/a@a1", "deita", 90.0, 0.5], ["org/b@b1", "random", 180.0, 0.25]]
    assert data.training_plot(table, "mt_bench/score").empty  # org/c has a score but no training rows
    assert data.training_plot(table, None).empty and data.training_plot(table, "nope").empty
    assert list(data.training_table(board.iloc[:0], {}).columns)[:len(data.TRAINING_COLUMNS)] == data.TRAINING_COLUMNS
