"""SFT of a vision-language model: raw prompt/completion rows (a rewriter's layout) and image conversations.

A tiny LLaVA-style model is published to the embedded Hub; rows with images live in local JSONL files
next to generated PNGs. What a run trains on is read from the first batch trl builds (via a callback),
so the tests see the exact labels the loss uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from alignsmith.cli import main
from alignsmith.frontmatter import card_metadata
from alignsmith.recipes import RecipeError, build
from alignsmith.records import IMAGE_PLACEHOLDER

from training.data import TrainingDataError
from training.recipes import DPORecipe, SFTRecipe
from training.train import train

NS = "vision-train"
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "dataloader_num_workers": 0, "save_strategy": "no",
       "max_length": None, "logging_steps": 1}
# a prompt in a rewriter's layout: the image where the instruction puts it, the drafted answer after it
PROMPT = "### Human: {image} What colour is this, number {i}?\n### Drafted: {colour}\n### Revised: "
COMPLETION = "Number {i} shows the colour {colour}."


@pytest.fixture(scope="module")
def vlm(hub, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("vlm")
    assert main(["models", "tiny", "--kind", "vision_language", "--out", str(folder), "--publish", f"{NS}/tiny-vlm",
                 "--tag", "v1", "--hub", hub.url]) == 0
    return f"{NS}/tiny-vlm"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Local JSONL datasets with images beside them: raw prompt/completion, image chats, and broken variants."""
    folder = tmp_path_factory.mktemp("rows")
    for name, rgb in COLOURS.items():
        Image.new("RGB", (40, 30), rgb).save(folder / f"{name}.png")
    raw = [{"id": f"r{i}", "prompt": PROMPT.format(image=IMAGE_PLACEHOLDER, i=i, colour=colour),
            "completion": COMPLETION.format(i=i, colour=colour), "images": [f"{colour}.png"]}
           for i, colour in enumerate(COLOURS)]
    chats = [{"id": f"c{i}", "messages": [
        {"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": f"Look: {IMAGE_PLACEHOLDER} which colour?"},
        {"role": "assistant", "content": f"It is {colour}."}], "images": [f"{colour}.png"]}
        for i, colour in enumerate(COLOURS)]
    two_turns = [{"id": "t0", "messages": chats[0]["messages"], "images": chats[0]["images"]}]
    paths = {}
    for name, rows in (("raw", raw), ("chats", chats), ("two_turns", two_turns)):
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


class FirstBatch(TrainerCallback):
    """Keeps the first training batch trl's collator builds."""

    def __init__(self) -> None:
        self.batch: dict[str, Any] | None = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))


def _recipe(cls: type, vlm: str, data: Path, tmp_path: Path, repo: str, **overrides: Any) -> Any:
    recipe = {
        "base_model": {"path": vlm, "revision": "v1"},
        "data": {"datasets": [{"path": str(data)}], "seed": 0},
        "training": {**CPU, "max_steps": 2, "per_device_train_batch_size": 4},
        "output": {"repo_id": f"{NS}/{repo}", "tag": "v1"},
        "output_dir": str(tmp_path / repo),
        **overrides,
    }
    return build(cls, recipe)


@pytest.fixture(scope="module")
def rewriter(vlm, files, tmp_path_factory):
    """A LoRA rewriter trained on the raw rows and published merged; (result, first batch)."""
    first = FirstBatch()
    recipe = _recipe(SFTRecipe, vlm, files["raw"], tmp_path_factory.mktemp("runs"), "rewriter",
                     prompt_format="raw", lora={"r": 32, "lora_alpha": 64, "target_modules": "all-linear",
                                                "modules_to_save": ["lm_head"]},
                     output={"repo_id": f"{NS}/rewriter", "tag": "v1", "merged": True},
                     training={**CPU, "max_steps": 60, "learning_rate": 1e-2, "per_device_train_batch_size": 4})
    return train(recipe, callbacks=[first]), first.batch


def test_raw_rows_train_only_on_the_completion_and_its_eos_with_the_image_in_the_prompt(vlm, rewriter):
    _, batch = rewriter
    processor = AutoProcessor.from_pretrained(vlm, revision="v1")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    completions = set()
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = labels != -100
        span = trained.nonzero().flatten()
        assert len(span) == int(span[-1] - span[0]) + 1  # one contiguous span at the end of the row
        assert torch.equal(labels[trained], ids[trained])
        text = tok.decode(ids[trained])
        assert text.endswith(tok.eos_token)
        completions.add(text.removesuffix(tok.eos_token))
        prompt = ids[: int(span[0])]
        assert int((prompt == image_id).sum()) == 16  # the image expanded to its patches, in the prompt
        assert "### Revised:" in tok.decode(prompt[prompt != image_id])
    assert completions == {COMPLETION.format(i=i, colour=c) for i, c in enumerate(COLOURS)}
    assert "pixel_values" in batch and batch["pixel_values"].shape[0] == 4


def test_the_published_rewriter_loads_by_tag_and_writes_a_learnt_completion_for_an_image(vlm, rewriter, files):
    result, _ = rewriter
    assert result.metrics["final_train_loss"] < 0.5 * result.metrics["first_train_loss"]
    repo = result.release.repo_id
    processor = AutoProcessor.from_pretrained(repo, revision="v1")
    model = AutoModelForImageTextToText.from_pretrained(repo, revision="v1")
    prompt = PROMPT.format(image=processor.image_token, i=2, colour="blue")
    image = Image.open(files["raw"].parent / "blue.png")
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1]:]
    assert processor.decode(new, skip_special_tokens=True) == COMPLETION.format(i=2, colour="blue")
    assert int(new[-1]) == processor.tokenizer.eos_token_id

    card = card_metadata(Path(_download(repo, "README.md")).read_text())
    assert card["pipeline_tag"] == "image-text-to-text"
    readme = Path(_download(repo, "README.md")).read_text()
    assert "## Prompting" in readme and "AutoModelForImageTextToText" in readme


def _download(repo: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, revision="v1")


def test_image_chats_keep_each_image_in_its_turn_and_train_on_the_replies_only(vlm, files, tmp_path):
    first = FirstBatch()
    result = train(_recipe(SFTRecipe, vlm, files["chats"], tmp_path, "chat-vlm"), callbacks=[first])
    assert result.metrics["global_step"] == 2
    processor = AutoProcessor.from_pretrained(vlm, revision="v1")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    for ids, labels in zip(first.batch["input_ids"], first.batch["labels"]):
        images_at = (ids == image_id).nonzero().flatten()
        before = tok.decode(ids[: int(images_at[0])])
        assert "Hello." in before and "Hi." in before and "Look:" in before  # the second user turn, in place
        trained = tok.decode(ids[labels != -100])
        assert trained.startswith("Hi.") and "It is " in trained and "Look" not in trained and "Hello" not in trained


def test_what_a_vision_run_cannot_train_is_refused_before_training(vlm, files, tmp_path, hub):
    with pytest.raises(TrainingDataError, match=r"record 't0'.*prompt_format raw.*roles \['user', 'assistant', "):
        train(_recipe(SFTRecipe, vlm, files["two_turns"], tmp_path, "raw-two-turns", prompt_format="raw"))
    with pytest.raises(RecipeError, match="assistant_only_loss"):
        _recipe(SFTRecipe, vlm, files["raw"], tmp_path, "x", prompt_format="raw",
                training={**CPU, "assistant_only_loss": True})
    with pytest.raises(RecipeError, match="SFT only"):
        train(_recipe(DPORecipe, vlm, files["raw"], tmp_path, "dpo-vlm"))


def test_a_text_only_base_refuses_rows_with_images(hub, files, tmp_path):
    assert main(["models", "tiny", "--out", str(tmp_path / "lm"), "--publish", f"{NS}/tiny-lm", "--tag", "v1",
                 "--hub", hub.url]) == 0
    with pytest.raises(TrainingDataError, match=r"record 'c0', field 'images': the base model is text-only"):
        train(_recipe(SFTRecipe, f"{NS}/tiny-lm", files["chats"], tmp_path, "text-with-images"))


def test_a_u_shaped_schedule_tunes_a_vision_language_model_on_pf_rows_mixed_with_text(vlm, files, tmp_path):
    """Clever Flamingo's three stages on PF-1M-style rows (``input``/``output``/``original``, read as alpaca
    with ``input`` renamed to ``instruction``) mixed with text-only chats: LoRA, then the projector alone,
    then LoRA at a 10x lower rate; each stage starts from the commit the previous one published."""
    from training.pipeline import run as run_pipeline
    from training.recipes import PipelineRecipe

    folder = files["raw"].parent
    pf_rows = [{"id": f"pf{i}", "input": f"What colour is this?{IMAGE_PLACEHOLDER}", "original": colour,
                "output": f"The picture shows the colour {colour}.", "rouge_score": 0.2, "reward": 1.0,
                "images": [f"{colour}.png"]} for i, colour in enumerate(COLOURS)]
    (folder / "pf.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pf_rows))
    text_rows = [{"id": f"t{i}", "messages": [{"role": "user", "content": f"Say {w}."},
                                            {"role": "assistant", "content": f"{w}."}]}
                 for i, w in enumerate(["one", "two", "three", "four"])]
    (folder / "text.jsonl").write_text("".join(json.dumps(row) + "\n" for row in text_rows))
    pf = {"path": str(folder / "pf.jsonl"), "format": "alpaca", "columns": {"input": "instruction"},
          "extra_columns": "drop"}
    text = {"path": str(folder / "text.jsonl")}
    lora = {"r": 8, "lora_alpha": 16, "target_modules": r".*language_model.*\.(q_proj|v_proj)"}
    recipe = build(PipelineRecipe, {
        "base_model": {"path": vlm, "revision": "v1"},
        "defaults": {"training": {**CPU, "max_steps": 2, "per_device_train_batch_size": 4}},
        "stages": [
            {"kind": "sft", "lora": lora, "data": {"datasets": [text, {**pf, "weight": 0.5}]},
             "training": {"learning_rate": 1e-4}, "output": {"repo_id": f"{NS}/cf-stage1", "tag": "v1", "merged": True},
             "output_dir": str(tmp_path / "s1")},
            {"kind": "sft", "unfrozen": ["multi_modal_projector"], "data": {"datasets": [pf]},
             "training": {"learning_rate": 1e-4}, "output": {"repo_id": f"{NS}/cf-stage2", "tag": "v1"},
             "output_dir": str(tmp_path / "s2")},
            {"kind": "sft", "lora": lora, "data": {"datasets": [text, {**pf, "weight": 0.5}]},
             "training": {"learning_rate": 1e-5}, "output": {"repo_id": f"{NS}/cf-stage3", "tag": "v1"},
             "output_dir": str(tmp_path / "s3")},
        ],
    })
    releases = run_pipeline(recipe)
    from alignsmith.lineage import read_lineage

    for previous, release in zip(releases, releases[1:]):
        lineage, _ = read_lineage(release.repo_id, "model", "v1")
        assert (lineage.models[0].repo_id, lineage.models[0].sha) == (previous.repo_id, previous.commit_sha)
    stage2 = card_metadata(Path(_download(f"{NS}/cf-stage2", "README.md")).read_text())
    assert stage2["pipeline_tag"] == "image-text-to-text"
    model = AutoModelForImageTextToText.from_pretrained(f"{NS}/cf-stage2", revision="v1")
    before = AutoModelForImageTextToText.from_pretrained(f"{NS}/cf-stage1", revision="v1")
    changed = {name for (name, a), (_, b) in zip(model.named_parameters(), before.named_parameters())
               if not torch.equal(a, b)}
    assert changed and all("multi_modal_projector" in name for name in changed)


def test_multiturn_augmentation_pads_rows_with_drawn_turns_within_the_image_budget(vlm, files, tmp_path):
    folder = files["raw"].parent
    rows = [{"id": f"i{i}", "messages": [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}Colour {i}?"},
                                          {"role": "assistant", "content": f"It is {colour}."}],
             "images": [f"{colour}.png"]} for i, colour in enumerate(COLOURS)]
    rows += [{"id": f"t{i}", "messages": [{"role": "user", "content": f"Say {i}."},
                                          {"role": "assistant", "content": f"{i}."}]} for i in range(4)]
    (folder / "single.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    first = FirstBatch()
    train(_recipe(SFTRecipe, vlm, folder / "single.jsonl", tmp_path, "multiturn",
                  multiturn={"max_img": 3, "max_tokens": 400, "seed": 1},
                  training={**CPU, "max_steps": 1, "per_device_train_batch_size": 8}), callbacks=[first])
    processor = AutoProcessor.from_pretrained(vlm, revision="v1")
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    user_turns = []
    for ids, mask in zip(first.batch["input_ids"], first.batch["attention_mask"]):
        assert int((ids == image_id).sum()) <= 2 * 16  # drawing stops before a third image
        assert int(mask.sum()) <= 400 + 16  # within the budget (the tiny template's BOS aside)
        user_turns.append(processor.tokenizer.decode(ids).count("<|user|>"))
    assert max(user_turns) > 1 and len(user_turns) == 8


def test_multiturn_leaves_dialogues_as_they_are_and_needs_a_budget(vlm, files, tmp_path):
    first = FirstBatch()
    train(_recipe(SFTRecipe, vlm, files["chats"], tmp_path, "multiturn-dialogues",
                  multiturn={"max_img": 3, "max_tokens": 400}), callbacks=[first])
    processor = AutoProcessor.from_pretrained(vlm, revision="v1")
    for ids in first.batch["input_ids"]:
        assert processor.tokenizer.decode(ids).count("<|user|>") == 2  # the rows' own two turns, nothing drawn
    with pytest.raises(RecipeError, match="multiturn: applies to chat"):
        _recipe(SFTRecipe, vlm, files["raw"], tmp_path, "x", prompt_format="raw", multiturn={"max_img": 3})
    with pytest.raises(RecipeError, match="multiturn.max_tokens: needed when training.max_length is null"):
        _recipe(SFTRecipe, vlm, files["chats"], tmp_path, "x", multiturn={"max_img": 3})
