"""`eval answers` with a vision-language chat model: VQA questions with images, ground truth published as references."""

from __future__ import annotations

import json

import pytest
import yaml
from datasets import load_dataset
from PIL import Image

from alignsmith.cli import main
from alignsmith.models.generation import DecodingSettings
from alignsmith.models.tiny import build_causal_lm
from alignsmith.models.vision_chat import HFVisionChatModel, ImageCountError, content_parts
from alignsmith.recipes import build
from evaluation.answers import AnswersError, AnswersRecipe, run

REPO = "vqa-test/tiny-vlm"
GREEDY = DecodingSettings(max_new_tokens=6)
# sharegpt rows as a VQA set ships them: the final assistant turn is the ground truth
ROWS = [
    {"id": "colour", "images": ["red.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "red"}]},
    {"id": "second-turn", "images": ["blue.png"], "conversations": [
        {"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi, show me."},
        {"from": "human", "value": "<image>\nWhat shape is this?"}, {"from": "gpt", "value": "circle"}]},
    {"id": "two-images", "images": ["red.png", "green.png"], "conversations": [
        {"from": "human", "value": "<image> and <image>: the same colour?"}, {"from": "gpt", "value": "no"}]},
]


@pytest.fixture(scope="module")
def vlm(hub, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("vlm") / "tiny-vlm"
    assert main(["models", "tiny", "--kind", "vision_language", "--out", str(folder), "--publish", REPO,
                 "--tag", "v1", "--hub", hub.url]) == 0
    return REPO


@pytest.fixture(scope="module")
def chat(vlm) -> HFVisionChatModel:
    return HFVisionChatModel(vlm, revision="v1", batch_size=1)


@pytest.fixture(scope="module")
def vqa_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqa")
    for name, colour, size in (("red", "red", (40, 40)), ("blue", "blue", (30, 50)), ("green", "green", (64, 20))):
        Image.new("RGB", size, colour).save(folder / f"{name}.png")
    (folder / "vqa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return folder / "vqa.jsonl"


def answers_recipe(tmp_path, hub, prompts, **overrides):
    recipe = {"hub": hub.url, "model": {"model": REPO, "revision": "v1", "dtype": "float32", "batch_size": 3},
              "prompts": {"path": str(prompts), "format": "sharegpt"}, "references": "last_assistant",
              "decoding": {"max_new_tokens": GREEDY.max_new_tokens}, "work_dir": str(tmp_path / "work"),
              "shard_size": 2, "output": {"repo_id": "vqa-test/answers", "tag": "v1"}, **overrides}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_vqa_answers_publish_images_and_ground_truth_and_match_direct_generation(tmp_path, hub, vlm, chat, vqa_set):
    assert main(["eval", "answers", "--config", str(answers_recipe(tmp_path, hub, vqa_set))]) == 0
    rows = load_dataset("vqa-test/answers", "answers", revision="v1", split="train")
    assert [(r["question_id"], r["turn"], r["reference"]) for r in rows] == [
        ("colour", 1, "red"), ("second-turn", 1, None), ("second-turn", 2, "circle"), ("two-images", 1, "no")]
    assert [len(r["images"]) for r in rows] == [1, 0, 1, 2]  # the images each turn's messages refer to
    assert [(im.size, im.convert("RGB").getpixel((0, 0))) for im in rows[3]["images"]] == [
        ((40, 40), (255, 0, 0)), ((64, 20), (0, 128, 0))]
    assert [m["content"] for m in rows[2]["messages"]] == ["Hello", "Hi, show me.", "<image>\nWhat shape is this?"]
    assert all(m["role"] != "assistant" or m["content"] != r["reference"] for r in rows for m in r["messages"])
    # greedy: the batched run (batch_size 3) answers as the model asked one conversation at a time (batch_size 1)
    alone = [chat.generate([r["messages"]], GREEDY, images=[[im.convert("RGB") for im in r["images"]]])[0]
             for r in rows]
    assert [(r["answer"], r["finish_reason"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in alone]
    assert rows[0]["model"] == REPO and len(rows[0]["model_sha"]) == 40


def test_a_text_only_model_is_refused_questions_with_images(tmp_path, hub, vqa_set):
    text_only = build_causal_lm(tmp_path / "text-only", seed=1)
    recipe = build(AnswersRecipe, {"model": {"model": str(text_only)}, "references": "last_assistant",
                                   "prompts": {"path": str(vqa_set), "format": "sharegpt"},
                                   "work_dir": str(tmp_path / "work"), "output": {"repo_id": "vqa-test/text-only"}})
    with pytest.raises(AnswersError, match="question colour: has 1 image.*text-only"):
        run(recipe)
    assert list((tmp_path / "work" / "answers").glob("shard-*")) == []


def test_last_assistant_references_need_a_final_assistant_message(tmp_path, hub):
    prompts = tmp_path / "open.jsonl"
    prompts.write_text(json.dumps({"id": "open", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    recipe = build(AnswersRecipe, {"model": {"model": "unused/model"}, "references": "last_assistant",
                                   "prompts": {"path": str(prompts)}, "output": {"repo_id": "vqa-test/open"}})
    with pytest.raises(AnswersError, match="record 'open': field 'messages' must end with an assistant message"):
        run(recipe)


def test_the_chat_template_puts_each_image_in_its_own_turn(chat):
    conversation = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
                    {"role": "user", "content": "Look: <image> What shape?"}]
    assert content_parts(conversation[2]["content"]) == [
        {"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "text", "text": " What shape?"}]
    text = chat.render(conversation, 1)
    ids = chat.processor(images=[Image.new("RGB", (32, 32), "red")], text=[text], add_special_tokens=False,
                         return_tensors="pt")["input_ids"][0]
    decoded = chat.tokenizer.decode(ids)
    patches = "<image>" * 16  # the tiny model: one token per 8x8 patch of a 32x32 image
    assert decoded == f"<|bos|><|user|>Hello<|end|><|assistant|>Hi<|eos|><|user|>Look: {patches} What shape?<|end|><|assistant|>"
    with pytest.raises(ImageCountError, match="conversation 0: 1 <image> placeholder.*but 0 image"):
        chat.generate([conversation], GREEDY)
