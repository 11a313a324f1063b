"""The publishing layer against the embedded Hub: one commit per release, cards, lineage, tags."""

import io
import json

import datasets
import pytest
from huggingface_hub import HfApi, hf_hub_download
from PIL import Image

from alignsmith.cards import RANDOM_WEIGHTS_MARKER, CardContent, histogram, model_card
from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import ArtifactRef, Lineage, pin, read_lineage
from alignsmith.publish import TagExistsError, publish_dataset, publish_folder, random_weight_refs
from alignsmith.recipes import OutputRepo


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def lineage() -> Lineage:
    return Lineage(command="test publish", recipe={"budget": 3, "nested": {"x": [1, 2]}},
                   inputs=[ArtifactRef("pool", "org/pool", "dataset", "v1", "a" * 40)],
                   models=[ArtifactRef("scorer", "org/scorer", "model", None, "b" * 40)])


def test_multi_config_dataset_with_images_is_one_tagged_commit(hub):
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    images = datasets.Dataset.from_dict({"id": ["r", "g"], "image": [{"bytes": png("red"), "path": None},
                                                                       {"bytes": png("green"), "path": None}]},
                                        features=features)
    scores = datasets.Dataset.from_dict({"id": ["r", "g", "b"], "score": [1.5, 2.5, 3.5]})
    content = CardContent(title="Test set", summary="A set.", license="mit", tags=["demo"],
                          statistics={"rows": 5},
                          figures=[histogram({"all": [1.5, 2.5, 3.5]}, "Scores", "score", "scores.png")])
    output = OutputRepo(repo_id="pub-test/multi", tag="v1.0.0")
    release = publish_dataset(output, {"images": {"train": images}, "scores": {"train": scores, "test": scores}},
                              content, lineage(), default_config="scores")

    commits = HfApi().list_repo_commits("pub-test/multi", repo_type="dataset")
    assert len(commits) == 2 and commits[0].commit_id == release.commit_sha  # repo creation + the one release
    loaded = datasets.load_dataset("pub-test/multi", "images", revision="v1.0.0", split="train")
    assert loaded.features["image"] == datasets.Image()
    assert loaded[0]["image"].getpixel((0, 0)) == (255, 0, 0) and loaded[1]["image"].getpixel((0, 0)) == (0, 128, 0)
    default = datasets.load_dataset("pub-test/multi", revision="v1.0.0")
    assert set(default) == {"train", "test"} and default["test"]["score"] == [1.5, 2.5, 3.5]

    readme = open(hf_hub_download("pub-test/multi", "README.md", repo_type="dataset", revision="v1.0.0")).read()
    meta = card_metadata(readme)
    assert meta["license"] == "mit" and "demo" in meta["tags"] and "alignsmith" in meta["tags"]
    assert meta["source_datasets"] == ["org/pool"]  # Hub ids; the pinned sha is in the lineage
    assert {c["config_name"] for c in meta["configs"]} == {"images", "scores"}
    info = {c["config_name"]: c for c in meta["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in info["scores"]["splits"]} == {"train": 3, "test": 3}
    assert "![Scores](assets/scores.png)" in readme
    files = HfApi().list_repo_files("pub-test/multi", repo_type="dataset", revision="v1.0.0")
    assert {"assets/scores.png", "alignsmith_recipe.yaml"} <= set(files)

    read, sha = read_lineage("pub-test/multi", "dataset", "v1.0.0")
    assert sha == release.commit_sha and read.recipe == lineage().recipe and read.models[0].sha == "b" * 40
    assert read.inputs[0].sha == "a" * 40


def test_an_existing_tag_is_refused_before_anything_is_uploaded(hub, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 100)
    output = OutputRepo(repo_id="pub-test/model", tag="v1")
    card = model_card("pub-test/model", CardContent(title="M", summary="s"), lineage(), base_model="org/base")
    first = publish_folder(output, tmp_path / "model", card, lineage())
    (tmp_path / "model" / "weights.bin").write_bytes(b"\1" * 100)
    with pytest.raises(TagExistsError, match="already has tag 'v1'"):
        publish_folder(output, tmp_path / "model", card, lineage())
    refs = HfApi().list_repo_refs("pub-test/model")
    assert [t.target_commit for t in refs.tags] == [first.commit_sha]
    assert refs.branches[0].target_commit == first.commit_sha  # nothing was committed either
    meta = card_metadata(open(hf_hub_download("pub-test/model", "README.md", revision="v1")).read())
    assert meta["base_model"] == "org/base" and meta["datasets"] == ["org/pool"] and meta["library_name"] == "transformers"


def test_a_space_folder_publishes_with_its_own_card(hub, tmp_path):
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "app.py").write_text("import gradio as gr\n")
    card = "---\ntitle: Demo\nsdk: gradio\nsdk_version: 6.31.0\napp_file: app.py\n---\n\n# Demo\n"
    release = publish_folder(OutputRepo(repo_id="pub-test/space", tag="v1"), tmp_path / "space", card, lineage(),
                             repo_type="space")
    files = HfApi().list_repo_files("pub-test/space", repo_type="space", revision=release.revision)
    assert {"app.py", "README.md", "alignsmith_recipe.yaml"} <= set(files)


def test_publishing_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        publish_folder(OutputRepo(repo_id="pub-test/none"), tmp_path / "absent", "card", lineage())


def test_empty_splits_and_configs_are_left_out(hub):
    rows = datasets.Dataset.from_dict({"id": ["a"]})
    empty = datasets.Dataset.from_dict({"id": []}, features=rows.features)
    content = CardContent(title="t", summary="s", config_descriptions={"kept": "the rows.", "rejected": "bad rows."})
    publish_dataset(OutputRepo(repo_id="pub-test/empty", tag="v1"),
                    {"kept": {"train": rows, "test": empty}, "rejected": {"train": empty}}, content, lineage(),
                    default_config="rejected")
    assert datasets.get_dataset_config_names("pub-test/empty", revision="v1") == ["kept"]
    assert list(datasets.load_dataset("pub-test/empty", "kept", revision="v1")) == ["train"]
    readme = open(hf_hub_download("pub-test/empty", "README.md", repo_type="dataset", revision="v1")).read()
    assert "- `kept` (train: 1 rows): the rows.\n\n" in readme and "rejected" not in readme  # only what is there
    with pytest.raises(ValueError, match="every split is empty"):
        publish_dataset(OutputRepo(repo_id="pub-test/empty", tag="v2"), {"x": {"train": empty}}, content, lineage())


def test_model_card_eval_results_are_a_model_index_the_hub_parses(hub, tmp_path):
    from huggingface_hub import EvalResult, ModelCard

    result = EvalResult(task_type="text-generation", dataset_type="org/eval-set", dataset_name="Eval set",
                        metric_type="accuracy", metric_value=0.61, dataset_revision="c" * 40, metric_name="judge win-rate")
    card = model_card("pub-test/evaluated", CardContent(title="E", summary="s"), lineage(), base_model="org/base",
                      eval_results=[result])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    release = publish_folder(OutputRepo(repo_id="pub-test/evaluated", tag="v1"), tmp_path / "m", card, lineage())
    parsed = ModelCard.load(hf_hub_download("pub-test/evaluated", "README.md", revision=release.revision)).data
    assert parsed.model_name == "pub-test/evaluated" and parsed.eval_results == [result]


def _model_folder(path, config: dict) -> str:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_a_dataset_made_with_random_weights_warns_and_names_no_local_path(hub, tmp_path):
    marked = _model_folder(tmp_path / "tiny-scorer", {"model_type": "llama", RANDOM_WEIGHTS_MARKER: True})
    trained = _model_folder(tmp_path / "trained", {"model_type": "llama"})
    tagged = "pub-test/tagged-tiny"  # on the Hub, the card's tag says it too (as `alignsmith models tiny` publishes)
    card = model_card(tagged, CardContent(title="M", summary="s", tags=["random-weights"]), lineage(), base_model=None)
    publish_folder(OutputRepo(repo_id=tagged, tag="v1"), trained, card, lineage())
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a"}\n')
    recipe = {"pool": {"path": str(pool)}, "work_dir": str(tmp_path / "work"), "scorer": {"model": marked}}
    refs = [pin("pool", str(pool), "dataset"), pin("scorer", marked), pin("embedder", trained),
            pin("judge", tagged, revision="v1"), ArtifactRef("gone", "org/never-published", "model", None, "b" * 40)]
    built = Lineage(command="test publish", recipe=recipe, inputs=refs[:1], models=refs[1:])
    assert [ref.role for ref in random_weight_refs(built)] == ["scorer", "judge"]

    rows = datasets.Dataset.from_dict({"id": ["a"]})
    output = OutputRepo(repo_id="pub-test/random", tag="v1", language=["en", "fr"])
    publish_dataset(output, {"default": {"train": rows}}, CardContent(title="t", summary="s"), built)
    readme = open(hf_hub_download("pub-test/random", "README.md", repo_type="dataset", revision="v1")).read()
    recipe_file = open(hf_hub_download("pub-test/random", "alignsmith_recipe.yaml", repo_type="dataset",
                                       revision="v1")).read()
    meta = card_metadata(readme)
    assert "random-weights" in meta["tags"] and meta["language"] == ["en", "fr"] and meta["size_categories"] == ["n<1K"]
    assert "> [!WARNING]" in readme and "> - scorer: `tiny-scorer`" in readme
    assert "> - judge: `pub-test/tagged-tiny`" in readme
    assert str(tmp_path) not in readme and str(tmp_path) not in recipe_file
    written = meta["alignsmith"]["inputs"][0]
    assert written["repo_id"] == "pool.jsonl" and written["sha"] == refs[0].sha
    assert "path: pool.jsonl" in recipe_file and "work_dir: work" in recipe_file
