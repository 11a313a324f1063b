"""datasets, transformers and peft round trips through the embedded Hub, pinned to tags."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Image, load_dataset
from huggingface_hub import HfApi
from PIL import Image as PILImage


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_multi_config_image_dataset_pinned_by_tag(hub):
    api = HfApi()
    repo = f"alice/{unique('vqa')}"
    images = [PILImage.fromarray(np.full((6, 5, 3), 30 * i, dtype=np.uint8)) for i in range(4)]
    vision = Dataset.from_dict({"id": list(range(4)), "image": images}).cast_column("image", Image())
    DatasetDict({"train": vision.select(range(3)), "test": vision.select([3])}).push_to_hub(repo, config_name="vision")
    DatasetDict({"train": Dataset.from_dict({"answer": ["yes", "no"]})}).push_to_hub(repo, config_name="answers")
    api.create_tag(repo, tag="v1", repo_type="dataset")
    DatasetDict({"train": Dataset.from_dict({"answer": ["rewritten"]})}).push_to_hub(repo, config_name="answers")

    pinned = load_dataset(repo, "vision", revision="v1")
    assert pinned["train"]["id"] == [0, 1, 2] and pinned["test"]["id"] == [3]
    assert pinned["train"][2]["image"].size == (5, 6)
    assert pinned["test"][0]["image"].getpixel((0, 0)) == (90, 90, 90)
    assert list(load_dataset(repo, "answers", revision="v1")["train"]["answer"]) == ["yes", "no"]
    assert list(load_dataset(repo, "answers")["train"]["answer"]) == ["rewritten"]


@pytest.fixture(scope="module")
def tiny_causal_lm():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 20,
        trainer=trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def test_transformers_model_pinned_by_tag(hub, tiny_causal_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny_causal_lm
    repo = f"alice/{unique('llama')}"
    model.push_to_hub(repo)
    tokenizer.push_to_hub(repo)
    HfApi().create_tag(repo, tag="sft-v1")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    model.push_to_hub(repo)

    loaded = AutoModelForCausalLM.from_pretrained(repo, revision="sft-v1")
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, original[name], msg=name)
    latest = AutoModelForCausalLM.from_pretrained(repo)
    torch.testing.assert_close(latest.model.embed_tokens.weight, model.model.embed_tokens.weight)
    reloaded_tok = AutoTokenizer.from_pretrained(repo, revision="sft-v1")
    assert reloaded_tok("the lazy fox")["input_ids"] == tokenizer("the lazy fox")["input_ids"]


def test_peft_adapter_pinned_by_revision(hub, tiny_causal_lm):
    from peft import LoraConfig, PeftModel, get_peft_model

    base, _ = tiny_causal_lm
    repo = f"alice/{unique('lora')}"
    torch.manual_seed(1)
    adapted = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    commit = adapted.push_to_hub(repo)
    expected = {k: v.clone() for k, v in adapted.state_dict().items() if "lora_" in k}
    adapted.unload()  # give the shared base back its plain modules

    loaded = PeftModel.from_pretrained(base, repo, revision=commit.oid)
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert got.keys() == expected.keys() and expected
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, expected[name], msg=name)
    loaded.unload()
