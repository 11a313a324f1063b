"""The Space end to end: real alignsmith releases on the embedded Hub, the app launched, every endpoint
called through gradio_client, and ``space push`` giving back the rendered folder."""

from pathlib import Path

import yaml

from alignsmith.cli import main
from spaces.chat import EMPTY_REPLY

NS = "space-test"  # where tests/spaces/conftest.py publishes


def _rows(value: dict) -> list[dict]:
    return [dict(zip(value["headers"], row)) for row in value["data"]]


def test_every_endpoint_is_named(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/leaderboard", "/model", "/chat", "/side_by_side", "/saved_answers", "/deita", "/pf_sources",
            "/pf_source", "/pf_rejected", "/mt_bench_categories", "/training_data"} <= named


def test_leaderboard_and_its_filters(client, published):
    _, shas, _ = published
    table, plot = client.predict("", [], api_name="/leaderboard")
    rows = _rows(table)
    assert [(r["model"], r["model_sha"]) for r in rows] == [(f"{NS}/tiny-a", shas["tiny-a"]), (f"{NS}/tiny-b", shas["tiny-b"]),
                                                            (f"{NS}/trained", shas["trained"])]
    assert rows[0]["mt_bench/score"] == 5.5 and rows[0]["tiny_mc/acc"] == 0.5
    assert plot["columns"] == ["model", "score", "value", "bar"] and len(plot["data"]) == 4
    table, _ = client.predict("tiny-b", ["mt_bench"], api_name="/leaderboard")
    assert table["headers"] == ["model", "model_sha", "mt_bench/score"] and len(table["data"]) == 1


def test_training_data_follows_lineage_to_the_selection_and_plots_score_against_rows(client, published):
    _, shas, _ = published
    table, plot = client.predict("tiny_mc/acc", api_name="/training_data")
    rows = {r["model"]: r for r in _rows(table)}
    trained = rows[f"{NS}/trained"]
    assert trained["training_dataset"].startswith(f"{NS}/deita@") and trained["strategy"] == "deita"
    assert (trained["selected_rows"], trained["training_rows"], trained["tiny_mc/acc"]) == (2, 2, 0.75)
    assert rows[f"{NS}/tiny-a"]["strategy"] == "unknown"  # made by `models tiny`: no training data
    points = [dict(zip(plot["columns"], p)) for p in plot["data"]]
    assert points == [{"model": f"{NS}/trained@{shas['trained'][:7]}", "strategy": "deita", "training_rows": 2,
                       "value": 0.75}]


def test_model_view(client, published):
    _, shas, _ = published
    card, lineage, results, _loss = client.predict(f"{NS}/tiny-a@v1", api_name="/model")
    assert {r["field"] for r in _rows(card)} >= {"license", "tags"}
    assert {r["made_by"] for r in _rows(lineage)} <= {"models tiny"}
    assert [(r["benchmark"], r["value"]) for r in _rows(results)] == [("mt_bench", 5.5), ("tiny_mc", 0.5)]


def test_chat_streams_tokens_from_the_pinned_model(client):
    job = client.submit(f"{NS}/tiny-a@v1", "Hello there", [], api_name="/chat")
    updates = list(job)
    final = job.result()
    assert final[0]["content"][0]["text"] == "Hello there" and final[-1]["role"] == "assistant"
    # one update per generated token (8, and the streamer's last flush); a random-weight tiny model greedily
    # repeats the template's <|assistant|> marker, a special token the reply text leaves out
    assert len(updates) > 8 and all(u[-1]["role"] == "assistant" for u in updates)
    assert final[-1]["content"][0]["text"] == EMPTY_REPLY  # said, not left blank


def test_side_by_side_live_and_saved(client):
    job = client.submit(f"{NS}/tiny-a@v1", f"{NS}/tiny-b@v1", "Hi", api_name="/side_by_side")
    updates = list(job)
    assert len(updates) > 16 and len(job.result()) == 2  # A's tokens streamed, then B's
    categories = client.predict(api_name="/mt_bench_categories")
    assert [(r[1], r[2], r[3]) for r in categories["data"]] == [("writing", 8.0, 1)]  # tiny-a's one judgment
    saved = _rows(client.predict(f"{NS}/a-answers@v1", f"{NS}/b-answers@v1", api_name="/saved_answers"))
    assert saved == [{"question_id": "81", "turn": 1, "category": "writing", "question": "Name a colour.",
                      "answer_a": "a says hi", "score_a": 8.0, "answer_b": "b says hi", "score_b": None}]


def test_dataset_explorer(client):
    decisions, scores, selected, rejected = client.predict(f"{NS}/deita@v1", api_name="/deita")
    assert {r["decision"]: r["rows"] for r in _rows(decisions)} == {"selected": 2, "too_similar": 1}
    assert {row[2] for row in scores["data"]} == {"final_score", "complexity (per turn)", "quality (per turn)"}
    assert [r["rank"] for r in _rows(selected)] == [0, 1] and _rows(selected)[0]["prompt"] == "Name a colour."
    assert _rows(rejected)[0]["reason"] == "no assistant reply"
    sources = client.predict(f"{NS}/pf@v1", api_name="/pf_sources")
    assert (sources["choices"], sources["value"]) == ([["vqa", "vqa"]], "vqa")  # the sources, not rejected
    gallery, table = client.predict(f"{NS}/pf@v1", "vqa", api_name="/pf_source")
    assert len(gallery) == 2 and [r["original"] for r in _rows(table)] == ["red", "blue"]
    assert _rows(table)[1]["reward"] == "1.5000"
    assert _rows(client.predict(f"{NS}/pf@v1", api_name="/pf_rejected"))[0]["stage"] == "length"


def test_space_push_publishes_the_rendered_folder(published, hub, tmp_path):
    from huggingface_hub import SpaceCardData, snapshot_download
    from huggingface_hub.repocard import RepoCard

    config, _, _ = published
    folder = tmp_path / "folder"
    recipe = tmp_path / "push.yaml"
    recipe.write_text(yaml.safe_dump({"hub": hub.url, "show": {k: v for k, v in vars(config).items()},
                                      "folder": str(folder), "output": {"repo_id": f"{NS}/space", "tag": "v1"}}))
    assert main(["space", "push", "--config", str(recipe)]) == 0
    card = RepoCard((folder / "README.md").read_text(encoding="utf-8"))
    data = SpaceCardData(**card.data.to_dict())
    import gradio

    assert (data.sdk, data.sdk_version, data.python_version, data.app_file) == ("gradio", gradio.__version__, "3.11",
                                                                                 "app.py")
    assert data.models == [f"{NS}/tiny-a", f"{NS}/tiny-b"] and f"{NS}/results" in data.datasets
    assert {r["role"] for r in card.data.to_dict()["alignsmith"]["inputs"]} >= {"results", "deita", "pf"}
    got = Path(snapshot_download(f"{NS}/space", repo_type="space", revision="v1", local_dir=tmp_path / "got"))
    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    remote = {p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*")
              if p.is_file() and ".cache" not in p.relative_to(got).parts and p.name != ".gitattributes"}  # the Hub's own
    assert remote == local and {"app.py", "space.yaml", "requirements.txt", "spaces/app.py",
                                "alignsmith/lineage.py"} <= set(local)
    assert main(["space", "push", "--config", str(recipe)]) == 1  # the tag exists: never moved
