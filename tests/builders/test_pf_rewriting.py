"""The Polite Flamingo rewriter prompt: both published layouts byte for byte, and the revised response read back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alignsmith.records import IMAGE_PLACEHOLDER
from builders.polite_flamingo.rewriting import REWRITER_LAYOUTS, revised_response, rewriting_prompt

SHARED = Path(__file__).parents[3] / "shared"
NOTES = SHARED / "notes" / "polite-flamingo.md"

# The README template of notes §2.4 (a), as printed there (placeholders in <<...>>); the last line
# ends in a space.
NOTES_README_TEMPLATE = """A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.
### Human: <<INSTRUCTION>>
### Assistent: (Drafted Response): <<RAW_ANNOTATION>>
 (Revised Response): """

INSTRUCTION = f"Describe the image in detail.\n{IMAGE_PLACEHOLDER}"
DRAFTED = "a cat on a mat.\ncat: [0.1, 0.2, 0.5, 0.9]\n"

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def test_the_readme_layout_is_byte_for_byte_the_readme_helper():
    expected = (SYSTEM + "\n### Human: Describe the image in detail.\n<image>"
                "\n### Assistent: (Drafted Response): a cat on a mat.\ncat: [0.1, 0.2, 0.5, 0.9]\n"
                "\n (Revised Response): ")
    assert rewriting_prompt(INSTRUCTION, DRAFTED, "readme") == expected
    notes = NOTES_README_TEMPLATE.replace("<<INSTRUCTION>>", INSTRUCTION).replace("<<RAW_ANNOTATION>>", DRAFTED)
    assert rewriting_prompt(INSTRUCTION, DRAFTED, "readme") == notes


def test_the_paper_layout_is_figure_3_with_the_spelling_fixed_and_no_bos():
    expected = (SYSTEM + "\n### Human:\nDescribe the image in detail.\n<image>"
                "\n### Assistant:\n(Drafted Response) a cat on a mat.\ncat: [0.1, 0.2, 0.5, 0.9]\n"
                "\n(Revised Response) ")
    assert rewriting_prompt(INSTRUCTION, DRAFTED, "paper") == expected
    assert not expected.startswith("<s>") and "Assistent" not in expected


def test_image_placeholders_stay_where_the_instruction_has_them():
    for layout in REWRITER_LAYOUTS:
        prompt = rewriting_prompt(f"{IMAGE_PLACEHOLDER}\nWhat is it?", "cat", layout)
        assert prompt.count(IMAGE_PLACEHOLDER) == 1 and f"{IMAGE_PLACEHOLDER}\nWhat is it?\n### " in prompt


@pytest.mark.skipif(not NOTES.exists(), reason="needs the shared Polite Flamingo notes")
def test_the_test_literals_are_the_notes_text():
    notes = NOTES.read_text(encoding="utf-8")
    section = notes[notes.index("### 2.4") : notes.index("### 2.5")]
    blocks = re.findall(r"```text\n(.*?)\n```", section, re.S)
    assert blocks[0] == NOTES_README_TEMPLATE
    # Figure 3 abbreviates the system line and shows BOS/EOS; below it, the lines are the paper layout's.
    figure = blocks[1].split("\n", 1)[1]
    rendered = rewriting_prompt("{Instruction} <image>", "{Distorted Response}", "paper") + "{Original Response} </s>"
    assert rendered == SYSTEM + "\n" + figure


@pytest.mark.parametrize("layout", REWRITER_LAYOUTS)
def test_revised_response_round_trips(layout):
    original = "It is a cat.\n\nIt sits on a mat."
    prompt = rewriting_prompt(INSTRUCTION, DRAFTED, layout)
    assert revised_response(prompt + original, layout) == original  # the whole decoded text
    assert revised_response(f" {original}\n", layout) == original  # the continuation alone
    assert revised_response(prompt, layout) == ""


def test_revised_response_splits_on_its_own_layouts_marker():
    readme = rewriting_prompt(INSTRUCTION, DRAFTED, "readme") + "Polite."
    assert revised_response(readme, "readme") == "Polite."
    assert revised_response(readme, "paper") == ": Polite."  # the README's colon is not the paper's marker


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout must be one of 'paper', 'readme'"):
        rewriting_prompt(INSTRUCTION, DRAFTED, "figure")  # type: ignore[arg-type]
