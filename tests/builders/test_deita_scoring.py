"""Deita scorers (prompts, score maths, batching, turns, truncation, failures) and perplexity/IFD."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from alignsmith.models import tiny
from alignsmith.records import RecordError
from builders.deita import prompts
from builders.deita.difficulty import DifficultyScorer
from builders.deita.embedding import CausalLMEmbedder, SentenceTransformerEmbedder
from alignsmith.models.batching import length_sorted_batches
from alignsmith.models.loading import ModelLoadError, pinned, resolve_dtype
from builders.deita.scoring import DeitaScorer, DigitTokenError, digit_token_ids

WORDS = "the a fox dog {braces} runs } jumps { quickly over lazy 12 3 café 😀 why how explain".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.build_causal_lm(tmp_path_factory.mktemp("scorer"), seed=0, hidden_size=32, num_layers=2)


@pytest.fixture(scope="module")
def quality(model_dir):
    return DeitaScorer(str(model_dir), "quality", batch_size=4)


@pytest.fixture(scope="module")
def complexity(model_dir):
    return DeitaScorer(str(model_dir), "complexity", batch_size=4)


def random_turns(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [
        (" ".join(rng.choice(WORDS, rng.integers(1, 30))), " ".join(rng.choice(WORDS, rng.integers(1, 60))))
        for _ in range(n)
    ]


def conversation(record_id: str, *texts: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return {"id": record_id, "source": "test", "messages": messages}


def reference_score(scorer: DeitaScorer, prompt: str) -> float:
    """The reference loop: one prompt per generate call, logits of the first generated position."""
    input_ids = scorer.tokenizer.encode(prompt, return_tensors="pt")
    out = scorer.model.generate(
        input_ids, max_new_tokens=2, num_return_sequences=1, return_dict_in_generate=True, output_scores=True,
        do_sample=False,
    )
    logits = out.scores[0][0][scorer.digit_ids].double().numpy()
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return float((probs * np.arange(1, 7)).sum())


# --- prompts ------------------------------------------------------------------------------------------


def test_templates_render_byte_exact_with_braces_in_user_text():
    instruction, response = "Explain {x} and {0} }{", "Use {} and {{name}}."
    assert prompts.render_complexity(instruction) == (
        "You are a helpful assistant. Please identify the complexity score of the following user query. \n"
        "##Query: Explain {x} and {0} }{  \n##Complexity: "
    )
    assert prompts.render_quality(instruction, response) == (
        "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
        "Question. \n #Question#:\nExplain {x} and {0} }{\n#Response#:\nUse {} and {{name}}. \n##Quality: "
    )


def test_conversation_turns_pair_replies_skip_system_and_tool_and_name_fields():
    record = {
        "id": "c1",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "call"},
            {"role": "tool", "content": "result"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "q2"},
        ],
    }
    turns = prompts.conversation_turns(record)
    assert [(t.instruction, t.response) for t in turns] == [("q1", "call\nanswer"), ("q2", "")]
    assert turns[0].instruction_field == "messages[1].content"
    assert turns[0].response_field == "messages[2..4].content"
    assert turns[1].response_field is None


@pytest.mark.parametrize(
    "messages, field, code",
    [
        ([{"role": "user", "content": " \n"}, {"role": "assistant", "content": "a"}], "messages[0].content", "empty"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}], "messages[1].content", "wrong_type"),
        ([{"role": "assistant", "content": "a"}], "messages[0].role", "role_order"),
        ([{"role": "bot", "content": "a"}], "messages[0].role", "unknown_role"),
        ([], "messages", "wrong_type"),
    ],
)
def test_conversation_turns_reject_bad_records_naming_id_and_field(messages, field, code):
    with pytest.raises(RecordError) as err:
        prompts.conversation_turns({"id": "bad-7", "messages": messages}, row_index=7)
    assert (err.value.record_id, err.value.row_index, err.value.field, err.value.code) == ("bad-7", 7, field, code)
    assert f"record 'bad-7' (row 7), field '{field}'" in str(err.value)


# --- digit tokens and score maths -----------------------------------------------------------------------


def test_digit_ids_are_the_bare_digit_tokens_after_the_cue(quality):
    ids = digit_token_ids(quality.tokenizer, prompts.QUALITY_CUE)
    assert ids == quality.tokenizer.convert_tokens_to_ids(list("123456")) == quality.digit_ids


def test_digit_merged_with_the_space_is_a_clear_error():
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(
        [f"##Complexity: {d}" for d in "123456"] * 20,
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(DigitTokenError, match="digit '1' after '##Complexity: ' is not a single token"):
        digit_token_ids(tok, prompts.COMPLEXITY_CUE)


def fixed_digit_logits(scorer: DeitaScorer, digit_logits: list[float]) -> torch.nn.Module:
    """An LM head whose logits are the same known constants at every position."""
    vocab = len(scorer.tokenizer)
    head = torch.nn.Linear(scorer.model.config.hidden_size, vocab, bias=True)
    torch.nn.init.zeros_(head.weight)
    bias = torch.full((vocab,), -5.0)
    bias[torch.as_tensor(scorer.digit_ids)] = torch.tensor(digit_logits)
    head.bias.data = bias
    return head


def test_score_is_the_expectation_over_the_six_digit_logits(model_dir, monkeypatch):
    scorer = DeitaScorer(str(model_dir), "complexity")
    z = [0.3, -1.0, 2.0, 0.5, 1.5, -0.2]
    monkeypatch.setattr(scorer.model, "lm_head", fixed_digit_logits(scorer, z))
    expected = sum(k * math.exp(v) for k, v in zip(range(1, 7), z)) / sum(math.exp(v) for v in z)
    result = scorer.score_turns([("What is love?", ""), ("x " * 40, "")])
    np.testing.assert_allclose(result.scores, [expected, expected], rtol=1e-6)


def test_explicit_digit_ids_override_the_derived_ones(model_dir, monkeypatch):
    derived = DeitaScorer(str(model_dir), "complexity")
    reversed_ids = list(reversed(derived.digit_ids))
    scorer = DeitaScorer(str(model_dir), "complexity", digit_token_ids=reversed_ids)
    assert scorer.digit_ids == reversed_ids
    z = [0.0, 0.0, 0.0, 0.0, 0.0, 4.0]
    monkeypatch.setattr(scorer.model, "lm_head", fixed_digit_logits(derived, z))  # z[k] on the derived id of k+1
    # the strong logit now sits on the id read as "1"
    p = np.exp(z[::-1]) / np.exp(z).sum()
    np.testing.assert_allclose(scorer.score_turns([("hi", "")]).scores, [(p * np.arange(1, 7)).sum()], rtol=1e-6)
    with pytest.raises(ValueError, match="6 distinct ids"):
        DeitaScorer(str(model_dir), "complexity", digit_token_ids=[1, 2, 3])


def test_one_pass_scores_equal_the_reference_generate_loop(quality, complexity):
    turns = random_turns(6, seed=1)
    for scorer, render in ((quality, prompts.render_quality), (complexity, prompts.render_complexity)):
        args = turns if scorer is quality else [(i,) for i, _ in turns]
        expected = [reference_score(scorer, render(*a)) for a in args]
        np.testing.assert_allclose(scorer.score_turns(turns).scores, expected, atol=1e-5)


# --- batching -------------------------------------------------------------------------------------------


def test_length_sorted_batches_cover_every_row_once_longest_first():
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_batched_scores_equal_one_at_a_time_and_keep_input_order(model_dir, quality):
    turns = random_turns(11, seed=2)
    batched = quality.score_turns(turns).scores
    alone = DeitaScorer(str(model_dir), "quality", batch_size=1)
    np.testing.assert_allclose(batched, alone.score_turns(turns).scores, atol=1e-5)
    assert np.ptp(batched) > 1e-4  # the rows really differ, so an order mix-up would show
    perm = np.random.default_rng(0).permutation(len(turns))
    np.testing.assert_allclose(quality.score_turns([turns[i] for i in perm]).scores, batched[perm], atol=1e-5)


def test_bfloat16_scores_stay_close_to_float32(model_dir, quality):
    turns = random_turns(4, seed=3)
    bf16 = DeitaScorer(str(model_dir), "quality", dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16
    np.testing.assert_allclose(bf16.score_turns(turns).scores, quality.score_turns(turns).scores, atol=0.05)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


# --- records and turns ----------------------------------------------------------------------------------


def test_records_get_per_turn_scores_each_scored_on_its_own(quality):
    records = [
        conversation("a", "q1 {x}", "r1", "q2", "r2", system="ignored system prompt"),
        conversation("b", "only turn", "its reply"),
    ]
    results = quality.score_records(records)
    assert [r.id for r in results] == ["a", "b"]
    expected = quality.score_turns([("q1 {x}", "r1"), ("q2", "r2"), ("only turn", "its reply")]).scores
    np.testing.assert_allclose(results[0].scores + results[1].scores, expected, atol=1e-5)
    assert results[0].truncated == [False, False] and results[0].rejection is None


def test_history_context_prepends_earlier_turns_to_the_instruction(model_dir, complexity):
    record = conversation("h", "first question", "first answer", "second question", "second answer")
    history = DeitaScorer(str(model_dir), "complexity", context="history").score_records([record])[0].scores
    independent = complexity.score_records([record])[0].scores
    expected_second = complexity.score_turns(
        [("User: first question\nAssistant: first answer\nsecond question", "")]
    ).scores[0]
    assert history[0] == pytest.approx(independent[0], abs=1e-6)
    assert history[1] == pytest.approx(expected_second, abs=1e-6)
    assert history[1] != pytest.approx(independent[1], abs=1e-6)


# --- truncation -----------------------------------------------------------------------------------------


def test_truncation_keeps_the_cue_cuts_the_response_first_and_flags_rows(model_dir):
    scorer = DeitaScorer(str(model_dir), "quality", max_length=64)
    tok = scorer.tokenizer
    long_response = " ".join(f"word{i}" for i in range(200))
    turn = prompts.Turn("Short question?", long_response, "i", "r")
    encoded = prompts.encode_turn(tok, "quality", turn, "", 64)
    text = tok.decode(encoded.input_ids, skip_special_tokens=True)
    assert encoded.truncated and len(encoded.input_ids) <= 64
    assert text.endswith(" \n##Quality: ") and "#Question#:\nShort question?\n#Response#:\nword0 word1" in text
    kept = text.split("#Response#:\n")[1].removesuffix(" \n##Quality: ")
    assert long_response.startswith(kept) and len(kept) < len(long_response)

    long_instruction = " ".join(f"ask{i}" for i in range(200))
    encoded = prompts.encode_turn(tok, "quality", prompts.Turn(long_instruction, "reply", "i", "r"), "", 64)
    text = tok.decode(encoded.input_ids, skip_special_tokens=True)
    # the response went first (to nothing), then the instruction kept its head
    assert text.endswith("\n#Response#:\n \n##Quality: ") and "#Question#:\nask0 ask1" in text

    result = scorer.score_turns([("Short question?", long_response), ("Short question?", "short")])
    assert result.truncated.tolist() == [True, False]


@pytest.mark.parametrize("keep", ["head", "tail"])
def test_cutting_one_token_off_a_multibyte_character_still_shortens_the_text(model_dir, keep):
    # byte-level pieces of one character share its offsets: a cut must drop the whole character
    tok = DeitaScorer(str(model_dir), "quality").tokenizer
    text = "“quoted words”" if keep == "head" else "“quoted words”"[::-1]
    remaining, removed = prompts._cut(tok, text, keep, 1)
    assert removed == 1 and len(remaining) < len(text)
    assert text.startswith(remaining) if keep == "head" else text.endswith(remaining)

    turn = prompts.Turn("Question?", "An answer that ends in a curly quote”", "i", "r")
    full = len(prompts.encode_turn(tok, "quality", turn, "", 10_000).input_ids)
    encoded = prompts.encode_turn(tok, "quality", turn, "", full - 1)
    assert encoded.truncated and len(encoded.input_ids) <= full - 1


def test_history_is_cut_from_its_oldest_end_before_the_instruction(model_dir):
    tok = DeitaScorer(str(model_dir), "complexity").tokenizer
    history = "".join(f"User: old{i}\nAssistant: reply{i}\n" for i in range(60))
    turn = prompts.Turn("the current question", "", "i", None)
    encoded = prompts.encode_turn(tok, "complexity", turn, history, 80)
    text = tok.decode(encoded.input_ids, skip_special_tokens=True)
    assert encoded.truncated and len(encoded.input_ids) <= 80
    assert "reply59\nthe current question  \n##Complexity: " in text and "old0" not in text


def test_truncation_error_mode_and_impossible_fits_raise_naming_the_turn(model_dir):
    record = conversation("long-1", "question " * 100, "answer")
    strict = DeitaScorer(str(model_dir), "complexity", max_length=40, truncation="error")
    with pytest.raises(RecordError) as err:
        strict.score_records([record])
    assert (err.value.record_id, err.value.field, err.value.code) == ("long-1", "messages[0].content", "too_long")
    assert "over max_length 40" in str(err.value)
    tiny_context = DeitaScorer(str(model_dir), "complexity", max_length=5)
    with pytest.raises(RecordError, match="even without user text"):
        tiny_context.score_records([record])


# --- failures ------------------------------------------------------------------------------------------


def test_unscorable_turns_raise_or_are_rejected_never_defaulted(quality, monkeypatch):
    records = [
        conversation("ok-1", "fine question", "fine answer"),
        conversation("nan-2", "fine", "reply", "POISON question", "reply"),
        conversation("empty-3", "   ", "reply"),
        conversation("noreply-4", "a question"),
        conversation("ok-5", "another", "answer"),
    ]
    poison = quality.tokenizer.encode("POISON", add_special_tokens=False)[0]
    forward = quality.model.forward

    def poisoned(input_ids, **kwargs):
        out = forward(input_ids=input_ids, **kwargs)
        out.logits[(input_ids == poison).any(-1)] = float("nan")
        return out

    monkeypatch.setattr(quality.model, "forward", poisoned)
    with pytest.raises(RecordError) as err:
        quality.score_records(records)
    assert (err.value.record_id, err.value.field) == ("empty-3", "messages[0].content")  # input errors fail fast

    results = quality.score_records(records, on_error="reject")
    by_id = {r.id: r for r in results}
    assert [r.id for r in results] == ["ok-1", "nan-2", "empty-3", "noreply-4", "ok-5"]
    assert len(by_id["ok-1"].scores) == 1 and len(by_id["ok-5"].scores) == 1
    for rid, field, code in [
        ("nan-2", "messages[2].content", "unscorable"),
        ("empty-3", "messages[0].content", "empty"),
        ("noreply-4", "messages[0].content", "no_assistant"),
    ]:
        rejection = by_id[rid].rejection
        assert (rejection.record_id, rejection.field, rejection.code) == (rid, field, code)
        assert by_id[rid].scores == [] and by_id[rid].truncated == []

    with pytest.raises(RecordError, match="record 'nan-2' \\(row 0\\), field 'messages\\[2\\].content'.*not finite"):
        quality.score_records(records[1:2])


def test_score_turns_refuses_empty_text(quality, complexity):
    with pytest.raises(RecordError, match="turns\\[1\\].instruction.*empty"):
        complexity.score_turns([("fine", ""), ("", "")])
    with pytest.raises(RecordError, match="turns\\[0\\].response.*empty"):
        quality.score_turns([("fine", " ")])


def test_bad_options_and_missing_models_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        DeitaScorer(str(model_dir), "helpfulness")
    with pytest.raises(ModelLoadError, match="not-a-user/no-such-model"):
        pinned("not-a-user/no-such-model", None, "scorer")
    ref = pinned(str(model_dir), None, "scorer")
    assert ref.repo_type == "local" and len(ref.sha) == 64  # a local folder is pinned by its content hash


@pytest.mark.parametrize(
    "load",
    [lambda path: DeitaScorer(path, "quality"), DifficultyScorer, CausalLMEmbedder, SentenceTransformerEmbedder],
    ids=["scorer", "difficulty", "causal-lm-embedder", "sentence-transformer-embedder"],
)
def test_a_folder_without_a_tokenizer_is_a_model_load_error_naming_it(model_dir, tmp_path, load):
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, weights_only / name)
    with pytest.raises(ModelLoadError, match="cannot load .*model '.*weights-only'"):
        load(str(weights_only))


def test_scorer_from_the_hub_is_pinned_to_the_commit(hub, model_dir, quality):
    from huggingface_hub import HfApi

    api = HfApi()
    repo = "scorers/tiny-quality"
    api.create_repo(repo, exist_ok=True)
    commit = api.upload_folder(repo_id=repo, folder_path=str(model_dir))
    api.create_tag(repo, tag="v1")
    scorer = DeitaScorer(repo, "quality", revision="v1")
    assert scorer.model_sha == commit.oid and scorer.model_revision == "v1"
    turns = random_turns(3, seed=4)
    np.testing.assert_allclose(scorer.score_turns(turns).scores, quality.score_turns(turns).scores, atol=1e-6)
    difficulty = DifficultyScorer(repo, revision="v1")
    assert (difficulty.model_sha, difficulty.model_revision) == (commit.oid, "v1")


# --- perplexity and IFD ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def difficulty(model_dir):
    return DifficultyScorer(str(model_dir), batch_size=3)


def manual_perplexity(scorer: DifficultyScorer, context: list[int], response: list[int]) -> float:
    with torch.no_grad():
        logits = scorer.model(torch.tensor([context + response])).logits[0, len(context) - 1 : -1]
    return math.exp(torch.nn.functional.cross_entropy(logits, torch.tensor(response)).item())


def test_perplexity_and_ifd_match_a_per_record_computation(difficulty):
    records = [conversation(f"d{i}", q, r) for i, (q, r) in enumerate(random_turns(7, seed=5))]
    results = difficulty.score_records(records)
    tok = difficulty.tokenizer
    for record, result in zip(records, results):
        question, answer = (m["content"] for m in record["messages"])
        prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False), add_special_tokens=False)
        response = tok.encode(answer, add_special_tokens=False)
        assert result.perplexity == pytest.approx(manual_perplexity(difficulty, prompt, response), rel=1e-5)
        assert result.response_perplexity == pytest.approx(
            manual_perplexity(difficulty, [tok.bos_token_id], response), rel=1e-5
        )
        assert result.ifd == pytest.approx(result.perplexity / result.response_perplexity, rel=1e-12)
        assert not result.truncated and result.rejection is None


def test_difficulty_truncates_the_response_and_rejects_what_cannot_be_scored(model_dir):
    scorer = DifficultyScorer(str(model_dir), max_length=30)
    records = [
        conversation("long", "short q", "many words " * 50),
        conversation("short", "short q", "short answer"),
        conversation("huge-q", "question " * 60, "answer"),
        conversation("no-reply", "question"),
    ]
    results = scorer.score_records(records, on_error="reject")
    assert [r.truncated for r in results[:2]] == [True, False]
    assert all(math.isfinite(r.ifd) for r in results[:2])
    assert (results[2].rejection.code, results[3].rejection.code) == ("too_long", "no_assistant")
    assert math.isnan(results[2].ifd)
    with pytest.raises(RecordError, match="record 'huge-q' \\(row 2\\)"):
        scorer.score_records(records)


def test_a_scorer_around_a_model_in_memory_scores_the_same(quality):
    again = DeitaScorer.from_model(quality.model, quality.tokenizer, "quality", batch_size=2)
    turns = random_turns(5, seed=6)
    np.testing.assert_allclose(again.score_turns(turns).scores, quality.score_turns(turns).scores, atol=1e-6)
    assert again.model_sha is None and again.max_length == quality.max_length


def test_difficulty_without_a_chat_template_conditions_on_the_plain_instruction(difficulty, monkeypatch):
    tok = difficulty.tokenizer
    monkeypatch.setattr(tok, "chat_template", None)
    assert difficulty.prompt_ids("Name a colour.") == tok.encode("Name a colour.\n")
    result = difficulty.score_records([conversation("plain", "Name a colour.", "Blue.")])[0]
    response = tok.encode("Blue.", add_special_tokens=False)
    assert result.perplexity == pytest.approx(
        manual_perplexity(difficulty, tok.encode("Name a colour.\n"), response), rel=1e-5
    )


def test_non_finite_perplexity_is_rejected_naming_the_response(difficulty, monkeypatch):
    forward = difficulty.model.forward

    def broken(input_ids, **kwargs):
        out = forward(input_ids=input_ids, **kwargs)
        out.logits[:] = float("nan")
        return out

    monkeypatch.setattr(difficulty.model, "forward", broken)
    result = difficulty.score_records([conversation("nan", "q", "a")], on_error="reject")[0]
    assert (result.rejection.field, result.rejection.code) == ("messages[1].content", "unscorable")
    assert math.isnan(result.ifd)
