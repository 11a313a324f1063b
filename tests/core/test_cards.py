"""Cards built with huggingface_hub's card classes, read back by its clients, and reported by the embedded Hub."""

import uuid

import datasets
import httpx
import pytest
import yaml
from huggingface_hub import DatasetCard, EvalResult, HfApi, ModelCard

from alignsmith.cards import CardContent, dataset_card, model_card, size_category
from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import LINEAGE_KEY, ArtifactRef, Lineage
from alignsmith.publish import publish_dataset, publish_folder
from alignsmith.recipes import OutputRepo

LINEAGE = Lineage(command="test cards", recipe={"budget": 3, "nested": {"x": [1, 2]}},
                  inputs=[ArtifactRef("pool", "org/pool", "dataset", "v1", "a" * 40)],
                  models=[ArtifactRef("scorer", "org/scorer", "model", None, "b" * 40)])


def unique(name: str) -> str:
    return f"cards-test/{name}-{uuid.uuid4().hex[:8]}"


def test_a_published_dataset_card_loads_as_a_dataset_card(hub):
    repo = unique("dataset")
    rows = datasets.Dataset.from_dict({"id": ["a", "b"], "score": [1.0, 2.0]})
    content = CardContent(title="Cards", summary="s", license="mit", tags=["demo"],
                          metadata={"task_categories": ["text-generation"]})
    publish_dataset(OutputRepo(repo_id=repo, tag="v1"), {"scored": {"train": rows}}, content, LINEAGE)

    card = DatasetCard.load(repo, repo_type="dataset")
    assert card.data.license == "mit" and card.data.source_datasets == ["org/pool"]
    assert card.data.tags == ["alignsmith", "demo"] and card.data.task_categories == ["text-generation"]
    assert [c["config_name"] for c in card.data.configs] == ["scored"]
    assert Lineage.from_metadata(card.data[LINEAGE_KEY]) == LINEAGE
    assert card.text.startswith("\n# Cards\n")


def test_a_published_model_card_loads_as_a_model_card_with_its_eval_results(hub, tmp_path):
    repo = unique("model")
    result = EvalResult(task_type="text-generation", dataset_type="org/eval-set", dataset_name="Eval set",
                        metric_type="accuracy", metric_value=0.61, dataset_revision="c" * 40)
    content = CardContent(title="M", summary="s", license="apache-2.0", metadata={"base_model_relation": "finetune"})
    card_text = model_card(repo, content, LINEAGE, base_model="org/base", eval_results=[result])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    publish_folder(OutputRepo(repo_id=repo, tag="v1"), tmp_path / "m", card_text, LINEAGE)

    card = ModelCard.load(repo)
    assert card.data.base_model == "org/base" and card.data.datasets == ["org/pool"]
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == (
        "transformers", "text-generation", "apache-2.0")
    assert card.data.model_name == repo and card.data.eval_results == [result]
    assert card.data["base_model_relation"] == "finetune"
    assert Lineage.from_metadata(card.data[LINEAGE_KEY]) == LINEAGE
    assert HfApi().model_info(repo).card_data.base_model == "org/base"  # the Hub's cardData says the same


def test_a_model_card_without_eval_results_has_no_model_index():
    meta = card_metadata(model_card("o/m", CardContent(title="M", summary="s"), LINEAGE, base_model=None))
    assert "model-index" not in meta and "model_name" not in meta and "base_model" not in meta


def test_card_metadata_finds_the_block_huggingface_co_does():
    assert card_metadata("# just markdown\n---\nlicense: mit\n---\n") is None
    assert card_metadata("---\n---\n# an empty block is no block to the Hub\n") is None
    assert card_metadata("---\n\n---\n# body\n") == {}
    assert card_metadata("\n---\r\nlicense: mit\r\n---\r\nbody") == {"license": "mit"}
    with pytest.raises(ValueError):
        card_metadata("---\n- a list\n---\n")
    with pytest.raises(ValueError):
        card_metadata("---\n1: a number as key\n---\n")
    with pytest.raises(yaml.YAMLError):
        card_metadata("---\nlicense: [unclosed\n---\n")


def test_the_embedded_hub_reports_card_data_only_for_a_metadata_block(hub):
    api = HfApi()
    headers = {"Authorization": f"Bearer {hub.token}"}
    repo = unique("plain")
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"# No metadata\n", path_in_repo="README.md", repo_id=repo)
    info = httpx.get(f"{hub.url}/api/models/{repo}", headers=headers).json()
    assert "cardData" not in info and info["tags"] == []

    api.upload_file(path_or_fileobj=b"---\nlicense: mit\ntags: [x]\nlibrary_name: peft\n---\n# Card\n",
                    path_in_repo="README.md", repo_id=repo)
    info = httpx.get(f"{hub.url}/api/models/{repo}", headers=headers).json()
    assert info["cardData"] == {"license": "mit", "tags": ["x"], "library_name": "peft"}
    assert info["tags"] == ["x"] and info["library_name"] == "peft"

    def validate(content: str) -> int:
        return httpx.post(f"{hub.url}/api/validate-yaml", headers=headers,
                          json={"content": content, "repoType": "model"}).status_code

    assert validate("# No metadata\n") == 200 and validate("---\nlicense: mit\n---\n") == 200
    assert validate("---\n- a list\n---\n") == 400 and validate("---\nlicense: [unclosed\n---\n") == 400


def _configs(**rows: int) -> dict[str, dict[str, datasets.Dataset]]:
    return {name: {"train": datasets.Dataset.from_dict({"id": [str(i) for i in range(n)]})} for name, n in rows.items()}


def test_a_dataset_card_has_the_metadata_and_citation_a_researcher_looks_for():
    content = CardContent(title="Deita 6k", summary="s", citation="@article{liu2023what,\n  title = {What}\n}",
                          config_descriptions={"selected": "the chosen rows.", "embeddings": "never published here."})
    text = dataset_card("o/d", _configs(selected=1200, scored=40_000), content, LINEAGE, default_config="selected",
                        language=["en"])
    meta = DatasetCard(text).data
    assert (meta.pretty_name, meta.language, meta.size_categories) == ("Deita 6k", ["en"], ["1K<n<10K"])
    assert "## Citation\n\n```bibtex\n@article{liu2023what," in text
    configs = text.split("## Configs\n\n")[1].split("\n\n")[0].splitlines()
    assert configs == ["- `selected` (train: 1200 rows): the chosen rows.", "- `scored` (train: 40000 rows)"]
    assert "language" not in card_metadata(dataset_card("o/d", _configs(x=1), content, LINEAGE))  # never guessed


@pytest.mark.parametrize(("rows", "bucket"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (99_999, "10K<n<100K"),
                                              (2_500_000, "1M<n<10M"), (10**12 - 1, "100B<n<1T"), (10**12, "n>1T")])
def test_size_categories_are_the_hubs_buckets(rows, bucket):
    assert size_category(rows) == bucket


def test_a_dataset_card_names_local_inputs_and_recipe_paths_by_name_and_sha_only():
    pool, scorer = ArtifactRef("pool", "/home/me/data/pool.jsonl", "local", None, "c" * 64), \
        ArtifactRef("scorer", "/home/me/models/tiny", "local", None, "d" * 64)
    recipe = {"pool": {"path": "/home/me/data/pool.jsonl"}, "scorer": {"model": "~/models/tiny"},
              "work_dir": "runs/deita", "hub": "http://127.0.0.1:8000", "stages": [{"output_dir": "/scratch/me/sft"}]}
    lineage = Lineage(command="build x", recipe=recipe, inputs=[pool], models=[scorer])
    text = dataset_card("o/d", _configs(x=1), CardContent(title="t", summary="s"), lineage, random_weights=[scorer])

    assert "/home/me" not in text and "~/" not in text and "/scratch" not in text
    written = Lineage.from_metadata(card_metadata(text)[LINEAGE_KEY])
    assert [(r.repo_id, r.sha) for r in written.inputs + written.models] == [("pool.jsonl", "c" * 64),
                                                                              ("tiny", "d" * 64)]
    assert written.recipe == {"pool": {"path": "pool.jsonl"}, "scorer": {"model": "tiny"}, "work_dir": "runs/deita",
                              "hub": "http://127.0.0.1:8000", "stages": [{"output_dir": "sft"}]}
    assert lineage.inputs[0].repo_id == "/home/me/data/pool.jsonl"  # in memory it stays loadable


def test_a_dataset_card_made_with_random_weights_says_so_in_its_tags_and_first_lines():
    ref = ArtifactRef("complexity_scorer", "org/tiny-scorer", "model", None, "b" * 40)
    text = dataset_card("o/d", _configs(x=1), CardContent(title="T", summary="s", tags=["demo"]), LINEAGE,
                        random_weights=[ref])
    card = DatasetCard(text)
    assert card.data.tags == ["alignsmith", "demo", "random-weights"]
    assert card.text.startswith("\n# T\n\n> [!WARNING]\n> Built with models that have **random weights**")
    assert "> - complexity_scorer: `org/tiny-scorer`" in card.text
    plain = DatasetCard(dataset_card("o/d", _configs(x=1), CardContent(title="T", summary="s"), LINEAGE))
    assert "random-weights" not in plain.data.tags and "[!WARNING]" not in plain.text
