"""Chat templates for training: which one is used, and the stop tokens a chat model needs."""

from __future__ import annotations

import pytest

from alignsmith.models import tiny

from training.chat import ChatTemplateError, choose_template, prepare_chat


def test_a_known_base_template_without_markers_is_swapped_for_trls_training_variant():
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_training_chat_template

    tokenizer = tiny.build_tokenizer()
    tokenizer.chat_template = qwen2_5_chat_template
    expected = (qwen2_5_training_chat_template, "trl training template")
    assert choose_template(tokenizer, None, need_markers=True) == expected
    assert choose_template(tokenizer, None, need_markers=False) == (qwen2_5_chat_template, "base model")
    assert choose_template(tokenizer, tiny.CHAT_TEMPLATE, need_markers=True) == (tiny.CHAT_TEMPLATE, "recipe")
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        choose_template(tokenizer, None, need_markers=False)


def test_named_base_templates_train_with_the_default_one():
    tokenizer = tiny.build_tokenizer()
    tokenizer.chat_template = {"default": tiny.CHAT_TEMPLATE, "tool_use": "{{ messages }}"}
    assert choose_template(tokenizer, None, need_markers=True) == (tiny.CHAT_TEMPLATE, "base model")
    tokenizer.chat_template = {"tool_use": tiny.CHAT_TEMPLATE}
    with pytest.raises(ChatTemplateError, match=r"named chat templates \(tool_use\) but no 'default'"):
        choose_template(tokenizer, None, need_markers=False)


def test_generation_also_stops_at_a_templates_own_end_of_turn_token(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny.build_causal_lm(tmp_path / "m")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    im_end_style = tiny.CHAT_TEMPLATE.replace("message['content'] + eos_token", "message['content'] + '<|end|>'")
    prepare_chat(tokenizer, model, im_end_style, None, need_markers=True)

    end, eos = tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == [eos, end]
    assert model.config.eos_token_id == eos and tokenizer.chat_template == im_end_style
