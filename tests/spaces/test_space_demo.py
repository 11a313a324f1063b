"""The Space over the main job's releases: every stage ran for real (``recipes/chain/demo.yaml`` on the session's
Hub), the app is launched over what its ``space push`` step shows, and every named endpoint is called through
gradio_client. The values are those of tiny random-weight models; what is checked is that each one is the
published one, read back through the app."""

from __future__ import annotations

import math

import pytest
from datasets import load_dataset
from huggingface_hub import HfApi

from alignsmith.lineage import read_lineage
from spaces.config import RepoAt


def _rows(value: dict) -> list[dict]:
    return [dict(zip(value["headers"], row)) for row in value["data"]]


def _points(plot: dict) -> list[dict]:
    return [dict(zip(plot["columns"], point)) for point in plot["data"]]


def _results(demo) -> list[dict]:
    ref = RepoAt.parse(demo.results)
    return load_dataset(ref.repo_id, revision=ref.revision, split="train").to_list()


def test_the_leaderboard_has_every_published_result(demo_client, demo):
    published = _results(demo)
    table, plot = demo_client.predict("", [], api_name="/leaderboard")
    rows = {(r["model"], r["model_sha"]): r for r in _rows(table)}
    assert set(rows) == {(r["model"], r["model_sha"]) for r in published}
    for result in published:
        assert rows[result["model"], result["model_sha"]][f"{result['benchmark']}/{result['metric']}"] == \
            pytest.approx(result["value"], abs=1e-4)
    assert {r["benchmark"] for r in published} == {"mt_bench", "tiny_mc|0", "vqa_eval", "pope_shapes"}
    assert len(plot["data"]) == len(published)
    mt_bench = [r for r in published if (r["benchmark"], r["metric"]) == ("mt_bench", "score")]
    assert {r["model"] for r in mt_bench} == {"alignsmith-demo/tiny-sft", "alignsmith-demo/tiny-chain-dpo"}
    table, _ = demo_client.predict("dpo", ["mt_bench"], api_name="/leaderboard")
    assert [r["model"] for r in _rows(table)] == ["alignsmith-demo/tiny-chain-dpo"]


def test_score_against_training_data_follows_each_models_lineage_to_its_selection(demo_client):
    table, plot = demo_client.predict("tiny_mc|0/acc", api_name="/training_data")
    rows = {r["model"]: r for r in _rows(table)}
    strategies = {"tiny-sft": "deita", "tiny-sft-deita-50": "deita", "tiny-sft-random": "random",
                  "tiny-sft-longest": "response_length"}
    for name, strategy in strategies.items():
        row = rows[f"alignsmith-demo/{name}"]
        assert row["strategy"] == strategy
        model, _ = read_lineage(row["model"], "model", "v1.0.0")
        (data,) = [ref for ref in model.inputs if ref.repo_type == "dataset"]
        assert row["training_dataset"] == f"{data.repo_id}@{data.sha[:12]}"
        lineage, _ = read_lineage(data.repo_id, "dataset", data.sha)
        assert lineage.command == "build deita" and lineage.recipe["selection"]["strategy"] == strategy
        selected = load_dataset(data.repo_id, "selected", revision=data.sha, split="train")
        assert row["selected_rows"] == selected.num_rows <= lineage.recipe["selection"]["budget"]
        held_out = math.ceil(model.recipe["data"]["eval_size"] * selected.num_rows)  # datasets' train_test_split
        assert row["training_rows"] == selected.num_rows - held_out > 0
    points = _points(plot)
    assert sorted(p["strategy"] for p in points) == sorted(strategies.values())
    assert len({p["training_rows"] for p in points if p["strategy"] == "deita"}) == 2  # two budgets: two sizes


def test_the_model_view_shows_the_sft_models_lineage_and_results_at_its_sha(demo_client, demo):
    sha = HfApi().repo_info("alignsmith-demo/tiny-sft", revision="v1.0.0").sha
    card, lineage, results, loss = demo_client.predict("alignsmith-demo/tiny-sft@v1.0.0", api_name="/model")
    assert {r["field"] for r in _rows(card)} >= {"base_model", "datasets"}
    made = {r["made_by"] for r in _rows(lineage)}
    assert {"train sft", "build deita"} <= made
    expected = {(r["benchmark"], r["metric"]) for r in _results(demo)
                if (r["model"], r["model_sha"]) == ("alignsmith-demo/tiny-sft", sha)}
    assert {(r["benchmark"], r["metric"]) for r in _rows(results)} == expected and expected
    assert loss is not None  # the training curve from the card


def test_chat_and_side_by_side_answer_with_the_trained_models(demo_client):
    job = demo_client.submit("alignsmith-demo/tiny-sft@v1.0.0", "Hello", [], api_name="/chat")
    final = job.result()
    assert final[-1]["role"] == "assistant" and final[-1]["content"][0]["text"]
    job = demo_client.submit("alignsmith-demo/tiny-sft@v1.0.0", "alignsmith-demo/tiny-chain-dpo@v1.0.0", "Hi",
                             api_name="/side_by_side")
    a, b = job.result()
    assert a and b


def test_mt_bench_answers_and_judge_scores_side_by_side(demo_client, demo):
    a, b = demo.answers
    saved = _rows(demo_client.predict(a, b, api_name="/saved_answers"))
    answers = load_dataset(RepoAt.parse(a).repo_id, "answers", revision=RepoAt.parse(a).revision, split="train")
    assert len(saved) == answers.num_rows and {r["answer_a"] for r in saved} == set(answers["answer"])
    judged = load_dataset(RepoAt.parse(demo.judgments[0]).repo_id, "judgments",
                          revision=RepoAt.parse(demo.judgments[0]).revision, split="train")
    assert sorted(r["score_a"] for r in saved) == sorted(judged["score"]) and all(judged["parse_ok"])
    categories = _points(demo_client.predict(api_name="/mt_bench_categories"))
    assert {p["model"].partition("@")[0] for p in categories} == {"alignsmith-demo/tiny-sft",
                                                                  "alignsmith-demo/tiny-chain-dpo"}
    assert all(1 <= p["score"] <= 10 for p in categories) and sum(p["n"] for p in categories) == 2 * answers.num_rows


def test_the_dataset_explorer_reads_the_published_deita_and_pf_sets(demo_client, demo):
    deita = demo.deita[0]
    decisions, scores, selected, rejected = demo_client.predict(deita, api_name="/deita")
    ref = RepoAt.parse(deita)
    kept = load_dataset(ref.repo_id, "selected", revision=ref.revision, split="train")
    assert {r["decision"]: r["rows"] for r in _rows(decisions)}["selected"] == kept.num_rows
    assert [r["rank"] for r in _rows(selected)] == sorted(kept["rank"]) and scores["data"]
    pf = demo.pf[0]
    sources = demo_client.predict(pf, api_name="/pf_sources")
    names = [value for _, value in sources["choices"]]
    assert names and "rejected" not in names
    gallery, table = demo_client.predict(pf, names[0], api_name="/pf_source")
    published = load_dataset(RepoAt.parse(pf).repo_id, names[0], revision=RepoAt.parse(pf).revision, split="train")
    assert len(_rows(table)) == published.num_rows and len(gallery) >= 1
    assert [r["output"] for r in _rows(table)] == published["output"]
    rejected = _rows(demo_client.predict(pf, api_name="/pf_rejected"))
    assert rejected == []  # nothing was rejected: the set has no rejected config, and the view says so
