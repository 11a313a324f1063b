"""Canonical records: turn order, content, images, ids, preference pairs, and Arrow round trips."""

import io
import pickle
from pathlib import Path

import PIL.Image
import pytest

from alignsmith.errors import AlignsmithError
from alignsmith.records import (
    RecordError,
    RecordRef,
    UniqueIds,
    conversation_features,
    dataset_from_rows,
    preference_features,
    preference_to_conversation,
    validate_conversation,
    validate_preference,
)

IMAGES = Path(__file__).parents[1] / "fixtures" / "formats" / "images"


def conversation(*turns, images=None, **extra):
    record = {"id": "c-1", "source": "unit", "messages": [{"role": r, "content": c} for r, c in turns], **extra}
    if images is not None:
        record["images"] = images
    return record


def error_of(call, *args, **kwargs) -> RecordError:
    with pytest.raises(RecordError) as info:
        call(*args, **kwargs)
    return info.value


def test_error_message_names_record_row_and_field():
    err = RecordError("empty string", code="empty", record_id="alpaca-17", row_index=17, field="output")
    assert str(err) == "record 'alpaca-17' (row 17), field 'output': empty string"
    assert isinstance(err, AlignsmithError)  # the CLI prints it as one line
    assert (err.record_id, err.row_index, err.field, err.reason, err.code) == (
        "alpaca-17",
        17,
        "output",
        "empty string",
        "empty",
    )


def test_error_survives_pickling():
    # datasets.map(num_proc=...) ships errors between processes
    err = pickle.loads(pickle.dumps(RecordError("bad", code="empty", record_id="x", row_index=3, field="f")))
    assert (str(err), err.code, err.row_index) == ("record 'x' (row 3), field 'f': bad", "empty", 3)


def test_ref_maps_canonical_fields_back_to_input_fields():
    ref = RecordRef("sg-1", 4, {"messages[0].content": "conversations[0].value"})
    assert ref.error("messages[0].content", "empty string", "empty").field == "conversations[0].value"
    assert ref.error("messages[1].content", "empty string", "empty").field == "messages[1].content"


def test_valid_conversation_is_returned_normalised():
    record = conversation(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))
    assert validate_conversation(record) == {**record, "images": []}


@pytest.mark.parametrize(
    "roles",
    [
        ("user", "assistant"),
        ("system", "user", "assistant", "user", "assistant"),
        ("user", "assistant", "tool", "assistant"),
        ("user", "assistant", "tool", "tool", "assistant", "user", "assistant"),
        ("user", "assistant", "user"),  # a trailing question is allowed
    ],
)
def test_accepted_turn_orders(roles):
    validate_conversation(conversation(*[(r, f"text {i}") for i, r in enumerate(roles)]))


@pytest.mark.parametrize(
    "roles, bad_index",
    [
        (("assistant", "user"), 0),
        (("tool", "assistant"), 0),
        (("user", "user", "assistant"), 1),
        (("user", "assistant", "assistant"), 2),
        (("system", "system", "user", "assistant"), 1),
        (("user", "system", "assistant"), 1),
        (("user", "tool", "assistant"), 1),
        (("user", "assistant", "tool", "user"), 3),
    ],
)
def test_rejected_turn_orders_name_the_offending_message(roles, bad_index):
    err = error_of(validate_conversation, conversation(*[(r, f"text {i}") for i, r in enumerate(roles)]))
    assert (err.code, err.field) == ("role_order", f"messages[{bad_index}].role")


def test_prompt_sets_may_hold_consecutive_user_turns_without_assistant():
    record = conversation(("user", "Turn one"), ("user", "Turn two"))
    assert validate_conversation(record, require_assistant=False)["messages"] == record["messages"]
    err = error_of(validate_conversation, record)
    assert (err.code, err.field) == ("no_assistant", "messages")


@pytest.mark.parametrize(
    "content, code, reason",
    [
        ("", "empty", "empty string"),
        (" \n\t", "empty", "empty string"),
        (None, "missing_field", "missing"),
        (42, "wrong_type", "expected a string, got a number"),
        (["a", "b"], "wrong_type", "expected a string, got a list"),
    ],
)
def test_message_content_must_be_a_non_empty_string(content, code, reason):
    err = error_of(validate_conversation, conversation(("user", "Hi"), ("assistant", content)))
    assert (err.code, err.field, err.reason, err.record_id) == (code, "messages[1].content", reason, "c-1")


def test_unknown_role_and_extra_message_keys_are_rejected():
    err = error_of(validate_conversation, conversation(("user", "Hi"), ("bot", "Hello")))
    assert (err.code, err.field) == ("unknown_role", "messages[1].role")
    record = conversation(("user", "Hi"), ("assistant", "Hello"))
    record["messages"][1]["name"] = "helper"
    err = error_of(validate_conversation, record)
    assert (err.code, err.field) == ("unsupported", "messages[1]")
    assert "name" in err.reason


def test_a_type_error_names_the_type_given():
    record = conversation(("user", "Hi"), ("assistant", "Hello"))
    err = error_of(validate_conversation, {**record, "messages": tuple(record["messages"])})
    assert (err.code, err.field, err.reason) == ("wrong_type", "messages", "expected a list of messages, got a tuple")


def test_empty_conversation_and_bad_identity():
    assert error_of(validate_conversation, conversation()).code == "empty"
    err = error_of(validate_conversation, {**conversation(("user", "Hi"), ("assistant", "Yo")), "id": 5})
    assert (err.code, err.field) == ("wrong_type", "id")
    err = error_of(validate_conversation, {**conversation(("user", "Hi"), ("assistant", "Yo")), "source": ""})
    assert (err.code, err.field) == ("empty", "source")


def png_bytes(colour=(0, 255, 0)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (3, 3), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_in_every_accepted_form_are_normalised_and_decoded():
    red = IMAGES / "red.png"
    given = [str(red), png_bytes(), {"bytes": None, "path": str(red)}, PIL.Image.new("RGB", (2, 2)), red]
    record = conversation(("user", "<image>" * len(given) + " Compare."), ("assistant", "Done."), images=given)
    images = validate_conversation(record)["images"]
    assert images[0] == {"bytes": None, "path": str(red)}
    assert images[1] == {"bytes": png_bytes(), "path": None}
    assert images[2] == {"bytes": None, "path": str(red)}
    assert images[3]["path"] is None and PIL.Image.open(io.BytesIO(images[3]["bytes"])).size == (2, 2)
    assert images[4]["path"] == str(red.absolute())


def test_relative_image_paths_resolve_against_image_root():
    record = conversation(("user", "<image> What is it?"), ("assistant", "Red."), images=["red.png"])
    assert validate_conversation(record, image_root=IMAGES)["images"] == [
        {"bytes": None, "path": str(IMAGES / "red.png")}
    ]


@pytest.mark.parametrize(
    "image, code",
    [
        (b"not an image at all", "image_undecodable"),
        (png_bytes()[:40], "image_undecodable"),
        (str(IMAGES / "corrupt.png"), "image_undecodable"),
        (str(IMAGES / "missing.png"), "image_undecodable"),
        ("https://example.com/cat.png", "unsupported"),
        (12, "wrong_type"),
        ({"bytes": None, "path": None}, "missing_field"),
        ({"bytes": "iVBORw0KGgo=", "path": None}, "wrong_type"),
    ],
)
def test_bad_images_are_rejected_naming_the_image(image, code):
    record = conversation(("user", "<image><image> Compare."), ("assistant", "Same."), images=[png_bytes(), image])
    err = error_of(validate_conversation, record)
    assert (err.code, err.field) == (code, "images[1]")


def test_placeholder_count_must_match_images():
    record = conversation(("user", "<image> and <image>?"), ("assistant", "Two."), images=[png_bytes()])
    err = error_of(validate_conversation, record)
    assert (err.code, err.field) == ("image_count", "images")
    assert "2 <image> placeholder(s)" in err.reason and "1 image(s)" in err.reason


def preference(**changes):
    record = {
        "id": "p-1",
        "source": "unit",
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    return {**record, **changes}


def test_valid_preference_and_its_conversation():
    record = validate_preference(preference())
    assert record == {**preference(), "images": []}
    assert preference_to_conversation(record) == {
        "id": "p-1",
        "source": "unit",
        "messages": [*preference()["prompt"], *preference()["chosen"]],
        "images": [],
    }


@pytest.mark.parametrize(
    "changes, code, field",
    [
        (
            {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
            "role_order",
            "prompt[1].role",
        ),
        ({"prompt": []}, "empty", "prompt"),
        (
            {"prompt": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Anyone?"}]},
            "role_order",
            "prompt[1].role",
        ),
        (
            {"chosen": [{"role": "assistant", "content": "Hello!"}, {"role": "assistant", "content": "Hi!"}]},
            "role_order",
            "chosen[1].role",
        ),
        ({"chosen": [{"role": "user", "content": "Hi"}]}, "role_order", "chosen[0].role"),
        ({"rejected": [{"role": "assistant", "content": " "}]}, "empty", "rejected[0].content"),
        ({"rejected": "Go away."}, "wrong_type", "rejected"),
        ({"images": [png_bytes()]}, "image_count", "images"),
    ],
)
def test_invalid_preferences(changes, code, field):
    err = error_of(validate_preference, preference(**changes))
    assert (err.code, err.field, err.record_id) == (code, field, "p-1")


def test_duplicate_ids_name_both_rows():
    ids = UniqueIds()
    ids.claim("a", 0)
    ids.claim("b", 1)
    err = error_of(ids.claim, "a", 5)
    assert (err.code, err.record_id, err.row_index, err.field) == ("duplicate_id", "a", 5, "id")
    assert "rows 0 and 5" in err.reason


def test_records_round_trip_through_arrow_with_images():
    record = validate_conversation(
        conversation(("user", "<image> Colour?"), ("assistant", "Green."), images=[png_bytes()])
    )
    text_only = validate_conversation({**conversation(("user", "Hi"), ("assistant", "Yo")), "id": "c-2"})
    ds = dataset_from_rows([record, text_only], conversation_features())
    # optional fields a record does not hold come back as nulls; messages without weights stay {role, content}
    assert ds[0]["messages"] == record["messages"]
    assert ds[0]["images"][0].getpixel((0, 0)) == (0, 255, 0)
    assert (ds[1]["images"], ds[1]["tools"], ds[1]["metadata"]) == ([], None, None)
    pairs = dataset_from_rows([validate_preference(preference())], preference_features())
    assert pairs[0]["chosen"] == preference()["chosen"]


TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


def test_tools_metadata_and_loss_weights_round_trip_through_arrow():
    plain = validate_conversation(conversation(("user", "Hi"), ("assistant", "Yo")))
    record = validate_conversation(
        {**conversation(("user", "Find x."), ("assistant", "Found.")), "id": "c-2",
         "tools": [{"name": "other", "description": "bare"}, TOOL], "metadata": '{"level": 2}'}
    )
    record["messages"][1]["loss_weight"] = 0.0
    record = validate_conversation(record)
    assert record["tools"] == [{"type": "function", "function": {"name": "other", "description": "bare"}}, TOOL]
    assert record["messages"][1]["loss_weight"] == 0.0
    # from_list would take the columns of the first row, which has no tools: dataset_from_rows keeps them
    ds = dataset_from_rows([plain, record], conversation_features())
    assert ds[1]["tools"] == record["tools"] and ds[1]["metadata"] == '{"level": 2}'
    assert ds[1]["messages"][1] == {"role": "assistant", "content": "Found.", "loss_weight": 0.0}
    assert ds[1]["messages"][0] == {"role": "user", "content": "Find x.", "loss_weight": None}
    assert validate_conversation(ds[1]) == record  # nulls read back as absent
    pair = validate_preference({**preference(), "tools": [TOOL], "metadata": "{}"})
    assert preference_to_conversation(pair)["tools"] == [TOOL]
    assert dataset_from_rows([pair], preference_features())[0]["tools"] == [TOOL]


@pytest.mark.parametrize(
    "changes, field, code",
    [
        ({"tools": "{"}, "tools", "malformed"),
        ({"tools": [{"function": {}}]}, "tools[0]", "malformed"),
        ({"metadata": "[1]"}, "metadata", "wrong_type"),
        ({"metadata": "{"}, "metadata", "malformed"),
    ],
)
def test_bad_tools_and_metadata_name_the_field(changes, field, code):
    err = error_of(validate_conversation, {**conversation(("user", "Hi"), ("assistant", "Yo")), **changes})
    assert (err.field, err.code) == (field, code)
