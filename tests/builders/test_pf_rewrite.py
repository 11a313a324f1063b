"""End to end: `alignsmith build pf-rewrite` (Polite Flamingo part 2) on tiny VQA and caption files, with a tiny
vision-language rewriter and tiny filter models on the embedded Hub (random weights: the rewrites are noise)."""

import json

import pytest
import yaml
from datasets import get_dataset_config_names, load_dataset
from huggingface_hub import HfApi, hf_hub_download
from PIL import Image

from alignsmith.cli import main
from alignsmith.lineage import read_lineage
from alignsmith.recipes import RecipeError, load_recipe
from alignsmith.records import IMAGE_PLACEHOLDER
from builders.polite_flamingo.rewrite import compute_shards, prepare
from builders.polite_flamingo.rewrite_recipe import RewriteRecipe

NS = "pf-rewrite-test"
REPO = f"{NS}/rewritten"
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
MODELS = ("rewriter", "sts", "nli", "clip", "reward")


def _upload(folder, repo):
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder))
    api.create_tag(repo, tag="v1")


@pytest.fixture(scope="module")
def models(hub, tmp_path_factory):
    from alignsmith.models import tiny

    root = tmp_path_factory.mktemp("models")
    assert main(["models", "tiny", "--kind", "vision_language", "--out", str(root / "vlm"), "--publish",
                 f"{NS}/rewriter", "--tag", "v1", "--hub", hub.url, "--max-position-embeddings", "256"]) == 0
    assert main(["models", "tiny", "--kind", "sentence_transformer", "--out", str(root / "sts"), "--publish",
                 f"{NS}/sts", "--tag", "v1", "--hub", hub.url]) == 0
    _upload(tiny.build_sequence_classifier(root / "nli", num_labels=3,
                                           id2label=["contradiction", "entailment", "neutral"]), f"{NS}/nli")
    _upload(tiny.build_sequence_classifier(root / "reward", num_labels=1, seed=1), f"{NS}/reward")
    _upload(tiny.build_clip_model(root / "clip"), f"{NS}/clip")
    return {name: f"{NS}/{name}" for name in MODELS}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """5 VQA questions (one image missing, one annotation without its question) and 5 caption rows (one empty)."""
    folder = tmp_path_factory.mktemp("raw")
    images = folder / "images"
    images.mkdir()
    for i, rgb in enumerate(COLOURS.values()):
        Image.new("RGB", (40, 30), rgb).save(images / f"{i}.png")
    names = list(COLOURS)
    questions = [{"question_id": 100 + i, "image_id": i % 4, "question": f"What colour is the {names[i % 4]} thing?"}
                 for i in range(4)] + [{"question_id": 104, "image_id": 9, "question": "What is missing?"}]
    annotations = [{"question_id": q["question_id"], "image_id": q["image_id"], "multiple_choice_answer": names[k % 4],
                    "answers": [{"answer": names[k % 4]}] * 3} for k, q in enumerate(questions)]
    annotations.append({"question_id": 999, "image_id": 0, "answers": [{"answer": "orphan"}]})
    (folder / "questions.json").write_text(json.dumps({"questions": questions}))
    (folder / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    captions = [{"id": f"cap-{i}", "image": f"{i}.png",
                 "captions": [f"A plain {names[i]} rectangle.", f"Nothing but {names[i]} colour fills the frame."]}
                for i in range(4)]
    captions.append({"id": "cap-empty", "image": "0.png", "captions": []})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in captions))
    generic = [{"id": "gen-short", "instruction": "Which colour is on the left?", "answer": "Red.",
                "images": ["0.png"]},
               {"id": "gen-long", "instruction": "Describe it. " * 200, "answer": "Blue.", "images": ["2.png"]}]
    (folder / "generic.json").write_text(json.dumps(generic))
    return folder


def write_recipe(path, raw, models, hub, work_dir, tag="v1", **overrides):
    recipe = {
        "hub": hub.url,
        "sources": [
            {"task": "vqa", "name": "vqa", "questions_file": str(raw / "questions.json"),
             "annotations_file": str(raw / "annotations.json"), "image_root": str(raw / "images"),
             "image_template": "{image_id}.png"},
            {"task": "caption", "name": "captions", "path": str(raw / "captions.jsonl"),
             "image_root": str(raw / "images")},
            {"task": "generic", "name": "generic", "path": str(raw / "generic.json"),
             "image_root": str(raw / "images")},
        ],
        "rewriter": {"model": models["rewriter"], "revision": "v1", "batch_size": 3},
        "decoding": {"temperature": 0.0, "max_new_tokens": 16, "no_repeat_ngram_size": 3, "seed": 0},
        "filters": {"sts_min": -1.0, "min_chars": 8, "max_chars": 4096, "clip_multi_paragraph_only": False,
                    **{name: {"model": models[name], "revision": "v1"} for name in ("sts", "nli", "clip", "reward")}},
        "multiturn": {"max_img": 3, "max_tokens": 512, "seed": 0},
        "work_dir": str(work_dir),
        "shard_size": 3,
        "output": {"repo_id": REPO, "tag": tag},
        **overrides,
    }
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def built(hub, raw, models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("build")
    path = write_recipe(folder / "recipe.yaml", raw, models, hub, folder / "work")
    assert main(["build", "pf-rewrite", "--config", path]) == 0
    return path, folder / "work"


def load(config, tag="v1"):
    return load_dataset(REPO, config, revision=tag, split="train")


def test_configs_load_back_and_every_row_is_kept_or_rejected_with_a_reason(built):
    configs = set(get_dataset_config_names(REPO, revision="v1"))
    rejected = load("rejected")
    assert {"rejected", "multiturn"} <= configs
    assert all(r["stage"] and r["reason"] for r in rejected)
    totals = {"vqa": 5 + 1, "captions": 5, "generic": 2}  # the orphan annotation is a row of its own
    for name, total in totals.items():
        kept = load(name) if name in configs else []
        dropped = [r for r in rejected if r["source"] == name]
        assert len(kept) + len(dropped) == total, name
        assert len({r["id"] for r in kept} | {r["id"] for r in dropped}) == total
    converted = {r["id"] for r in rejected if r["stage"] == "convert"}
    assert converted == {"104", "999", "cap-empty"}
    (too_long,) = [r for r in rejected if r["stage"] == "rewrite"]
    assert (too_long["id"], too_long["reason"]) == ("gen-long", "prompt longer than the rewriter's context")
    assert {r["stage"] for r in rejected} - {"convert", "rewrite"}  # the seeded tiny CLIP drops a caption
    for r in rejected:
        if r["stage"] not in ("convert", "rewrite"):
            assert r["stage"] in ("length", "change", "sts", "nli", "clip")
            assert json.loads(r["raw"])["output"] is not None and r["score"] is not None
    for name in configs - {"rejected", "multiturn"}:
        for row in load(name):
            assert row["input"].endswith(IMAGE_PLACEHOLDER) and len(row["images"]) == 1
            assert row["reward"] is not None and row["rouge_score"] is not None and row["original"]
            decoding = json.loads(row["decoding"])
            assert (decoding["max_new_tokens"], decoding["no_repeat_ngram_size"]) == (16, 3)
            assert decoding["images_fed"] is True and decoding["finish_reason"] in ("stop", "length")
            if name == "vqa":
                assert len(row["nli_similarity"]) == 3 and row["sts_similarity"] is None
            elif name == "captions":
                assert row["sts_similarity"] is not None and row["nli_similarity"] is None
                assert len(row["paragraph_clip_scores"]) + len(row["filtered_paragraphs"]) >= 1
            else:
                assert row["sts_similarity"] is None and row["nli_similarity"] is None


def test_lineage_names_the_raw_files_and_every_model_at_its_commit(built, models):
    lineage, _ = read_lineage(REPO, "dataset", "v1")
    api = HfApi()
    assert [(m.repo_id, m.sha) for m in lineage.models] == [
        (models[name], api.model_info(models[name], revision="v1").sha) for name in MODELS]
    assert {r.role for r in lineage.inputs} == {"vqa/questions", "vqa/annotations", "captions/annotations",
                                               "generic/annotations"}
    assert all(r.sha for r in lineage.inputs)
    card = open(hf_hub_download(REPO, "README.md", repo_type="dataset", revision="v1"), encoding="utf-8").read()
    assert "| vqa: dropped at convert | 2 |" in card and "| captions: dropped at convert | 1 |" in card
    assert "reward.png" in card and "dropped at nli" in card


def test_a_killed_build_recomputes_only_its_missing_shard(built, tmp_path):
    path, work_dir = built
    recipe = load_recipe(RewriteRecipe, path)
    tasks = prepare(recipe)
    work = tasks.work()
    files = {s: work.store.path(s) for s in range(work.store.num_shards)}
    assert len(files) == 4  # 4 + 4 + 2 records, 3 a shard
    before = {s: (p.stat().st_mtime_ns, p.read_bytes()) for s, p in files.items()}
    files[1].unlink()
    assert compute_shards(recipe, tasks.input(), work, tasks.rewriter, tasks.vision) == [1]
    after = {s: (p.stat().st_mtime_ns, p.read_bytes()) for s, p in files.items()}
    assert [s for s in files if after[s][0] != before[s][0]] == [1]
    assert after[1][1] == before[1][1]  # greedy: the same rewrites
    files[0].unlink()
    assert main(["build", "pf-rewrite", "--config", path, "--output.tag", "v2"]) == 0
    for config in ("vqa", "rejected"):
        assert load(config, "v2").to_list() == load(config).to_list()


def test_local_executor_tasks_publish_the_same_rows_as_one_process(built, raw, models, hub, tmp_path):
    path = write_recipe(tmp_path / "recipe.yaml", raw, models, hub, tmp_path / "work", tag="local",
                        executor={"kind": "local", "tasks": 4, "workers": 2})  # 4 shards: one a task
    assert main(["build", "pf-rewrite", "--config", path]) == 0
    configs = get_dataset_config_names(REPO, revision="v1")
    assert get_dataset_config_names(REPO, revision="local") == configs
    for config in configs:
        assert load(config, "local").to_list() == load(config).to_list(), config
    # every task rewrote and filtered its own shard
    assert len(list((tmp_path / "work").glob("filters-*/shard-*.npz"))) == 4
    assert sorted(p.name for p in (tmp_path / "work" / "executor" / "tasks" / "completions").iterdir()) == [
        "00000", "00001", "00002", "00003"]


def test_changed_filter_settings_refilter_without_rewriting(built, tmp_path):
    path, work_dir = built
    rewrites = {p: p.stat().st_mtime_ns for p in (work_dir / "rewrite").glob("*.npz")}
    assert main(["build", "pf-rewrite", "--config", path, "--output.tag", "strict", "--filters.min_chars", "30",
                 "--multiturn", "null"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (work_dir / "rewrite").glob("*.npz")} == rewrites
    assert len(list(work_dir.glob("filters-*"))) == 2  # each settings' scores kept apart
    short = [r for r in load("rejected", "strict") if r["stage"] == "length"]
    assert short and all(len(json.loads(r["raw"])["output"].strip()) < 30 for r in short)


def test_a_source_whose_filter_model_is_absent_is_a_recipe_error(built):
    path, _ = built
    with pytest.raises(RecipeError, match="filters.nli: needed by source 'vqa'"):
        load_recipe(RewriteRecipe, path, ["--filters.nli", "null"])
    with pytest.raises(RecipeError, match="top_k"):
        load_recipe(RewriteRecipe, path, ["--filters.reward", "null", "--top_k", "2"])


def test_a_text_only_rewriter_continues_the_same_prompt_without_images(hub, raw, models, tmp_path):
    """A causal LM rewriter (through HFChatModel.complete): generic rows only need no filter model."""
    assert main(["models", "tiny", "--kind", "causal_lm", "--out", str(tmp_path / "lm"), "--publish",
                 f"{NS}/text-rewriter", "--tag", "v1", "--hub", hub.url]) == 0
    path = write_recipe(tmp_path / "text.yaml", raw, models, hub, tmp_path / "work", tag="text-v1",
                        sources=[{"task": "generic", "name": "generic", "path": str(raw / "generic.json"),
                                  "image_root": str(raw / "images")}],
                        rewriter={"model": f"{NS}/text-rewriter", "revision": "v1"},
                        filters={"min_chars": 1}, multiturn=None)
    assert main(["build", "pf-rewrite", "--config", path]) == 0  # no_repeat_ngram_size 3 reaches HFChatModel too
    rejected = load("rejected", "text-v1")
    kept = load("generic", "text-v1") if "generic" in get_dataset_config_names(REPO, revision="text-v1") else []
    assert len(kept) + len(rejected) == 2
    for r in kept:
        decoding = json.loads(r["decoding"])
        assert decoding["images_fed"] is False and decoding["no_repeat_ngram_size"] == 3
    assert {r["stage"] for r in rejected} <= {"rewrite", "length", "change"}
    lineage, _ = read_lineage(REPO, "dataset", "text-v1")
    assert [m.repo_id for m in lineage.models] == [f"{NS}/text-rewriter"]


def test_top_k_keeps_the_best_rewards_and_rejects_the_rest_without_rewriting_again(built):
    path, work_dir = built
    before = {p: p.stat().st_mtime_ns for p in work_dir.rglob("*.npz")}
    assert main(["build", "pf-rewrite", "--config", path, "--output.tag", "top2", "--top_k", "2",
                 "--multiturn", "null"]) == 0
    assert {p: p.stat().st_mtime_ns for p in work_dir.rglob("*.npz")} == before
    configs = set(get_dataset_config_names(REPO, revision="top2")) - {"rejected"}
    kept = [r for c in configs for r in load(c, "top2")]
    sources = set(get_dataset_config_names(REPO, revision="v1")) - {"rejected", "multiturn"}
    everything = [r for c in sources for r in load(c)]
    assert len(kept) == 2
    assert sorted(r["reward"] for r in kept) == sorted(r["reward"] for r in everything)[-2:]
    cut = [r for r in load("rejected", "top2") if r["stage"] == "top_k"]
    assert len(cut) == len(everything) - 2 and all(r["reason"] for r in cut)
