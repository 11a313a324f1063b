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
from alignsmith.recipes import RecipeError, load_recipe
from alignsmith.records import IMAGE_PLACEHOLDER
from builders.polite_flamingo.distortions import CLOSING_QUOTE, captions_and_boxes_input
from builders.polite_flamingo.pairs import Work, collect, compute_shards, load_pairs
from builders.polite_flamingo.recipe import PairsRecipe
from builders.polite_flamingo.rewriting import rewriting_prompt

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
        "distorter": {"model": distorter, "revision": "v1", "batch_size": 4} if distorter else None,
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
    return collect(pairs, work, recipe.rewriter_prompt), work


def test_each_kind_and_rejected_load_back_by_tag(built, distorter):
    assert set(get_dataset_config_names(REPO, revision=TAG)) == {"random_augmentation", "llm_instructed", "rejected"}
    augmented, distorted, rejected = load("random_augmentation"), load("llm_instructed"), load("rejected")
    columns = ["id", "source", "instruction", "original", "distorted", "images", "kind", "params", "decoding",
               "source_row", "prompt", "completion"]
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


def test_executor_tasks_publish_the_same_pairs(built, pool, distorter, hub, tmp_path):
    # 14 valid records in 4 shards over 3 tasks, one at a time (in this process: the multi-process runs are in
    # test_deita_build.py and test_pf_rewrite.py)
    path = write_recipe(tmp_path / "recipe.yaml", pool, distorter, hub, tmp_path / "work",
                        output={"repo_id": REPO, "tag": "tasks"}, executor={"kind": "local", "tasks": 3, "workers": 1})
    assert main(["build", "pf-pairs", "--config", path]) == 0
    for config in ("random_augmentation", "llm_instructed", "rejected"):
        assert load_dataset(REPO, config, revision="tasks", split="train").to_list() == load(config).to_list(), config


def test_another_seed_draws_other_distortions(built, tmp_path):
    path, _ = built
    (rows, _), _ = recomputed(path)
    (other, _), _ = recomputed(path, seed="8", kinds="[random_augmentation]", distorter="null",
                               work_dir=str(tmp_path / "other"))
    assert [r["params"] for r in other["random_augmentation"]] != [r["params"] for r in rows["random_augmentation"]]


def test_each_pair_carries_the_rewriters_prompt_and_completion(built):
    for config in ("random_augmentation", "llm_instructed"):
        for row in load(config):
            assert row["prompt"] == rewriting_prompt(row["instruction"], row["distorted"], "paper")
            assert row["completion"] == row["original"]
    image_row = next(r for r in load("random_augmentation") if r["id"] == "row-0#turn0")
    assert f"### Human:\n{IMAGE_PLACEHOLDER}\nWhat colour is it?\n### Assistant:\n(Drafted Response) " in (
        image_row["prompt"])
    card = open(hf_hub_download(REPO, "README.md", repo_type="dataset", revision=TAG), encoding="utf-8").read()
    assert "`paper` rewriter layout" in card and "`completion` (the original response)" in card


def test_the_readme_layout_changes_only_the_prompt_and_no_shard(built):
    path, work_dir = built
    before = {p: p.stat().st_mtime_ns for p in work_dir.rglob("*") if p.is_file()}
    (paper, paper_rejected), _ = recomputed(path)
    (readme, readme_rejected), _ = recomputed(path, rewriter_prompt="readme")
    assert {p: p.stat().st_mtime_ns for p in work_dir.rglob("*") if p.is_file()} == before
    assert readme_rejected == paper_rejected and readme.keys() == paper.keys()
    for kind, rows in readme.items():
        assert [{**r, "prompt": None} for r in rows] == [{**r, "prompt": None} for r in paper[kind]]
        for row, other in zip(rows, paper[kind]):
            assert row["prompt"] == rewriting_prompt(row["instruction"], row["distorted"], "readme") != other["prompt"]


# --- kind (c): captions and boxes --------------------------------------------------------------------------------

CAPS_REPO = "pf-test/pairs-captions"
CAPTIONS = ["A blue square on a table. ", "A small blue tile."]
INSTANCES = [{"category": "tile", "bbox": [0.125, 0.25, 0.5, 0.75]}, {"category": "dining table",
                                                                      "bbox": [0.0, 0.5, 1.0, 1.0]}]
DESCRIPTION = "The image shows a small blue tile resting on a dining table.\n\nIt fills the left half of the frame."


@pytest.fixture(scope="module")
def captions_pool(tmp_path_factory):
    """LLaVA-detail-style rows: a described image with the captions and boxes the description was written from."""
    folder = tmp_path_factory.mktemp("captions_pool")
    Image.new("RGB", (8, 8), (20, 40, 220)).save(folder / "blue.png")

    def row(row_id, *turns, **columns):
        return {"id": row_id, "images": ["blue.png"], **columns, "conversations": [
            {"from": "human" if k % 2 == 0 else "gpt", "value": text} for k, text in enumerate(turns)]}

    ask = f"{IMAGE_PLACEHOLDER}\nDescribe the following image in detail."
    outside = [INSTANCES[0], {"category": "cup", "bbox": [0.5, 0.5, 1.5, 0.9]}]
    rows = [
        row("good", ask, DESCRIPTION, captions=CAPTIONS, instances=INSTANCES),
        row("two-turns", ask, "A blue tile. On a table.", "What colour?", "Blue.", captions=CAPTIONS[1:],
            instances=[]),
        row("no-columns", ask, "A tile."),
        row("no-instances", ask, "A tile again.", captions=CAPTIONS),
        row("outside", ask, "A tile and a cup.", captions=CAPTIONS, instances=outside),
    ]
    path = folder / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def captions_built(hub, captions_pool, tmp_path_factory):
    folder = tmp_path_factory.mktemp("captions_build")
    path = write_recipe(folder / "recipe.yaml", captions_pool, None, hub, folder / "work",
                        kinds=["captions_and_boxes"], output={"repo_id": CAPS_REPO, "tag": TAG})
    assert main(["build", "pf-pairs", "--config", path]) == 0
    return path


def test_captions_and_boxes_pairs_the_description_with_its_captions_and_boxes(captions_built):
    assert set(get_dataset_config_names(CAPS_REPO, revision=TAG)) == {"captions_and_boxes", "rejected"}
    pairs = load_dataset(CAPS_REPO, "captions_and_boxes", revision=TAG)["train"]
    assert pairs["id"] == ["good#turn0", "two-turns#turn0"]  # a record's first turn pair only
    good = pairs[0]
    assert good["distorted"] == captions_and_boxes_input({"captions": CAPTIONS, "instances": INSTANCES})
    assert good["original"] == good["completion"] == DESCRIPTION and good["kind"] == "captions_and_boxes"
    assert good["prompt"] == rewriting_prompt(good["instruction"], good["distorted"], "paper")
    assert json.loads(good["params"]) == {"captions": 2, "boxes": 2} and good["decoding"] is None
    assert len(good["images"]) == 1 and good["images"][0].getpixel((0, 0)) == (20, 40, 220)
    assert json.loads(pairs[1]["params"]) == {"captions": 1, "boxes": 0}


def test_captions_and_boxes_rejects_rows_without_the_columns_or_with_bad_boxes(captions_built):
    rejected = {r["id"]: r for r in load_dataset(CAPS_REPO, "rejected", revision=TAG)["train"]}
    assert set(rejected) == {"no-columns#turn0", "no-instances#turn0", "outside#turn0"}
    assert {r["stage"] for r in rejected.values()} == {"captions_and_boxes"}
    assert {r["field"] for r in rejected.values()} == {"metadata"}
    assert rejected["no-columns#turn0"]["reason"] == (
        "no 'captions' and 'instances' columns (read from the record's metadata)")
    assert rejected["no-instances#turn0"]["reason"] == "no 'instances' column (read from the record's metadata)"
    # the reason leaves the row out (it is in `id`), so the card counts each kind of fault once
    assert rejected["outside#turn0"]["reason"] == "instances[1]: bbox [0.5, 0.5, 1.5, 0.9] is not normalised to [0, 1]"
    assert json.loads(rejected["outside#turn0"]["raw"])["details"]["captions"] == CAPTIONS


def test_captions_and_boxes_needs_the_extra_columns_carried(tmp_path, hub, captions_pool):
    path = write_recipe(tmp_path / "recipe.yaml", captions_pool, None, hub, tmp_path / "work",
                        kinds=["random_augmentation", "captions_and_boxes"],
                        source={"path": str(captions_pool), "format": "sharegpt", "extra_columns": "drop"})
    with pytest.raises(RecipeError, match="source.extra_columns: kind 'captions_and_boxes' .* got 'drop'"):
        load_recipe(PairsRecipe, path, [])
    assert load_recipe(PairsRecipe, path, ["--kinds", "[random_augmentation]"]).source.extra_columns == "drop"
