"""Tiny offline models: deterministic from a seed, and loadable wherever a Hub model id is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignsmith.models import tiny


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny.build_causal_lm(tmp_path_factory.mktemp("llama"), seed=0)


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, llama_dir):
    again = tiny.build_causal_lm(tmp_path / "again", seed=0)
    other = tiny.build_causal_lm(tmp_path / "other", seed=1)
    names = sorted(p.name for p in llama_dir.iterdir())
    assert "model.safetensors" in names and "generation_config.json" in names
    for name in names:
        assert (again / name).read_bytes() == (llama_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (llama_dir / "model.safetensors").read_bytes()


def test_building_does_not_touch_the_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build_causal_lm(tmp_path / "m", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_round_trips_any_text_and_keeps_digits_single(llama_dir):
    tok = AutoTokenizer.from_pretrained(llama_dir)
    text = "Café {braces} naïve 😀 \t x=42;\n"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    for digit in "123456":
        assert len(tok.encode(digit, add_special_tokens=False)) == 1
    # a digit after a space stays the bare digit token: the space is its own token
    assert tok.encode("score: 3", add_special_tokens=False)[-1] == tok.convert_tokens_to_ids("3")
    assert {tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token} == {"<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"}


def test_chat_template_marks_exactly_the_assistant_replies_and_their_eos(llama_dir):
    tok = AutoTokenizer.from_pretrained(llama_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
    ]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = np.array(out["input_ids"]), np.array(out["assistant_masks"], dtype=bool)
    # contiguous masked spans, one per assistant message, each ending with EOS
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    spans = [tok.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]
    assert spans == ["Hello!<|eos|>", "It is 4.<|eos|>"]
    text = tok.decode(ids)
    assert text.startswith("<|bos|><|system|>Be brief.<|end|><|user|>Hi there<|end|>")
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>Hi there<|end|><|assistant|>")


@pytest.mark.parametrize("architecture", sorted(tiny.ARCHITECTURES))
def test_every_architecture_loads_generates_and_takes_lora(tmp_path, architecture):
    from peft import LoraConfig, get_peft_model

    path = tiny.build_causal_lm(tmp_path, architecture=architecture, hidden_size=32, num_layers=1)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == architecture
    assert model.generation_config.eos_token_id == tok.eos_token_id
    inputs = tok("Hello", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] <= inputs["input_ids"].shape[1] + 3
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_unknown_architecture_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt9'.*llama"):
        tiny.build_causal_lm(tmp_path, architecture="gpt9")


def test_sentence_transformer_is_deterministic_and_mean_pools(tmp_path):
    from sentence_transformers import SentenceTransformer

    a = SentenceTransformer(str(tiny.build_sentence_transformer(tmp_path / "a", seed=3)), device="cpu")
    b = SentenceTransformer(str(tiny.build_sentence_transformer(tmp_path / "b", seed=3)), device="cpu")
    texts = ["a short text", "another, somewhat longer piece of text to embed"]
    ea, eb = a.encode(texts), b.encode(texts)
    assert ea.shape == (2, 32) and a.get_embedding_dimension() == 32
    np.testing.assert_array_equal(ea, eb)
    # mean pooling over the encoder's token states
    encoder = a[0].auto_model
    tokens = a.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        states = encoder(**tokens).last_hidden_state[0]
    np.testing.assert_allclose(ea[0], states.mean(0).numpy(), atol=1e-5)


def test_tiny_models_mark_their_random_weights_in_config_json_even_once_resaved(tmp_path, llama_dir):
    from alignsmith.cards import RANDOM_WEIGHTS_MARKER
    from alignsmith.lineage import Lineage, pin
    from alignsmith.publish import random_weight_refs

    encoder = tiny.build_sentence_transformer(tmp_path / "st", seed=0)
    AutoModelForCausalLM.from_pretrained(llama_dir).save_pretrained(tmp_path / "trained")  # e.g. fine-tuned from it
    for folder in (llama_dir, encoder, tmp_path / "trained"):
        assert json.loads((folder / "config.json").read_text())[RANDOM_WEIGHTS_MARKER] is True, folder
    models = [pin("scorer", str(llama_dir)), pin("embedder", str(encoder)), pin("base", str(tmp_path / "trained"))]
    assert random_weight_refs(Lineage(command="t", recipe={}, models=models)) == models
