"""Polite Flamingo part 1 end to end on the embedded Hub: image conversations -> distortion pairs (published)
-> a tiny vision-language rewriter trained on them by `alignsmith train sft` (published) -> the rewriter,
loaded by tag, rewrites a drafted answer about an image."""

import json

import pytest
import yaml
from huggingface_hub import HfApi
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from alignsmith.cli import main
from alignsmith.lineage import read_lineage
from alignsmith.records import IMAGE_PLACEHOLDER
from builders.polite_flamingo.rewriting import rewriting_prompt

NS = "pf-rewriter"
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """The tiny VLM, the pairs built from a small image pool, and the rewriter trained on them."""
    folder = tmp_path_factory.mktemp("rewriter")
    assert main(["models", "tiny", "--kind", "vision_language", "--out", str(folder / "vlm"), "--publish",
                 f"{NS}/tiny-vlm", "--tag", "v1", "--hub", hub.url]) == 0
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (40, 30), rgb).save(folder / f"{name}.png")
        rows.append({"id": f"img-{i}", "images": [f"{name}.png"], "conversations": [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nWhat is shown here?"},
            {"from": "gpt", "value": f"The picture is a plain {name} rectangle. It has no other details. "
                                     f"Nothing else is in view."}]})
    (folder / "pool.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs = {"hub": hub.url, "source": {"path": str(folder / "pool.jsonl"), "format": "sharegpt"},
             "kinds": ["random_augmentation"], "seed": 3, "work_dir": str(folder / "pairs-work"),
             "output": {"repo_id": f"{NS}/pairs", "tag": "v1"}}
    (folder / "pairs.yaml").write_text(yaml.safe_dump(pairs))
    assert main(["build", "pf-pairs", "--config", str(folder / "pairs.yaml")]) == 0
    train = {"hub": hub.url, "base_model": {"path": f"{NS}/tiny-vlm", "revision": "v1"}, "prompt_format": "raw",
             "data": {"datasets": [{"path": f"{NS}/pairs", "config": "random_augmentation", "revision": "v1"}]},
             "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "modules_to_save": ["lm_head"]},
             "training": {"use_cpu": True, "bf16": False, "report_to": "none", "save_strategy": "no",
                          "max_length": None, "max_steps": 80, "learning_rate": 1e-2,
                          "per_device_train_batch_size": 4, "logging_steps": 1},
             "output": {"repo_id": f"{NS}/rewriter", "tag": "v1", "merged": True},
             "output_dir": str(folder / "train")}
    (folder / "train.yaml").write_text(yaml.safe_dump(train))
    assert main(["train", "sft", "--config", str(folder / "train.yaml")]) == 0
    return folder


def test_the_rewriter_card_names_the_pairs_and_base_at_their_commits(published):
    lineage, _ = read_lineage(f"{NS}/rewriter", "model", "v1")
    api = HfApi()
    (pairs,) = lineage.inputs
    assert (pairs.repo_id, pairs.sha) == (f"{NS}/pairs", api.dataset_info(f"{NS}/pairs", revision="v1").sha)
    assert (lineage.models[0].repo_id, lineage.models[0].sha) == (
        f"{NS}/tiny-vlm", api.model_info(f"{NS}/tiny-vlm", revision="v1").sha)
    assert lineage.recipe["prompt_format"] == "raw"


def test_the_rewriter_loads_by_tag_and_rewrites_a_drafted_answer_about_an_image(published):
    from datasets import load_dataset

    pairs = load_dataset(f"{NS}/pairs", "random_augmentation", revision="v1", split="train")
    row = next(r for r in pairs if "green" in r["original"])
    processor = AutoProcessor.from_pretrained(f"{NS}/rewriter", revision="v1")
    model = AutoModelForImageTextToText.from_pretrained(f"{NS}/rewriter", revision="v1")
    prompt = rewriting_prompt(row["instruction"], row["distorted"], "paper")
    assert prompt == row["prompt"]
    inputs = processor(images=row["images"], text=prompt.replace(IMAGE_PLACEHOLDER, processor.image_token),
                       return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=60, do_sample=False)
    rewritten = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert rewritten == row["original"]  # four pairs, 80 steps: the tiny rewriter has learnt them by heart
