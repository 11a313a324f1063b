"""Polite Flamingo distortion and rewriting through OpenAI-compatible endpoints.

A real ``transformers serve`` on loopback serves the same tiny LM (from the embedded Hub) that the
in-process builds load: with greedy decoding, both give the same published rows. The endpoint
cannot be pinned, so the lineage holds no model ref for it; its URLs and served model name are in
the recipe the lineage records.
"""

import json

import pytest
import torch
import yaml
from datasets import get_dataset_config_names, load_dataset
from huggingface_hub import HfApi, hf_hub_download
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignsmith.cli import main
from alignsmith.lineage import read_lineage
from alignsmith.models import tiny
from alignsmith.recipes import RecipeError, load_recipe
from builders.polite_flamingo.distortions import CLOSING_QUOTE
from builders.polite_flamingo.pairs import LLMDistorter
from builders.polite_flamingo.recipe import PairsRecipe
from builders.polite_flamingo.rewrite import Rewriter
from builders.polite_flamingo.rewrite_recipe import RewriteRecipe

NS = "pf-endpoint-test"
PAIRS, REWRITES = f"{NS}/pairs", f"{NS}/rewrites"
WORDS = "alpha beta gamma delta river mountain garden violin orbit copper lantern".split()


@pytest.fixture(scope="module")
def lm(hub, tmp_path_factory) -> tuple[str, str]:
    """A tiny LM whose greedy continuations depend on the prompt (large random projections) and often close the
    distortion prompt's quote (its embedding scaled up), on the embedded Hub: (repo id, commit sha)."""
    folder = tiny.build_causal_lm(tmp_path_factory.mktemp("lm"), seed=0, hidden_size=32, num_layers=2,
                                  max_position_embeddings=2048)
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    (quote,) = tok.convert_tokens_to_ids(tok.tokenize(CLOSING_QUOTE))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
        model.get_input_embeddings().weight[quote] *= 4
    model.save_pretrained(folder)
    api, repo = HfApi(), f"{NS}/lm"
    api.create_repo(repo, exist_ok=True)
    return repo, api.upload_folder(repo_id=repo, folder_path=str(folder)).oid


@pytest.fixture(scope="module")
def served(serve, lm) -> str:
    repo, sha = lm
    return serve(f"{repo}@{sha}")


def write(path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    rows = [{"id": f"row-{i}", "conversations": [
        {"from": "human", "value": f"Tell me about the {WORDS[i]} number {i}?"},
        {"from": "gpt", "value": f"Sure. The {WORDS[i]} {i} is fine. It has {WORDS[(i + 5) % 11]}. Enjoy."}]}
        for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs_recipe(folder, hub, pool, distorter: dict, tag: str) -> str:
    return write(folder / f"{tag}.yaml", {
        "hub": hub.url, "source": {"path": str(pool), "format": "sharegpt"}, "kinds": ["llm_instructed"],
        "distorter": {"batch_size": 3, **distorter},
        "decoding": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 24, "seed": 0},
        "seed": 7, "work_dir": str(folder / f"work-{tag}"), "shard_size": 3, "output": {"repo_id": PAIRS, "tag": tag}})


def rows(repo: str, config: str, tag: str) -> list[dict]:
    """A published config's rows; none where the build published no such config (nothing rejected)."""
    if config not in get_dataset_config_names(repo, revision=tag):
        return []
    return load_dataset(repo, config, revision=tag, split="train").to_list()


def test_distortion_through_an_endpoint_publishes_the_in_process_rows(hub, lm, served, pool, tmp_path):
    repo, sha = lm
    here = pairs_recipe(tmp_path, hub, pool, {"model": repo, "revision": sha}, "here")
    there = pairs_recipe(tmp_path, hub, pool, {"model": f"{repo}@{sha}", "endpoint": [served]}, "served")
    assert main(["build", "pf-pairs", "--config", here]) == 0
    assert main(["build", "pf-pairs", "--config", there]) == 0
    pairs, rejected = rows(PAIRS, "llm_instructed", "served"), rows(PAIRS, "rejected", "served")
    assert pairs and rejected  # some continuations close the quote, some do not
    assert pairs == rows(PAIRS, "llm_instructed", "here")  # continuations, params and decoding settings
    assert rejected == rows(PAIRS, "rejected", "here")
    assert {json.loads(r["decoding"])["temperature"] for r in pairs} == {0.0}
    lineage, _ = read_lineage(PAIRS, "dataset", "served")
    assert lineage.models == []  # an endpoint cannot be pinned: its URL and model name are in the recipe
    assert {k: lineage.recipe["distorter"][k] for k in ("model", "endpoint", "revision")} == {
        "model": f"{repo}@{sha}", "endpoint": [served], "revision": None}
    assert [m.sha for m in read_lineage(PAIRS, "dataset", "here")[0].models] == [sha]


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    """Generic (instruction, short answer, image) rows; the text rewriter reads ``<image>`` as text."""
    folder = tmp_path_factory.mktemp("generic")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "red.png")
    rows = [{"id": f"gen-{i}", "instruction": f"Which {WORDS[i]} is on the left?", "answer": f"The {WORDS[i + 1]}.",
             "images": ["red.png"] if i % 2 else []} for i in range(5)]
    (folder / "generic.json").write_text(json.dumps(rows))
    return folder


def rewrite_recipe(folder, hub, generic, rewriter: dict, tag: str, **overrides) -> str:
    return write(folder / f"{tag}.yaml", {
        "hub": hub.url,
        "sources": [{"task": "generic", "name": "generic", "path": str(generic / "generic.json"),
                     "image_root": str(generic)}],
        "rewriter": {"batch_size": 2, **rewriter},
        "decoding": {"temperature": 0.0, "max_new_tokens": 16, "seed": 0},
        "filters": {"min_chars": 1}, "work_dir": str(folder / f"work-{tag}"), "shard_size": 2,
        "output": {"repo_id": REWRITES, "tag": tag}, **overrides})


def test_rewriting_through_an_endpoint_publishes_the_in_process_rows(hub, lm, served, generic, tmp_path):
    repo, sha = lm
    here = rewrite_recipe(tmp_path, hub, generic, {"model": repo, "revision": sha}, "here")
    there = rewrite_recipe(tmp_path, hub, generic, {"model": f"{repo}@{sha}", "endpoint": served}, "served")
    assert main(["build", "pf-rewrite", "--config", here]) == 0
    assert main(["build", "pf-rewrite", "--config", there]) == 0
    kept, rejected = rows(REWRITES, "generic", "served"), rows(REWRITES, "rejected", "served")
    assert len(kept) + len(rejected) == 5 and kept
    assert get_dataset_config_names(REWRITES, revision="served") == get_dataset_config_names(REWRITES, revision="here")
    assert kept == rows(REWRITES, "generic", "here") and rejected == rows(REWRITES, "rejected", "here")
    assert {json.loads(r["decoding"])["images_fed"] for r in kept} == {False}
    lineage, _ = read_lineage(REWRITES, "dataset", "served")
    assert lineage.models == [] and lineage.recipe["rewriter"]["endpoint"] == served
    card = open(hf_hub_download(REWRITES, "README.md", repo_type="dataset", revision="served")).read()
    assert f"rewriter `{repo}@{sha}` served at {served}" in card


URLS = ["http://node-0:8000/v1", "http://node-1:8000/v1", "http://node-2:8000/v1"]


def test_each_task_sends_its_rows_to_endpoint_task_modulo_their_number(hub, pool, generic, tmp_path):
    pairs = load_recipe(PairsRecipe, pairs_recipe(tmp_path, hub, pool, {"model": "m", "endpoint": URLS}, "p"))
    rewrite = load_recipe(RewriteRecipe, rewrite_recipe(tmp_path, hub, generic, {"model": "m", "endpoint": URLS},
                                                        "r"))
    expected = [URLS[0], URLS[1], URLS[2], URLS[0], URLS[1]]
    assert [LLMDistorter(pairs, None, task=t).model.base_url for t in range(5)] == expected
    assert [Rewriter(rewrite, None, False, task=t).model.base_url for t in range(5)] == expected
    assert LLMDistorter(pairs, None).model.base_url == URLS[0]
    one = load_recipe(RewriteRecipe, rewrite_recipe(tmp_path, hub, generic, {"model": "m", "endpoint": URLS[1]},
                                                    "one"))
    assert Rewriter(one, None, True, task=4).model.base_url == URLS[1]
    ngram = load_recipe(RewriteRecipe, rewrite_recipe(tmp_path, hub, generic, {"model": "m", "endpoint": URLS},
                                                      "ngram", decoding={"no_repeat_ngram_size": 3}))
    with pytest.raises(RecipeError, match="no_repeat_ngram_size: the OpenAI API has no such field"):
        Rewriter(ngram, None, False)


@pytest.mark.parametrize("spec, error", [
    ({"endpoint": URLS, "revision": "main"}, "revision: applies to Hub models run in this process"),
    ({"endpoint": URLS[0], "dtype": "float16"}, "dtype: applies to models run in this process.*'float16'"),
    ({"endpoint": [URLS[0], "node-1:8000"]}, r"endpoint\[1\]: expected an http\(s\) URL, got 'node-1:8000'"),
    ({"endpoint": "ftp://node"}, r"endpoint: expected an http\(s\) URL"),
    ({"endpoint": []}, "endpoint: expected a URL or a non-empty list"),
])
def test_endpoint_specs_are_checked_at_load(hub, pool, generic, tmp_path, spec, error):
    with pytest.raises(RecipeError, match=error):
        load_recipe(PairsRecipe, pairs_recipe(tmp_path, hub, pool, {"model": "m", **spec}, "p"))
    with pytest.raises(RecipeError, match=error):
        load_recipe(RewriteRecipe, rewrite_recipe(tmp_path, hub, generic, {"model": "m", **spec}, "r"))


def test_rewriter_images_and_multiturn_need_what_an_endpoint_lacks(hub, generic, tmp_path):
    with pytest.raises(RecipeError, match="rewriter.images: applies to an endpoint"):
        load_recipe(RewriteRecipe, rewrite_recipe(tmp_path, hub, generic, {"model": "m", "images": True}, "a"))
    served = {"model": "m", "endpoint": URLS[0]}
    with pytest.raises(RecipeError, match="multiturn.tokenizer: needed with an endpoint rewriter"):
        load_recipe(RewriteRecipe, rewrite_recipe(tmp_path, hub, generic, served, "b", multiturn={"max_img": 2}))
    recipe = load_recipe(RewriteRecipe, rewrite_recipe(tmp_path, hub, generic, served, "c",
                                                       multiturn={"tokenizer": "some/tokenizer"}))
    assert recipe.multiturn.tokenizer == "some/tokenizer"
