"""Deita conversation embeddings: Vicuna rendering, last-real-token pooling, order, truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from alignsmith.models import tiny
from alignsmith.records import RecordError
from builders.deita.embedding import (
    CausalLMEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
    answer_text,
    embedding_texts,
    render_vicuna,
)

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def conversation(record_id: str, *texts: str) -> dict:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return {"id": record_id, "source": "test", "messages": messages}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.build_causal_lm(tmp_path_factory.mktemp("embedder"), seed=1, hidden_size=48, num_layers=2)


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    words = "alpha beta gamma {delta} epsilon 7 zeta eta theta".split()
    return [
        conversation(f"e{i}", *(" ".join(rng.choice(words, rng.integers(1, 25))) for _ in range(2 * rng.integers(1, 3))))
        for i in range(9)
    ]


def test_vicuna_rendering_is_exact_and_drops_system_messages():
    record = {
        "id": "v",
        "messages": [
            {"role": "system", "content": "Custom system prompt"},
            {"role": "user", "content": "Hi {there}"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "See you."},
            {"role": "user", "content": "Wait"},
        ],
    }
    assert render_vicuna(record) == (
        SYSTEM + " USER: Hi {there} ASSISTANT: Hello!</s>USER: Bye ASSISTANT: See you.</s>USER: Wait "
    )
    assert answer_text(record) == "Hello!\nSee you."
    with pytest.raises(RecordError, match="record 'q' \\(row 3\\), field 'messages': no assistant message"):
        answer_text(conversation("q", "only a question"), row_index=3)


def manual_last_token_state(model, tokenizer, text: str, max_length: int | None = None) -> np.ndarray:
    ids = tokenizer(text, return_tensors="pt", truncation=max_length is not None, max_length=max_length)
    with torch.no_grad():
        return model(**ids, output_hidden_states=True).hidden_states[-1][0, -1].numpy()


def test_embeddings_are_the_last_real_token_state_of_each_row_in_input_order(model_dir, records):
    embedder = CausalLMEmbedder(str(model_dir), batch_size=4)
    result = embedder.embed_records(records)
    assert result.ids == [r["id"] for r in records]
    assert result.vectors.shape == (len(records), 48) and result.vectors.dtype == np.float32
    assert embedder.dimension == 48 and embedder.model_sha is None
    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    for i, text in enumerate(embedding_texts(records)):
        np.testing.assert_allclose(result.vectors[i], manual_last_token_state(lm, embedder.tokenizer, text), atol=1e-5)
    assert not result.truncated.any()

    perm = np.random.default_rng(1).permutation(len(records))
    permuted = embedder.embed_records([records[i] for i in perm])
    np.testing.assert_allclose(permuted.vectors, result.vectors[perm], atol=1e-5)


def test_long_conversations_keep_their_beginning_and_are_flagged(model_dir, records):
    embedder = CausalLMEmbedder(str(model_dir), batch_size=3, max_length=24)
    result = embedder.embed_records(records)
    texts = embedding_texts(records)
    lengths = [len(embedder.tokenizer.encode(t)) for t in texts]
    assert result.truncated.tolist() == [n > 24 for n in lengths] and result.truncated.any()
    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    for i, text in enumerate(texts):
        expected = manual_last_token_state(lm, embedder.tokenizer, text, max_length=24)
        np.testing.assert_allclose(result.vectors[i], expected, atol=1e-5)


def test_float16_output_and_only_answer_option(model_dir, records):
    full = CausalLMEmbedder(str(model_dir), output_dtype="float16").embed_records(records)
    assert full.vectors.dtype == np.float16
    answers = CausalLMEmbedder(str(model_dir), only_answer=True).embed_records(records)
    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = CausalLMEmbedder(str(model_dir)).tokenizer
    np.testing.assert_allclose(answers.vectors[0], manual_last_token_state(lm, tok, answer_text(records[0])), atol=1e-5)
    assert not np.allclose(answers.vectors[0], full.vectors[0].astype(np.float32), atol=1e-2)


def test_sentence_transformer_embeds_the_same_rendered_text(tmp_path, records):
    from sentence_transformers import SentenceTransformer

    path = tiny.build_sentence_transformer(tmp_path / "st", seed=2)
    embedder = SentenceTransformerEmbedder(str(path), batch_size=4)
    result = embedder.embed_records(records)
    expected = SentenceTransformer(str(path), device="cpu").encode(embedding_texts(records))
    np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
    assert embedder.dimension == result.vectors.shape[1] == 32
    assert result.ids == [r["id"] for r in records] and not result.truncated.any()


def test_both_embedders_satisfy_the_protocol(model_dir, tmp_path):
    def dimension_of(embedder: Embedder) -> int:
        return embedder.embed_records([conversation("p", "q", "a")]).vectors.shape[1]

    st = SentenceTransformerEmbedder(str(tiny.build_sentence_transformer(tmp_path / "st", seed=0)))
    assert dimension_of(CausalLMEmbedder(str(model_dir))) == 48 and dimension_of(st) == st.dimension


def test_bad_record_names_id_and_field(model_dir):
    with pytest.raises(RecordError, match="record 'x' \\(row 1\\), field 'messages\\[0\\].content': empty string"):
        CausalLMEmbedder(str(model_dir)).embed_records([conversation("ok", "q", "a"), conversation("x", " ", "a")])


def test_an_embedder_around_a_causal_lm_in_memory_uses_its_decoder(model_dir, records):
    loaded = CausalLMEmbedder(str(model_dir))
    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    in_memory = CausalLMEmbedder.from_model(lm, loaded.tokenizer, batch_size=4)
    np.testing.assert_allclose(
        in_memory.embed_records(records).vectors, loaded.embed_records(records).vectors, atol=1e-5
    )
