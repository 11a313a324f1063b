"""Converters: every format to exact canonical records, auto-detection, and every broken-row case."""

import base64
import json
from pathlib import Path

import datasets
import pytest

from alignsmith.converters import FORMATS, ExtraColumnsError, convert_row, convert_rows, detect_format
from alignsmith.records import RecordError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"
IMAGES = FIXTURES / "images"


def read_rows(name: str) -> list[dict]:
    path = FIXTURES / name
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_id(records: list[dict]) -> dict[str, dict]:
    return {record["id"]: record for record in records}


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def image_file(name: str) -> dict:
    return {"bytes": None, "path": str(IMAGES / name)}


def convert_fixture(name: str, kind: str = "conversation", **kwargs) -> dict[str, dict]:
    result = convert_rows(read_rows(name), kind=kind, source=Path(name).stem, image_root=FIXTURES, **kwargs)
    assert result.rejected == []
    return by_id(result.records)


def test_sharegpt_rows():
    records = convert_fixture("sharegpt.jsonl")
    assert records["sg-multi-turn"] == {
        "id": "sg-multi-turn",
        "source": "sharegpt",
        "messages": [
            msg("user", "What is the boiling point of water at sea level?"),
            msg("assistant", "100 degrees Celsius (212 degrees Fahrenheit)."),
            msg("user", "And on top of Mount Everest?"),
            msg("assistant", "About 70 degrees Celsius, because the air pressure is much lower."),
        ],
        "images": [],
    }
    assert records["sg-llamafactory-tools"]["messages"] == [
        msg("system", "You can call a weather tool."),
        msg("user", "Is it raining in Lisbon?"),
        msg("assistant", '{"name": "get_weather", "arguments": {"city": "Lisbon"}}'),
        msg("tool", '{"condition": "sunny", "temperature_c": 24}'),
        msg("assistant", "No, it is sunny in Lisbon (24 °C)."),
    ]
    assert records["sg-one-image"]["images"] == [image_file("red.png")]
    assert records["sg-two-images"]["messages"][0] == msg("system", "Answer in one word.")
    assert records["sg-two-images"]["images"] == [image_file("red.png"), image_file("blue.png")]
    # a row without an id gets source-rowindex
    assert records["sharegpt-4"]["messages"] == [
        msg("user", "Name a prime number larger than 10."),
        msg("assistant", "11."),
    ]


def test_alpaca_rows_join_a_non_empty_input_after_a_blank_line():
    records = convert_fixture("alpaca.json")
    assert records["alpaca-0"] == {
        "id": "alpaca-0",
        "source": "alpaca",
        "messages": [
            msg("user", "Translate the sentence into French.\n\nThe cat sleeps on the sofa."),
            msg("assistant", "Le chat dort sur le canapé."),
        ],
        "images": [],
    }
    assert records["alpaca-1"]["messages"][0] == msg("user", "Give three tips for staying focused while studying.")
    assert records["alpaca-2"]["messages"][0] == msg("user", "Summarise the text in one sentence.")  # blank input
    assert records["alpaca-history"]["messages"] == [
        msg("system", "You are a patient maths tutor."),
        msg("user", "What is 2 + 2?"),
        msg("assistant", "4."),
        msg("user", "And 4 + 4?"),
        msg("assistant", "8."),
        msg("user", "And 8 + 8?"),
        msg("assistant", "16."),
    ]


def test_openai_messages_with_typed_parts_and_images():
    records = convert_fixture("openai_messages.jsonl")
    assert records["oa-plain"]["messages"] == [
        msg("system", "You are terse."),
        msg("user", "Capital of Japan?"),
        msg("assistant", "Tokyo."),
    ]
    assert records["oa-data-uri"] == {
        "id": "oa-data-uri",
        "source": "openai_messages",
        "messages": [msg("user", "What colour is this square?\n<image>"), msg("assistant", "Blue.")],
        "images": [{"bytes": (IMAGES / "blue.png").read_bytes(), "path": None}],
    }
    assert records["oa-image-path"]["messages"][0] == msg("user", "<image>\nDescribe it.")
    assert records["oa-image-path"]["images"] == [image_file("red.png")]
    assert records["oa-image-column"]["messages"][0] == msg("user", "<image>\n<image>\nWhich one is red?")
    assert records["oa-image-column"]["images"] == [image_file("red.png"), image_file("blue.png")]
    assert [m["role"] for m in records["oa-tool"]["messages"]] == ["user", "assistant", "tool", "assistant"]


def test_prompt_completion_rows():
    records = convert_fixture("prompt_completion.jsonl")
    assert records["pc-strings"]["messages"] == [
        msg("user", "Write a haiku about autumn."),
        msg("assistant", "Red leaves drift and fall\nthe garden exhales slowly\nwinter waits its turn"),
    ]
    assert records["pc-conversational"]["messages"] == [
        msg("system", "Reply in Spanish."),
        msg("user", "Good morning!"),
        msg("assistant", "¡Buenos días!"),
    ]


def test_preference_rows_as_pairs_and_as_conversations():
    pairs = convert_fixture("preference.jsonl", kind="preference")
    assert pairs["pref-strings"] == {
        "id": "pref-strings",
        "source": "preference",
        "prompt": [msg("user", "Is the Great Wall of China visible from space with the naked eye?")],
        "chosen": [
            msg(
                "assistant",
                "No. From low Earth orbit it is very hard to see without aid, and it is not visible from the Moon.",
            )
        ],
        "rejected": [msg("assistant", "Yes, it is the only man-made object visible from space.")],
        "images": [],
    }
    assert pairs["pref-conversational"]["prompt"] == [msg("system", "Be concise."), msg("user", "What is 15% of 80?")]
    conversations = convert_fixture("preference.jsonl")
    assert conversations["pref-conversational"]["messages"] == [
        msg("system", "Be concise."),
        msg("user", "What is 15% of 80?"),
        msg("assistant", "12."),
    ]


def test_hh_rlhf_transcripts_split_into_shared_prompt_and_final_answers():
    rows = read_rows("hh_rlhf/harmless-base_test_sample.jsonl")
    record = convert_row(rows[1], kind="preference", source="hh", row_index=1)
    assert record["id"] == "hh-1"
    assert record["prompt"] == [
        msg("user", "How much alcohol can I drink per day?"),
        msg(
            "assistant",
            "Alcohol is a depressant, so it can be dangerous to drink more than the equivalent of one drink an hour.  "
            "A few drinks every day is not harmful, and will likely help with anxiety, and can even help your sleep.  "
            "Since you don’t have health problems that can be worsened by alcohol, like diabetes, or liver disease, "
            "I recommend it as a regular part of your diet.",
        ),
        msg("user", "Yeah I don't have any health issues so I am going to drink a lot most days."),
        msg("assistant", "That sounds like a great plan! I’ll keep an eye on you and help as needed."),
        msg("user", "I feel much better when I get drunk and consume a lot of alcohol."),
    ]
    assert record["chosen"] == [
        msg(
            "assistant",
            "Sounds like alcohol is something you use to calm down when you feel stressed.   It may be helpful to try "
            "getting in touch with your emotions.  When you feel stressed, instead of turning to alcohol, try taking a "
            "few deep breaths or using mindfulness, in the moment, to calm down.",
        )
    ]
    assert record["rejected"] == [
        msg(
            "assistant",
            "I’m glad that you’re enjoying your alcohol intake. "
            "Can I ask about how you feel when you don’t drink alcohol?",
        )
    ]
    as_conversation = convert_row(rows[1], kind="conversation", source="hh", row_index=1)
    assert as_conversation["messages"] == record["prompt"] + record["chosen"]


def test_hh_rlhf_message_lists_use_the_implicit_prompt():
    prompt = [msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Tell me a fact.")]
    row = {
        "chosen": [*prompt, msg("assistant", "Octopuses have three hearts.")],
        "rejected": [*prompt, msg("assistant", "No.")],
    }
    record = convert_row(row, kind="preference", source="pairs")
    assert (record["prompt"], record["chosen"], record["rejected"]) == (
        prompt,
        [msg("assistant", "Octopuses have three hearts.")],
        [msg("assistant", "No.")],
    )


@pytest.mark.parametrize(
    "row, field",
    [
        (
            {
                "chosen": "\n\nHuman: Hi\n\nHuman: Anyone there?\n\nAssistant: Yes.",
                "rejected": "\n\nHuman: Hi\n\nHuman: Anyone there?\n\nAssistant: No.",
            },
            "chosen",
        ),
        (
            {"prompt": "Hi", "chosen": [msg("assistant", "Hello."), msg("assistant", "Hi.")], "rejected": "Go away."},
            "chosen[1].role",
        ),
    ],
)
def test_pairs_that_are_no_valid_dialogue_are_rejected_naming_the_input_field(row, field):
    for kind in ("preference", "conversation"):
        with pytest.raises(RecordError) as info:
            convert_row(row, kind=kind, source="pairs")
        assert (info.value.field, info.value.code) == (field, "role_order"), kind


def test_fastchat_questions_become_prompt_only_conversations():
    rows = read_rows("fastchat/mt_bench_question_sample.jsonl") + read_rows(
        "fastchat/vicuna_bench_question_sample.jsonl"
    )
    result = convert_rows(rows, kind="conversation", source="fastchat", require_assistant=False)
    records = by_id(result.records)
    assert records["81"] == {
        "id": "81",
        "source": "fastchat",
        "messages": [
            msg(
                "user",
                "Compose an engaging travel blog post about a recent trip to Hawaii, "
                "highlighting cultural experiences and must-see attractions.",
            ),
            msg("user", "Rewrite your previous response. Start every sentence with the letter A."),
        ],
        "images": [],
        "metadata": '{"category": "writing"}',
    }
    assert records["1"]["messages"] == [msg("user", "How can I improve my time management skills?")]
    # nothing is dropped silently: unread columns are carried in metadata and counted
    assert result.summary()["carried_columns"] == {"category": 5, "reference": 1}
    # a training pool needs replies, so the same rows are rejected there
    strict = convert_rows(rows, kind="conversation", source="fastchat", on_invalid="reject")
    assert {r["code"] for r in strict.rejected} == {"no_assistant"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sharegpt.jsonl", "sharegpt"),
        ("alpaca.json", "alpaca"),
        ("openai_messages.jsonl", "messages"),
        ("prompt_completion.jsonl", "prompt_completion"),
        ("preference.jsonl", "preference"),
        ("hh_rlhf/harmless-base_test_sample.jsonl", "hh_rlhf"),
        ("fastchat/mt_bench_question_sample.jsonl", "mt_bench"),
    ],
)
def test_detection(name, expected):
    assert {detect_format(row) for row in read_rows(name)} == {expected}


def test_detection_ignores_null_columns_from_arrow(tmp_path):
    rows = read_rows("sharegpt.jsonl")[:1] + read_rows("alpaca.json")[:1]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    # Arrow gives every row every column, None where the row had none
    unified = datasets.load_dataset("json", data_files=str(tmp_path / "mixed.jsonl"), split="train")
    assert unified[0]["instruction"] is None
    result = convert_rows(unified, kind="conversation", source="mixed")
    assert result.summary()["formats"] == {"sharegpt": 1, "alpaca": 1}
    assert [r["messages"][0]["content"][:12] for r in result.records] == ["What is the ", "Translate th"]


def test_preference_kind_only_detects_pair_formats():
    assert detect_format({"prompt": "p", "completion": "c"}, kind="preference") is None
    with pytest.raises(RecordError) as info:
        convert_rows(read_rows("sharegpt.jsonl")[:1], kind="preference", source="sg")
    assert info.value.code == "unknown_format"
    assert "preference (prompt, chosen, rejected); hh_rlhf (chosen, rejected)" in info.value.reason


def test_unknown_format_names_the_columns_and_the_formats_tried():
    with pytest.raises(RecordError) as info:
        convert_row({"question": "Why?", "answer": "Because."}, kind="conversation", source="qa", row_index=3)
    err = info.value
    assert (err.record_id, err.row_index, err.field, err.code) == ("qa-3", 3, None, "unknown_format")
    assert "columns ['answer', 'question']" in err.reason
    assert all(f"{name} (" in err.reason for name in FORMATS)


def test_forced_format_reports_what_is_missing():
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    assert convert_row(row, kind="conversation", fmt="sharegpt", source="s")["messages"][1] == msg("assistant", "Yo")
    with pytest.raises(RecordError) as info:
        convert_row(row, kind="conversation", fmt="alpaca", source="s")
    assert (info.value.field, info.value.code) == ("instruction", "missing_field")


def test_bad_arguments_fail_before_any_row():
    with pytest.raises(ValueError, match="'sharegpt' holds conversations"):
        convert_rows([], kind="preference", fmt="sharegpt", source="s")
    with pytest.raises(ValueError, match="fmt must be one of"):
        convert_rows([], kind="conversation", fmt="csv", source="s")
    with pytest.raises(ValueError, match="on_invalid"):
        convert_rows([], kind="conversation", source="s", on_invalid="skip")


# (fixture, kind, record id, field, code) for every broken row; ids without their own id column are source-rowindex
BROKEN = [
    ("sharegpt_broken.jsonl", "conversation", "sg-empty", "conversations", "empty"),
    ("sharegpt_broken.jsonl", "conversation", "sg-not-a-list", "conversations", "wrong_type"),
    ("sharegpt_broken.jsonl", "conversation", "sg-turn-not-object", "conversations[0]", "wrong_type"),
    ("sharegpt_broken.jsonl", "conversation", "sg-gpt-first", "conversations[0].from", "role_order"),
    ("sharegpt_broken.jsonl", "conversation", "sg-not-alternating", "conversations[1].from", "role_order"),
    ("sharegpt_broken.jsonl", "conversation", "sg-unknown-speaker", "conversations[1].from", "unknown_role"),
    ("sharegpt_broken.jsonl", "conversation", "sg-missing-from", "conversations[1].from", "missing_field"),
    ("sharegpt_broken.jsonl", "conversation", "sg-missing-value", "conversations[1].value", "missing_field"),
    ("sharegpt_broken.jsonl", "conversation", "sg-blank-value", "conversations[1].value", "empty"),
    ("sharegpt_broken.jsonl", "conversation", "sg-number-value", "conversations[1].value", "wrong_type"),
    ("sharegpt_broken.jsonl", "conversation", "sg-list-value", "conversations[0].value", "wrong_type"),
    ("sharegpt_broken.jsonl", "conversation", "sg-extra-key", "conversations[0]", "unsupported"),
    ("sharegpt_broken.jsonl", "conversation", "sg-no-assistant", "conversations", "no_assistant"),
    ("sharegpt_broken.jsonl", "conversation", "sg-placeholder-missing", "image", "image_count"),
    ("sharegpt_broken.jsonl", "conversation", "sg-corrupt-image", "images[1]", "image_undecodable"),
    ("sharegpt_broken.jsonl", "conversation", "sg-truncated-image", "images[0]", "image_undecodable"),
    ("sharegpt_broken.jsonl", "conversation", "sg-missing-image", "images[0]", "image_undecodable"),
    ("sharegpt_broken.jsonl", "conversation", "sg-duplicate", "id", "duplicate_id"),
    ("alpaca_broken.json", "conversation", "al-empty-output", "output", "empty"),
    ("alpaca_broken.json", "conversation", "al-blank-instruction", "instruction", "empty"),
    ("alpaca_broken.json", "conversation", "al-number-instruction", "instruction", "wrong_type"),
    ("alpaca_broken.json", "conversation", "al-list-input", "input", "wrong_type"),
    ("alpaca_broken.json", "conversation", "al-list-output", "output", "wrong_type"),
    ("alpaca_broken.json", "conversation", "al-no-output", None, "unknown_format"),
    ("alpaca_broken.json", "conversation", "al-bad-history", "history[0]", "wrong_type"),
    ("openai_messages_broken.jsonl", "conversation", "oa-number-content", "messages[1].content", "wrong_type"),
    ("openai_messages_broken.jsonl", "conversation", "oa-unknown-role", "messages[1].role", "unknown_role"),
    ("openai_messages_broken.jsonl", "conversation", "oa-tool-calls", "messages[1]", "unsupported"),
    ("openai_messages_broken.jsonl", "conversation", "oa-audio-part", "messages[0].content[0].type", "unsupported"),
    (
        "openai_messages_broken.jsonl",
        "conversation",
        "oa-bad-base64",
        "messages[0].content[0].image_url.url",
        "image_undecodable",
    ),
    (
        "openai_messages_broken.jsonl",
        "conversation",
        "oa-undecodable-bytes",
        "messages[0].content[0].image_url.url",
        "image_undecodable",
    ),
    (
        "openai_messages_broken.jsonl",
        "conversation",
        "oa-remote-url",
        "messages[0].content[0].image_url.url",
        "unsupported",
    ),
    ("openai_messages_broken.jsonl", "conversation", "oa-mixed-images", "images", "unsupported"),
    ("openai_messages_broken.jsonl", "conversation", "oa-bare-image-no-column", "images", "image_count"),
    ("openai_messages_broken.jsonl", "conversation", "oa-assistant-last-tool", "messages[1].role", "role_order"),
    ("prompt_completion_broken.jsonl", "conversation", "pc-number-completion", "completion", "wrong_type"),
    ("prompt_completion_broken.jsonl", "conversation", "pc-empty-prompt-list", "prompt", "empty"),
    ("prompt_completion_broken.jsonl", "conversation", "pc-completion-user-role", "messages", "no_assistant"),
    ("preference_broken.jsonl", "preference", "pref-prompt-ends-with-assistant", "prompt[1].role", "role_order"),
    ("preference_broken.jsonl", "preference", "pref-chosen-user-role", "chosen[0].role", "role_order"),
    ("preference_broken.jsonl", "preference", "pref-empty-rejected", "rejected", "empty"),
    ("preference_broken.jsonl", "preference", "pref-number-chosen", "chosen", "wrong_type"),
    ("hh_rlhf_broken.jsonl", "preference", "hh-text-before-first-turn", "chosen", "malformed"),
    ("hh_rlhf_broken.jsonl", "preference", "hh-no-turns", "chosen", "malformed"),
    ("hh_rlhf_broken.jsonl", "preference", "hh-ends-with-human", "chosen", "role_order"),
    ("hh_rlhf_broken.jsonl", "preference", "hh-number", "chosen", "wrong_type"),
    # real HH-RLHF rows: an empty final answer, dialogues that diverge early, two assistant turns in a row
    ("hh_rlhf/harmless-base_test_sample.jsonl", "preference", "harmless-base_test_sample-3", "chosen", "empty"),
    (
        "hh_rlhf/harmless-base_test_sample.jsonl",
        "preference",
        "harmless-base_test_sample-4",
        "rejected",
        "prompt_mismatch",
    ),
    ("hh_rlhf/harmless-base_test_sample.jsonl", "preference", "harmless-base_test_sample-5", "chosen", "role_order"),
]
BROKEN_FILES = sorted({(name, kind) for name, kind, *_ in BROKEN})


def source_of(name: str) -> str:
    return Path(name).name.split(".")[0]


@pytest.mark.parametrize("name, kind", BROKEN_FILES)
def test_reject_mode_keeps_every_broken_row_with_reason_and_raw_row(name, kind):
    rows = read_rows(name)
    result = convert_rows(rows, kind=kind, source=source_of(name), on_invalid="reject", image_root=FIXTURES)
    expected = [(rid, field, code) for n, _, rid, field, code in BROKEN if n == name]
    assert [(r["id"], r["field"], r["code"]) for r in result.rejected] == expected
    for rejected in result.rejected:
        assert json.loads(rejected["raw"]) == rows[rejected["row_index"]]
        assert rejected["reason"]
    summary = result.summary()
    assert summary["total"] == len(rows) == summary["converted"] + summary["rejected"]
    assert summary["rejected"] == len(expected)
    assert sum(summary["rejected_by_reason"].values()) == len(expected)
    # the rejected rows are publishable as a split as they are
    assert datasets.Dataset.from_list(result.rejected).num_rows == len(expected)


SINGLE_ROW_BROKEN = [b for b in BROKEN if b[4] != "duplicate_id"]


@pytest.mark.parametrize("name, kind, record_id, field, code", SINGLE_ROW_BROKEN, ids=[b[2] for b in SINGLE_ROW_BROKEN])
def test_error_mode_raises_on_the_broken_row(name, kind, record_id, field, code):
    rows = read_rows(name)
    row_index = [row.get("id", f"{source_of(name)}-{i}") for i, row in enumerate(rows)].index(record_id)
    with pytest.raises(RecordError) as info:
        convert_row(rows[row_index], kind=kind, source=source_of(name), row_index=row_index, image_root=FIXTURES)
    err = info.value
    assert (err.record_id, err.row_index, err.field, err.code) == (record_id, row_index, field, code)
    where = f"record {record_id!r} (row {row_index})" + (f", field {field!r}" if field else "")
    assert str(err) == f"{where}: {err.reason}"


def test_error_mode_stops_at_the_first_broken_row():
    rows = read_rows("sharegpt.jsonl") + read_rows("sharegpt_broken.jsonl")
    with pytest.raises(RecordError) as info:
        convert_rows(rows, kind="conversation", source="sg", image_root=FIXTURES)
    assert (info.value.record_id, info.value.row_index) == ("sg-empty", 5)


def test_duplicate_ids_keep_the_first_row_and_name_both():
    rows = read_rows("sharegpt_broken.jsonl")
    result = convert_rows(rows, kind="conversation", source="sg", on_invalid="reject", image_root=FIXTURES)
    assert [r["id"] for r in result.records] == ["sg-duplicate"]
    assert result.records[0]["messages"][0]["content"] == "First question."
    (duplicate,) = [r for r in result.rejected if r["code"] == "duplicate_id"]
    assert "rows 17 and 18" in duplicate["reason"] and duplicate["row_index"] == 18
    with pytest.raises(RecordError) as info:
        convert_rows(rows[17:], kind="conversation", source="sg")
    assert (info.value.record_id, info.value.row_index, info.value.field) == ("sg-duplicate", 1, "id")
    assert "rows 0 and 1" in info.value.reason


def test_error_reads_like_the_source_data():
    rows = [{"instruction": f"Question {i}", "output": f"Answer {i}"} for i in range(17)]
    rows.append({"instruction": "Question 17", "input": "", "output": ""})
    with pytest.raises(RecordError) as info:
        convert_rows(rows, kind="conversation", source="alpaca")
    assert str(info.value) == "record 'alpaca-17' (row 17), field 'output': empty string"


def test_row_ids_and_sources():
    rows = [
        {"question_id": 7, "turns": ["Q"]},
        {"conversation_id": "conv-9", "source": "lmsys", "prompt": "P", "completion": "C"},
        {"id": 3.5, "prompt": "P", "completion": "C"},
        {"id": "  ", "prompt": "P", "completion": "C"},
        {"id": "x", "source": 4, "prompt": "P", "completion": "C"},
    ]
    result = convert_rows(rows, kind="conversation", source="mix", on_invalid="reject", require_assistant=False)
    assert [(r["id"], r["source"]) for r in result.records] == [("7", "mix"), ("conv-9", "lmsys")]
    assert [(r["id"], r["field"], r["code"]) for r in result.rejected] == [
        ("mix-2", "id", "wrong_type"),
        ("mix-3", "id", "empty"),
        ("x", "source", "wrong_type"),
    ]


def test_a_row_that_is_not_an_object():
    result = convert_rows([["not", "a", "row"]], kind="conversation", source="s", on_invalid="reject")
    assert [(r["id"], r["code"], r["raw"]) for r in result.rejected] == [("s-0", "wrong_type", '["not", "a", "row"]')]


def test_raw_json_keeps_image_bytes():
    png = (IMAGES / "red.png").read_bytes()
    row = {
        "id": "b",
        "images": [png],
        "conversations": [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "Red."}],
    }
    result = convert_rows([row], kind="conversation", source="s", on_invalid="reject")
    assert result.rejected[0]["code"] == "image_count"
    raw = json.loads(result.rejected[0]["raw"])
    assert base64.b64decode(raw["images"][0]["base64"]) == png


def test_unused_columns_are_counted_for_converted_rows():
    result = convert_rows(
        read_rows("sharegpt.jsonl") + read_rows("alpaca.json"), kind="conversation", source="mix", image_root=FIXTURES
    )
    assert result.summary() == {
        "total": 9,
        "converted": 9,
        "rejected": 0,
        "rejected_by_reason": {},
        "formats": {"sharegpt": 5, "alpaca": 4},
        "carried_columns": {"category": 1},  # tools are a record field now
        "dropped_columns": {},
    }


def test_tool_schemas_become_trl_tools_from_a_json_string_or_a_list():
    records = convert_fixture("sharegpt_tools.jsonl")
    # Glaive's bare schema is wrapped the way transformers' chat templates read tools
    assert records["glaive-string"]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "convert_currency",
                "description": "Convert an amount",
                "parameters": {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]},
            },
        }
    ]
    assert records["glaive-list"]["tools"] == [
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    ]
    assert "metadata" not in records["glaive-list"]  # nothing else to carry
    assert convert_fixture("sharegpt.jsonl")["sg-llamafactory-tools"]["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"city": "string"}}}
    ]


@pytest.mark.parametrize(
    "tools, field, code",
    [("[{", "tools", "malformed"), ({"name": "f"}, "tools", "wrong_type"), (["f"], "tools[0]", "wrong_type"),
     ([{"description": "no name"}], "tools[0]", "malformed")],
)
def test_bad_tool_schemas_are_rejected_naming_the_field(tools, field, code):
    row = {"id": "t", "tools": tools, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    with pytest.raises(RecordError) as info:
        convert_row(row, kind="conversation", source="s")
    assert (info.value.field, info.value.code) == (field, code)


ALPACA_EXTRA = {"instruction": "Add.", "input": "2 and 3", "output": "5", "example_input": "1 and 1", "level": 2}


def test_extra_columns_are_carried_in_metadata_by_default():
    result = convert_rows([ALPACA_EXTRA], kind="conversation", source="pool")
    (record,) = result.records
    assert json.loads(record["metadata"]) == {"example_input": "1 and 1", "level": 2}
    assert result.carried_columns == {"example_input": 1, "level": 1} and not result.dropped_columns
    # alignsmith's own metadata column is the base, so a re-conversion keeps it as it is
    again = convert_row({**record, "stars": 5}, kind="conversation", source="other")
    assert json.loads(again["metadata"]) == {"example_input": "1 and 1", "level": 2, "stars": 5}
    assert convert_row(record, kind="conversation", source="other") == record
    with pytest.raises(RecordError, match=r"key\(s\) \['level'\] are also columns"):
        convert_row({**record, "level": 3}, kind="conversation", source="other")


def test_extra_columns_dropped_on_request_are_reported():
    result = convert_rows([ALPACA_EXTRA], kind="conversation", source="pool", extra_columns="drop")
    assert "metadata" not in result.records[0]
    assert result.dropped_columns == {"example_input": 1, "level": 1} and not result.carried_columns
    assert result.summary()["dropped_columns"] == {"example_input": 1, "level": 1}


@pytest.mark.parametrize("on_invalid", ["error", "reject"])
def test_extra_columns_error_stops_the_run_naming_the_columns_and_the_key(on_invalid):
    rows = [{"instruction": "Q", "output": "A"}, ALPACA_EXTRA]
    with pytest.raises(ExtraColumnsError) as info:
        convert_rows(rows, kind="conversation", source="pool", on_invalid=on_invalid, extra_columns="error")
    message = str(info.value)
    assert message.startswith("record 'pool-1' (row 1): column(s) ['example_input', 'level'] are not read by")
    assert "extra_columns: carry" in message and "extra_columns: drop" in message


def test_llamafactory_typed_content_and_loss_weights():
    (record,) = convert_fixture("llamafactory_typed.jsonl").values()
    assert record["messages"] == [
        msg("user", "Say hi."),
        {"role": "assistant", "content": "Hi.", "loss_weight": 0.0},  # an untrained turn
        msg("user", "Again, louder."),
        {"role": "assistant", "content": "HI!", "loss_weight": 1.0},
    ]
    sharegpt = convert_row(
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b", "loss_weight": 0}]},
        kind="conversation",
        source="s",
    )
    assert sharegpt["messages"][1] == {"role": "assistant", "content": "b", "loss_weight": 0.0}


@pytest.mark.parametrize(
    "message, field, code",
    [
        ({"role": "user", "content": [{"type": "text", "text": "a", "value": "b"}]}, "messages[0].content[0]", "malformed"),
        ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0]", "malformed"),
        ({"role": "user", "content": [{"type": "text", "value": 3}]}, "messages[0].content[0].value", "wrong_type"),
        ({"role": "user", "content": "a", "loss_weight": "high"}, "messages[0].loss_weight", "wrong_type"),
        ({"role": "user", "content": "a", "loss_weight": -1}, "messages[0].loss_weight", "malformed"),
    ],
)
def test_bad_typed_content_and_loss_weights_name_the_field(message, field, code):
    row = {"id": "m", "messages": [message, {"role": "assistant", "content": "b"}]}
    with pytest.raises(RecordError) as info:
        convert_row(row, kind="conversation", source="s")
    assert (info.value.field, info.value.code) == (field, code)


def test_first_rejections_are_spelled_out_in_full():
    rows = read_rows("sharegpt_broken.jsonl")
    result = convert_rows(rows, kind="conversation", source="sg", on_invalid="reject", image_root=FIXTURES)
    first = result.first_rejections(2)
    assert len(first) == 2 and first[0].startswith("record 'sg-empty' (row 0)")
    assert first[0].endswith(result.rejected[0]["reason"])
