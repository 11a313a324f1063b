"""The tiny vision-language model: deterministic, loadable like a Hub VLM, publishable, and trainable in trl."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from huggingface_hub import hf_hub_download
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from alignsmith.cards import RANDOM_WEIGHTS_MARKER
from alignsmith.cli import main
from alignsmith.frontmatter import card_metadata
from alignsmith.models import tiny

IMAGE_TOKENS = (32 // 8) ** 2  # default image_size // patch_size, squared
QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny.build_vision_language_model(tmp_path_factory.mktemp("vlm"), seed=0)


def _generate(folder, revision: str | None = None) -> tuple[torch.Tensor, torch.Tensor, ProcessorMixin]:
    """Greedy new tokens for a picture and the chat prompt, with the prompt's input ids and the processor."""
    processor = AutoProcessor.from_pretrained(folder, revision=revision)
    model = AutoModelForImageTextToText.from_pretrained(folder, revision=revision)
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    # the template already starts with BOS
    inputs = processor(images=[Image.new("RGB", (50, 40), "red")], text=[prompt], return_tensors="pt",
                       add_special_tokens=False)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    prompt_ids = inputs["input_ids"][0]
    return generated[0, len(prompt_ids):], prompt_ids, processor


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, vlm_dir):
    again = tiny.build_vision_language_model(tmp_path / "again", seed=0)
    other = tiny.build_vision_language_model(tmp_path / "other", seed=1)
    names = sorted(p.name for p in vlm_dir.iterdir())
    assert {"model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= set(names)
    for name in names:
        assert (again / name).read_bytes() == (vlm_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (vlm_dir / "model.safetensors").read_bytes()
    assert json.loads((vlm_dir / "config.json").read_text())[RANDOM_WEIGHTS_MARKER] is True


def test_loads_with_the_auto_classes_and_expands_image_to_one_token_per_patch(vlm_dir):
    processor = AutoProcessor.from_pretrained(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    assert model.config.model_type == "llava" and type(processor).__name__ == "LlavaProcessor"
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.image_token_id == image_id and model.config.image_seq_length == IMAGE_TOKENS
    assert processor.tokenizer.encode("<image>", add_special_tokens=False) == [image_id]
    inputs = processor(images=[Image.new("RGB", (7, 90), "blue")], text=["<image>hi"], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert int((inputs["input_ids"] == image_id).sum()) == IMAGE_TOKENS
    with torch.no_grad():  # the vision tower yields exactly as many features as there are image tokens
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_chat_template_renders_structured_content_and_marks_only_the_assistant_reply(vlm_dir):
    processor = AutoProcessor.from_pretrained(vlm_dir)
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert prompt == "<|bos|><|user|><image>Describe the image.<|end|><|assistant|>"
    messages = [*QUESTION, {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]}]
    tok = processor.tokenizer
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    reply = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(reply) == "A red square.<|eos|>"
    plain = [{"role": "user", "content": "Hi"}]  # string content renders as in the text template
    assert processor.apply_chat_template(plain, add_generation_prompt=True) == "<|bos|><|user|>Hi<|end|><|assistant|>"


def test_generates_new_tokens_for_an_image_and_a_chat_prompt(vlm_dir):
    new_tokens, prompt_ids, processor = _generate(vlm_dir)
    assert 1 <= len(new_tokens) <= 3
    assert int((prompt_ids == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()) == IMAGE_TOKENS
    assert int((prompt_ids == processor.tokenizer.bos_token_id).sum()) == 1


def test_cli_publishes_it_as_image_text_to_text_and_it_loads_by_tag(hub, tmp_path, vlm_dir):
    repo = "tiny-test/vlm"
    assert main(["models", "tiny", "--out", str(tmp_path / "vlm"), "--kind", "vision_language",
                 "--publish", repo, "--tag", "v1", "--hub", hub.url]) == 0
    meta = card_metadata(open(hf_hub_download(repo, "README.md", revision="v1")).read())
    assert (meta["pipeline_tag"], meta["library_name"]) == ("image-text-to-text", "transformers")
    assert "random-weights" in meta["tags"]
    from_hub, _, _ = _generate(repo, revision="v1")
    assert torch.equal(from_hub, _generate(vlm_dir)[0])  # the seed-0 defaults, so the very same model


def _conversations() -> datasets.Dataset:
    """Four one-turn image conversations, in the structured form trl's vision collator reads."""
    colors = ["red", "green", "blue", "white"]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": f"It is {color}."}]}]
                for color in colors]
    images = [[Image.new("RGB", (32, 32), color)] for color in colors]
    return datasets.Dataset.from_dict({"messages": messages, "images": images})


def test_trl_sft_trains_it_on_image_conversations_with_assistant_only_loss(tmp_path, vlm_dir):
    from trl import SFTConfig, SFTTrainer

    processor = AutoProcessor.from_pretrained(vlm_dir)
    args = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_length=None, packing=False,
                     assistant_only_loss=True, report_to="none", per_device_train_batch_size=2, max_steps=2,
                     save_strategy="no", logging_steps=1)
    trainer = SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(vlm_dir), args=args,
                         train_dataset=_conversations(), processing_class=processor)
    assert trainer.chat_template is None  # our own template's {% generation %} markers are used, not trl's

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 2 * IMAGE_TOKENS
    assert (batch["labels"][batch["input_ids"] == image_id] == -100).all()
    for ids, labels, color in zip(batch["input_ids"], batch["labels"], ["red", "green"]):
        trained = labels != -100
        assert tok.decode(ids[trained]) == f"It is {color}.<|eos|>"
        assert torch.equal(labels[trained], ids[trained])
        span = trained.nonzero().flatten()  # one contiguous span: the reply and its EOS
        assert len(span) == int(span[-1] - span[0]) + 1

    result = trainer.train()
    assert result.global_step == 2
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
