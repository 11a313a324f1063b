"""End to end: `alignsmith build pf-pairs` on a small local pool, a tiny distorter on the embedded Hub."""

import json

import pytest
import torch
import yaml
from datasets import get_dataset_config_names, load_dataset
from huggingface_hub import HfApi, hf_hub_download
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignsmith.cli import main
from alignsmith.lineage import pin, read_lineage
from alignsmith.recipes import load_recipe
from alignsmith.records import IMAGE_PLACEHOLDER
from builders.polite_flamingo.distortions import CLOSING_QUOTE
from builders.polite_flamingo.pairs import Work, collect, compute_shards, load_pairs
from builders.polite_flamingo.recipe import PairsRecipe

REPO, TAG = "pf-test/pairs", "v1.0.0"
GOOD_ROWS, BAD_ROWS = 14, 3


@pytest.fixture(scope="module")
def distorter(hub, tmp_path_factory) -> str:
    """A tiny LM whose sampled continuations close the quote sometimes: the quote token's (tied) embedding is
    scaled up, so it is often very likely. Published to the embedded Hub and tagged."""
    from alignsmith.models import tiny

    folder = tiny.build_causal_lm(tmp_path_factory.mktemp("distorter"), seed=0, hidden_size=32, num_layers=2,
                                  max_position_embeddings=2048)
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    (quote,) = tok.convert_tokens_to_ids(tok.tokenize(CLOSING_QUOTE))
    with torch.no_grad():
        model.get_input_embeddings().weight[quote] *= 4
    model.save_pretrained(folder)
    api, repo = HfApi(), "pf-test/tiny-distorter"
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder))
    api.create_tag(repo, tag="v1")
    return repo


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "red.png")
    words = "alpha beta gamma delta river mountain garden violin orbit copper lantern".split()
    rows = []
    for i in range(GOOD_ROWS):
        turns = []
        for t in range(1 + i % 2):
            turns += [{"from": "human", "value": f"Tell me about {words[(i + t) % 11]} number {i}?"},
                      {"from": "gpt", "value": f"Sure. The {words[(i + 3 * t) % 11]} {i} is fine. "
                                               f"It has {words[(i + 5) % 11]} and {words[(i + 7) % 11]}. Enjoy."}]
        rows.append({"id": f"row-{i}", "conversations": turns})
    rows[0] |= {"conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nWhat colour is it?"},
                                  {"from": "gpt", "value": "It is red. A plain red square."}], "images": ["red.png"]}
    rows += [
        {"id": "no-reply", "conversations": [{"from": "human", "value": "Anyone there?"}]},
        {"id": "missing-image", "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER} what?"},
                                                  {"from": "gpt", "value": "A cat."}], "images": ["absent.png"]},
        {"id": "no-placeholder", "conversations": [{"from": "human", "value": "what?"},
                                                   {"from": "gpt", "value": "A dog."}], "images": ["red.png"]},
    ]
    path = folder / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_recipe(path, pool, distorter, hub, work_dir, **overrides) -> str:
    recipe = {
        "hub": hub.url,
        "source": {"path": str(pool), "format": "sharegpt"},
        "kinds": ["random_augmentation", "llm_instructed"],
        "distorter": {"model": distorter, "revision": "v1", "batch_size": 4},
        "decoding": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 24, "seed": 0},
        "seed": 7,
        "work_dir": str(work_dir),
        "shard_size": 4,
        "output": {"repo_id": REPO, "tag": TAG},
        **overrides,
    }
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def built(hub, pool, distorter, tmp_path_factory):
    """The build run once through the CLI: (recipe path, work dir)."""
    folder = tmp_path_factory.mktemp("build")
    path = write_recipe(folder / "recipe.yaml", pool, distorter, hub, folder / "work")
    assert main(["build", "pf-pairs", "--config", path]) == 0
    return path, folder / "work"


def load(config):
    return load_dataset(REPO, config, revision=TAG, split="train")


def recomputed(path, **overrides):
    """Rows and rejections computed (not published) from the recipe at ``path``."""
    recipe = load_recipe(PairsRecipe, path, [x for k, v in overrides.items() for x in (f"--{k}", v)])
    pairs = load_pairs(recipe)
    spec = recipe.distorter
    distorter = pin("distorter", spec.model, "model", spec.revision) if spec else None
    work = Work(recipe, pairs, distorter)
    compute_shards(recipe, pairs, work, distorter)
    return collect(pairs, work), work


def test_each_kind_and_rejected_load_back_by_tag(built, distorter):
    assert set(get_dataset_config_names(REPO, revision=TAG)) == {"random_augmentation", "llm_instructed", "rejected"}
    augmented, distorted, rejected = load("random_augmentation"), load("llm_instructed"), load("rejected")
    columns = ["id", "source", "instruction", "original", "distorted", "images", "kind", "params", "decoding",
               "source_row"]
    assert augmented.column_names == columns and distorted.column_names == columns
    candidates = GOOD_ROWS + sum(1 for i in range(1, GOOD_ROWS) if i % 2)  # row 0 became a one-turn image row
    assert len(augmented) + sum(1 for r in rejected if r["stage"] == "random_augmentation") == candidates
    assert 0 < len(distorted) < candidates
    assert set(augmented["kind"]) == {"random_augmentation"} and set(distorted["kind"]) == {"llm_instructed"}
    assert all(r["decoding"] is None for r in augmented)
    for row in distorted:
        decoding, params = json.loads(row["decoding"]), json.loads(row["params"])
        assert (decoding["temperature"], decoding["top_p"], decoding["max_new_tokens"], decoding["recipe_seed"]) == (
            1.0, 1.0, 24, 0)
        assert params["continuation"].startswith(row["distorted"] + CLOSING_QUOTE)
    image_row = next(r for r in augmented if r["id"] == "row-0#turn0")
    assert len(image_row["images"]) == 1 and image_row["images"][0].getpixel((0, 0)) == (200, 30, 30)
    assert {r["id"]: r["source_row"] for r in augmented}["row-13#turn2"] == 13

    lineage, _ = read_lineage(REPO, "dataset", TAG)
    assert [m.repo_id for m in lineage.models] == [distorter] and lineage.models[0].sha
    assert lineage.inputs[0].role == "source" and lineage.inputs[0].sha


def test_bad_rows_and_unquoted_continuations_are_rejected_with_reasons(built):
    rejected = load("rejected")
    converted = [r for r in rejected if r["stage"] == "convert"]
    assert sorted(r["id"] for r in converted) == ["missing-image", "no-placeholder", "no-reply"]
    unquoted = [r for r in rejected if r["reason"] == "no closing quote in the continuation"]
    assert unquoted and {r["stage"] for r in unquoted} == {"llm_instructed"}
    assert all(CLOSING_QUOTE not in json.loads(r["raw"])["details"]["continuation"] for r in unquoted)
    card = open(hf_hub_download(REPO, "README.md", repo_type="dataset", revision=TAG), encoding="utf-8").read()
    assert f"| rejected source rows | {BAD_ROWS} |" in card
    assert "mean length ratio distorted/original: llm_instructed" in card and "length_ratio.png" in card


def test_same_seed_gives_identical_rows_and_a_killed_run_recomputes_only_its_missing_shard(built, tmp_path):
    path, work_dir = built
    (rows, rejected), work = recomputed(path)  # everything on disk: nothing recomputed
    (fresh_rows, fresh_rejected), _ = recomputed(path, work_dir=str(tmp_path / "fresh"))
    assert fresh_rows == rows and fresh_rejected == rejected

    store = work.stores["llm_instructed"]
    files = {s: store.path(s) for s in range(store.num_shards)}
    before = {s: (p.stat().st_mtime_ns, p.read_bytes()) for s, p in files.items()}
    files[1].unlink()
    (resumed_rows, resumed_rejected), _ = recomputed(path)
    after = {s: (p.stat().st_mtime_ns, p.read_bytes()) for s, p in files.items()}
    assert [s for s in files if after[s][0] != before[s][0]] == [1]
    assert after[1][1] == before[1][1]
    assert (resumed_rows, resumed_rejected) == (rows, rejected)


def test_another_seed_draws_other_distortions(built, tmp_path):
    path, _ = built
    (rows, _), _ = recomputed(path)
    (other, _), _ = recomputed(path, seed="8", kinds="[random_augmentation]", distorter="null",
                               work_dir=str(tmp_path / "other"))
    assert [r["params"] for r in other["random_augmentation"]] != [r["params"] for r in rows["random_augmentation"]]
