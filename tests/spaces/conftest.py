"""Shared by the Space tests: the app over the embedded Hub, launched twice.

* ``demo_*``: over what the main job (``recipes/chain/demo.yaml``, every stage for real) publishes:
  the Space's data as users get it.
* ``published``/``app_url``/``client``: over small releases published here with known contents, so
  the app's tables can be checked value by value.
"""

import io
import os
import socket
from pathlib import Path

import pytest

from alignsmith.cards import CardContent, model_card
from alignsmith.cli import main
from alignsmith.lineage import ArtifactRef, Lineage
from alignsmith.publish import publish_dataset, publish_folder
from alignsmith.recipes import OutputRepo, build
from alignsmith.results import ResultRow, append_results
from spaces.config import SpaceConfig

NS = "space-test"
MESSAGES = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(colour: str) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _publish(name: str, configs: dict, lineage: Lineage | None = None, statistics: dict | None = None) -> str:
    import datasets

    splits = {config: {"train": datasets.Dataset.from_list(rows, features=features)}
              for config, (rows, features) in configs.items()}
    publish_dataset(OutputRepo(repo_id=f"{NS}/{name}", tag="v1"), splits, CardContent(title=name, summary="test data", statistics=statistics or {}),
                    lineage or Lineage(command="test", recipe={}))
    return f"{NS}/{name}@v1"


def _deita(pool_sha: str) -> str:
    from datasets import Features, List, Value

    chat = List({"role": Value("string"), "content": Value("string")})
    scored = [{"id": f"r{i}", "messages": MESSAGES, "final_score": float(i), "complexity_scores": [1.0 + i],
               "quality_scores": [2.0 + i], "selection_decision": "selected" if i else "too_similar"} for i in range(3)]
    selected = [{"id": f"r{i}", "messages": MESSAGES, "rank": 2 - i, "final_score": float(i),
                 "complexity_scores": [1.0 + i], "quality_scores": [2.0 + i], "nearest_selected_similarity": 0.1 * i}
                for i in (1, 2)]
    rejected = [{"row_index": 3, "id": "r3", "stage": "convert", "field": "messages", "code": "empty",
                 "reason": "no assistant reply", "raw": "{}"}]
    text, number = Value("string"), Value("float64")
    return _publish("deita", {
        "scored": (scored, Features({"id": text, "messages": chat, "final_score": number,
                                     "complexity_scores": List(number), "quality_scores": List(number),
                                     "selection_decision": text})),
        "selected": (selected, Features({"id": text, "messages": chat, "rank": Value("int64"), "final_score": number,
                                         "complexity_scores": List(number), "quality_scores": List(number),
                                         "nearest_selected_similarity": Value("float32")})),
        "rejected": (rejected, Features({k: Value("int64" if k == "row_index" else "string") for k in rejected[0]})),
    }, Lineage(command="build deita", recipe={"selection": {"strategy": "deita", "budget": 2}},
               inputs=[ArtifactRef("pool", f"{NS}/pool", "dataset", "v0", pool_sha)]), {"selected": 2})


def _trained(tmp, deita: str) -> str:
    """A model (a card, no weights) whose lineage says it trained on ``deita``, its card on how many rows."""
    from huggingface_hub import HfApi

    repo_id, tag = deita.split("@")
    ref = ArtifactRef("train", repo_id, "dataset", tag, HfApi().repo_info(repo_id, repo_type="dataset", revision=tag).sha)
    lineage = Lineage(command="train sft", recipe={}, inputs=[ref])
    folder = tmp / "trained"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    output = OutputRepo(repo_id=f"{NS}/trained", tag="v1")
    card = model_card(output.repo_id, CardContent(title="trained", summary="test model",
                                                  statistics={"training rows": 2}), lineage, base_model=None)
    return publish_folder(output, folder, card, lineage).commit_sha


def _pf() -> str:
    from datasets import Features, Image, List, Value

    text, number = Value("string"), Value("float64")
    rows = [{"id": f"v{i}", "input": "What colour? <image>", "original": colour, "output": f"It is {colour}.",
             "images": [_png(colour)], "rouge_score": 0.2, "reward": 0.5 + i, "nli_similarity": [0.1, 0.8, 0.1]}
            for i, colour in enumerate(["red", "blue"])]
    rejected = [{"row_index": 2, "id": "v2", "stage": "length", "source": "vqa", "score": "3", "field": None,
                 "code": "too_short", "reason": "3 characters", "raw": "{}"}]
    return _publish("pf", {
        "vqa": (rows, Features({"id": text, "input": text, "original": text, "output": text, "images": List(Image()),
                                "rouge_score": number, "reward": number, "nli_similarity": List(number)})),
        "rejected": (rejected, Features({k: Value("int64" if k == "row_index" else "string") for k in rejected[0]})),
    })


def _answers(name: str, model: str, sha: str, judged: bool) -> str:
    from datasets import Features, List, Value

    text = Value("string")
    rows = [{"question_id": "81", "turn": 1, "category": "writing", "messages": MESSAGES[:1], "answer": f"{name} says hi",
             "model": model, "model_sha": sha}]
    features = {"question_id": text, "turn": Value("int64"), "category": text,
                "messages": List({"role": text, "content": text}), "answer": text, "model": text, "model_sha": text}
    if not judged:
        return _publish(f"{name}-answers", {"answers": (rows, Features(features))})
    judgment = {"question_id": "81", "turn": 1, "category": "writing", "model": model, "model_sha": sha, "score": 8.0,
                "parse_ok": True}
    return _publish(f"{name}-judgments", {"judgments": ([judgment], Features({
        "question_id": text, "turn": Value("int64"), "category": text, "model": text, "model_sha": text,
        "score": Value("float64"), "parse_ok": Value("bool")}))})


@pytest.fixture(scope="package")
def published(hub, tmp_path_factory):
    """Two tiny chat models, a model card trained on the Deita set, their results, and Deita, PF, answers and judgments datasets, all on the Hub."""
    from huggingface_hub import HfApi

    tmp = tmp_path_factory.mktemp("space")
    shas = {}
    for seed, name in enumerate(["tiny-a", "tiny-b"]):
        assert main(["models", "tiny", "--out", str(tmp / name), "--seed", str(seed), "--publish", f"{NS}/{name}",
                     "--tag", "v1", "--hub", hub.url]) == 0
        shas[name] = HfApi().repo_info(f"{NS}/{name}", revision="v1").sha
    deita = _deita("p" * 40)
    shas["trained"] = _trained(tmp, deita)
    append_results(f"{NS}/results", [
        ResultRow(f"{NS}/tiny-a", shas["tiny-a"], "mt_bench", "score", 5.5, 80),
        ResultRow(f"{NS}/tiny-a", shas["tiny-a"], "tiny_mc", "acc", 0.5, 8),
        ResultRow(f"{NS}/tiny-b", shas["tiny-b"], "mt_bench", "score", 6.5, 80),
        ResultRow(f"{NS}/trained", shas["trained"], "tiny_mc", "acc", 0.75, 8),  # trained on the Deita set
    ])
    config = build(SpaceConfig, {
        "title": "Space test", "results": f"{NS}/results", "models": [f"{NS}/tiny-a@v1", f"{NS}/tiny-b@v1"],
        "deita": [deita], "pf": [_pf()],
        "answers": [_answers("a", f"{NS}/tiny-a", shas["tiny-a"], False),
                    _answers("b", f"{NS}/tiny-b", shas["tiny-b"], False)],
        "judgments": [_answers("a", f"{NS}/tiny-a", shas["tiny-a"], True)], "max_new_tokens": 8,
    }, "space config")
    return config, shas, tmp


def _launched(config: SpaceConfig):
    """The app over ``config``, launched on a free loopback port; yields its URL."""
    from spaces.app import build_demo
    from spaces.source import HubSource

    demo = build_demo(HubSource(config))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(), quiet=True)
    try:
        yield url
    finally:
        demo.close()


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, analytics_enabled=False)


@pytest.fixture(scope="package")
def app_url(published):
    yield from _launched(published[0])


@pytest.fixture(scope="package")
def client(app_url):
    return _client(app_url)


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def demo(hub, tmp_path_factory) -> SpaceConfig:
    """The main job run on the session's Hub, in a scratch folder holding the repository's ``recipes`` and
    ``data`` (its paths are relative, as in scripts/demo.sh); the config its ``space push`` step shows."""
    from alignsmith.recipes import load_recipe
    from spaces.config import SpaceRecipe

    work = tmp_path_factory.mktemp("demo")
    for name in ("recipes", "data"):
        (work / name).symlink_to(ROOT / name)
    here = os.getcwd()
    os.chdir(work)
    try:
        assert main(["chain", "run", "--config", "recipes/chain/demo.yaml", "--hub", hub.url]) == 0
        return load_recipe(SpaceRecipe, "recipes/space/push/demo.yaml").show
    finally:
        os.chdir(here)


@pytest.fixture(scope="package")
def demo_url(demo):
    yield from _launched(demo)


@pytest.fixture(scope="package")
def demo_client(demo_url):
    return _client(demo_url)
