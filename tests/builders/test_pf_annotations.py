"""Raw-annotation converters for the Polite Flamingo rewriting pass: VQA join, seeded caption prompts,
classification template, generic rows, image checks and rejections."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from alignsmith.records import IMAGE_PLACEHOLDER
from builders.polite_flamingo.annotations import (
    CLASSIFICATION_INSTRUCTION,
    DETAILED_DESCRIPTION_PROMPTS,
    AnnotationInputError,
    caption_annotations,
    classification_annotations,
    generic_annotations,
    vqa_annotations,
)

SHARED = Path(__file__).parents[3] / "shared"
NOTES = SHARED / "notes" / "polite-flamingo.md"
TEXTVQA = SHARED / "data" / "vision" / "open_flamingo" / "textvqa"


def _png(path: Path) -> Path:
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def _answers(*texts: str) -> list[dict]:
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def _vqa_files(tmp_path: Path, questions: list, annotations: list) -> tuple[Path, Path]:
    q, a = tmp_path / "questions.json", tmp_path / "annotations.json"
    q.write_text(json.dumps({"questions": questions}))
    a.write_text(json.dumps({"annotations": annotations}))
    return q, a


def _by_id(rejected: list[dict]) -> dict:
    return {r["id"]: r for r in rejected}


def test_detailed_description_prompts_are_the_notes_list() -> None:
    if not NOTES.exists():
        pytest.skip("shared notes not available")
    text = NOTES.read_text(encoding="utf-8")
    block = re.search(r"The full list.*?```text\n(.*?)```", text, re.S)
    assert block is not None
    assert DETAILED_DESCRIPTION_PROMPTS == tuple(block.group(1).strip().splitlines())
    assert len(DETAILED_DESCRIPTION_PROMPTS) == 16


def test_vqa_joins_questions_and_annotations(tmp_path: Path) -> None:
    _png(tmp_path / "img1.png")
    _png(tmp_path / "img2.png")
    q, a = _vqa_files(
        tmp_path,
        [{"question": "what brand?", "image_id": "img1", "question_id": 7},
         {"question": "what colour?", "image_id": "img2", "question_id": 8}],
        [{"question_id": 8, "image_id": "img2", "answers": _answers("red", "blue", "blue"),
          "multiple_choice_answer": "red"},
         {"question_id": 7, "image_id": "img1", "answers": _answers("nikon", "canon", "canon", "nikon")}],
    )
    records, rejected = vqa_annotations(q, a, source="tiny_vqa", image_root=tmp_path, image_template="{image_id}.png")
    assert rejected == []
    first, second = records
    assert first == {
        "id": "7", "source": "tiny_vqa", "task": "vqa",
        "instruction": "what brand?" + IMAGE_PLACEHOLDER,
        "raw": "nikon",  # no multiple_choice_answer: most common, ties to the first given
        "images": [{"bytes": None, "path": str(tmp_path / "img1.png")}],
        "answers": ["nikon", "canon", "canon", "nikon"],
    }
    assert second["raw"] == "red"  # the dataset's consensus answer wins over the counts
    assert second["answers"] == ["red", "blue", "blue"]
    assert second["instruction"].endswith("?" + IMAGE_PLACEHOLDER)


def test_vqa_image_template_takes_format_specs(tmp_path: Path) -> None:
    _png(tmp_path / "COCO_val2014_000000000042.png")
    q, a = _vqa_files(tmp_path, [{"question": "how many?", "image_id": 42, "question_id": 1}],
                      [{"question_id": 1, "image_id": 42, "answers": _answers("2"), "multiple_choice_answer": "2"}])
    records, rejected = vqa_annotations(q, a, source="vqav2", image_root=tmp_path,
                                        image_template="COCO_val2014_{image_id:012d}.png")
    assert rejected == [] and records[0]["images"][0]["path"].endswith("COCO_val2014_000000000042.png")


def test_vqa_bad_rows_are_rejections_naming_the_field(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    questions = [
        {"question": "fine?", "image_id": "ok", "question_id": 1},
        {"question": "orphan?", "image_id": "ok", "question_id": 2},  # no annotation
        {"question": "empty?", "image_id": "ok", "question_id": 3},  # no answers
        {"question": "where?", "image_id": "absent", "question_id": 4},  # missing image file
        {"question": "broken?", "image_id": "broken", "question_id": 5},  # undecodable image
        {"question": "mismatch?", "image_id": "ok", "question_id": 6},  # image ids disagree
        {"question": "again?", "image_id": "ok", "question_id": 1},  # repeated question id
        {"question": "  ", "image_id": "ok", "question_id": 7},  # blank question
    ]
    annotations = [
        {"question_id": 1, "image_id": "ok", "answers": _answers("yes")},
        {"question_id": 3, "image_id": "ok", "answers": [], "multiple_choice_answer": "yes"},
        {"question_id": 4, "image_id": "absent", "answers": _answers("here")},
        {"question_id": 5, "image_id": "broken", "answers": _answers("there")},
        {"question_id": 6, "image_id": "other", "answers": _answers("x")},
        {"question_id": 7, "image_id": "ok", "answers": _answers("x")},
        {"question_id": 99, "image_id": "ok", "answers": _answers("lost")},  # no question
    ]
    q, a = _vqa_files(tmp_path, questions, annotations)
    records, rejected = vqa_annotations(q, a, source="v", image_root=tmp_path, image_template="{image_id}.png")
    assert [r["id"] for r in records] == ["1"]
    assert len(records) + len(rejected) == len(questions) + 1  # nothing dropped silently
    by_id = _by_id(rejected)
    assert by_id["2"]["field"] == "question_id" and "no annotation" in by_id["2"]["reason"]
    assert by_id["2"]["row_index"] == 1
    assert (by_id["3"]["field"], by_id["3"]["reason"]) == ("answers", "no human answers")
    assert by_id["4"]["field"] == "image_id" and by_id["4"]["code"] == "image_undecodable"
    assert str(tmp_path / "absent.png") in by_id["4"]["reason"]
    assert by_id["5"]["field"] == "image_id" and "undecodable" in by_id["5"]["reason"]
    assert by_id["6"]["field"] == "image_id" and "'other'" in by_id["6"]["reason"]
    assert by_id["7"]["field"] == "question"
    duplicate = next(r for r in rejected if r["row_index"] == 6)
    assert (duplicate["id"], duplicate["code"]) == ("1", "duplicate_id")
    assert by_id["99"]["row_index"] is None and "not in" in by_id["99"]["reason"]
    assert json.loads(by_id["3"]["raw"])["question"]["question"] == "empty?"  # the input is kept


def test_vqa_unreadable_files_name_the_file(tmp_path: Path) -> None:
    q, a = _vqa_files(tmp_path, [], [])
    a.write_text("{not json")
    with pytest.raises(AnnotationInputError, match=re.escape(str(a))):
        vqa_annotations(q, a, source="v")
    a.write_text(json.dumps({"questions": []}))
    with pytest.raises(AnnotationInputError, match="'annotations' list"):
        vqa_annotations(q, a, source="v")
    a.write_text(json.dumps({"annotations": [{"question_id": 1}, {"question_id": 1}]}))
    with pytest.raises(AnnotationInputError, match="annotated twice"):
        vqa_annotations(q, a, source="v")
    with pytest.raises(AnnotationInputError, match="image_template"):
        vqa_annotations(q, a, source="v", image_template="{image}.jpg")


def test_require_images_false_keeps_paths_unopened(tmp_path: Path) -> None:
    q, a = _vqa_files(tmp_path, [{"question": "what?", "image_id": "gone", "question_id": 1}],
                      [{"question_id": 1, "image_id": "gone", "answers": _answers("x")}])
    records, rejected = vqa_annotations(q, a, source="v", image_root=tmp_path, require_images=False)
    assert rejected == []
    assert records[0]["images"] == [{"bytes": None, "path": str(tmp_path / "gone.jpg")}]


def _caption_rows(n: int) -> list[dict]:
    return [{"id": f"img{i}", "image": "pic.png", "captions": [f"A cat {i}. ", "\nA small cat."]} for i in range(n)]


def test_captions_join_and_prompt(tmp_path: Path) -> None:
    _png(tmp_path / "pic.png")
    records, rejected = caption_annotations(_caption_rows(1), source="coco", seed=0, image_root=tmp_path)
    assert rejected == []
    record = records[0]
    assert record["task"] == "caption" and record["raw"] == "A cat 0.\nA small cat."
    assert record["instruction"].endswith(IMAGE_PLACEHOLDER)
    assert record["instruction"][: -len(IMAGE_PLACEHOLDER)] in DETAILED_DESCRIPTION_PROMPTS


def test_caption_prompt_is_reproducible_by_seed_and_order_free() -> None:
    rows = _caption_rows(30)

    def prompts(seed: int, rows: list[dict]) -> dict[str, str]:
        records, _ = caption_annotations(rows, source="coco", seed=seed, require_images=False)
        return {r["id"]: r["instruction"] for r in records}

    assert prompts(3, rows) == prompts(3, rows) == prompts(3, rows[::-1])
    assert prompts(3, rows) != prompts(4, rows)
    assert len(set(prompts(3, rows).values())) > 1


def test_caption_rejections() -> None:
    rows = [{"id": "a", "image": "x.png", "captions": []},
            {"id": "b", "image": "x.png", "captions": ["fine", ""]},
            {"id": "c", "captions": ["no image"]},
            "not a row"]
    records, rejected = caption_annotations(rows, source="coco", seed=0, require_images=False)
    assert records == []
    assert [(r["row_index"], r["id"], r["field"]) for r in rejected] == [
        (0, "a", "captions"), (1, "b", "captions[1]"), (2, "c", "image"), (3, None, None)]


def test_classification_instruction_and_template(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    rows = [{"image": "a.png", "label": "Eurofighter Typhoon"}, {"image": "a.png", "label": 1},
            {"image": "a.png", "label": 5}]
    records, rejected = classification_annotations(rows, source="fgvc", image_root=tmp_path,
                                                   label_names=["cat", "dog"])
    assert [r["raw"] for r in records] == ["This is a photo of a Eurofighter Typhoon.", "This is a photo of a dog."]
    assert records[0]["instruction"] == CLASSIFICATION_INSTRUCTION + IMAGE_PLACEHOLDER == "What is this?<image>"
    assert [r["id"] for r in records] == ["fgvc-0", "fgvc-1"] and records[0]["task"] == "classification"
    assert (rejected[0]["row_index"], rejected[0]["field"]) == (2, "label") and "out of range" in rejected[0]["reason"]


def test_generic_rows_as_is(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    rows = [
        {"id": "g1", "instruction": "Compare <image> with <image>.", "answer": "same", "images": ["a.png", "a.png"]},
        {"id": "g2", "instruction": "Read the sign.", "answer": "stop", "images": "a.png"},
        {"id": "g3", "instruction": "Count <image>.", "answer": "2", "images": ["a.png", "a.png"]},
        {"id": "g4", "instruction": "Say hi.", "answer": "hi"},
    ]
    records, rejected = generic_annotations(rows, source="mix", image_root=tmp_path)
    assert [r["instruction"] for r in records] == ["Compare <image> with <image>.", "Read the sign.<image>", "Say hi."]
    assert [len(r["images"]) for r in records] == [2, 1, 0]
    assert [(r["id"], r["field"], r["code"]) for r in rejected] == [("g3", "images", "image_count")]


def test_shared_textvqa_first_20_questions(tmp_path: Path) -> None:
    """The images are not shipped: by default each question is a rejection naming the missing file;
    with ``require_images=False`` the records are built with the resolved paths."""
    if not TEXTVQA.exists():
        pytest.skip("shared TextVQA files not available")
    questions = json.loads((TEXTVQA / "val_questions_vqa_format.json").read_text())["questions"][:20]
    wanted = {q["question_id"] for q in questions}
    annotations = [a for a in json.loads((TEXTVQA / "val_annotations_vqa_format.json").read_text())["annotations"]
                   if a["question_id"] in wanted]
    q, a = _vqa_files(tmp_path, questions, annotations)
    root = tmp_path / "images"

    records, rejected = vqa_annotations(q, a, source="textvqa", image_root=root)
    assert records == [] and len(rejected) == 20
    for question, rejection in zip(questions, rejected):
        assert rejection["id"] == str(question["question_id"]) and rejection["field"] == "image_id"
        assert f"image file not found: {root / (question['image_id'] + '.jpg')}" in rejection["reason"]

    records, rejected = vqa_annotations(q, a, source="textvqa", image_root=root, require_images=False)
    assert rejected == [] and len(records) == 20
    by_question = {x["question_id"]: x for x in annotations}
    for question, record in zip(questions, records):
        annotation = by_question[question["question_id"]]
        assert record["instruction"] == question["question"] + IMAGE_PLACEHOLDER
        assert record["raw"] == annotation["multiple_choice_answer"]
        assert record["answers"] == [x["answer"] for x in annotation["answers"]] and len(record["answers"]) == 10
        assert record["images"] == [{"bytes": None, "path": str(root / f"{question['image_id']}.jpg")}]


VIZWIZ = SHARED / "data" / "vision" / "open_flamingo" / "vizwiz"
LLAVA_CAPTIONS = SHARED / "data" / "vision" / "llava" / "caps_boxes_coco2014_val_80.jsonl"
PF_IMAGES = SHARED / "data" / "vision" / "polite_flamingo"


@pytest.mark.skipif(not VIZWIZ.exists(), reason="shared VizWiz files not available")
def test_shared_vizwiz_questions_whose_image_ids_are_file_names(tmp_path: Path) -> None:
    questions = json.loads((VIZWIZ / "val_questions_vqa_format.json").read_text())["questions"][:30]
    wanted = {q["question_id"] for q in questions}
    annotations = [a for a in json.loads((VIZWIZ / "val_annotations_vqa_format.json").read_text())["annotations"]
                   if a["question_id"] in wanted]
    q, a = _vqa_files(tmp_path, questions, annotations)
    records, rejected = vqa_annotations(q, a, source="vizwiz", image_root=tmp_path, image_template="{image_id}",
                                        require_images=False)
    assert rejected == [] and len(records) == 30
    for question, record in zip(questions, records):
        assert record["images"][0]["path"] == str(tmp_path / question["image_id"])  # VizWiz_val_00000000.jpg
        assert record["task"] == "vqa" and len(record["answers"]) == 10
    assert any(r["raw"] == "unanswerable" for r in records)


@pytest.mark.skipif(not LLAVA_CAPTIONS.exists(), reason="shared LLaVA captions file not available")
def test_shared_coco_captions_become_detailed_description_records() -> None:
    rows = [json.loads(line) for line in LLAVA_CAPTIONS.read_text().splitlines()]
    records, rejected = caption_annotations(rows, source="coco", seed=0, require_images=False)
    assert rejected == [] and len(records) == 80
    for row, record in zip(rows, records):
        assert record["raw"] == "\n".join(c.strip() for c in row["captions"])
        assert record["instruction"].removesuffix(IMAGE_PLACEHOLDER) in DETAILED_DESCRIPTION_PROMPTS
    assert len({r["instruction"] for r in records}) > 8  # the prompts vary from row to row


@pytest.mark.skipif(not (PF_IMAGES / "textvqa_val_qa_for_fc126f88f3500417.jsonl").exists(),
                    reason="shared Polite Flamingo samples not available")
def test_shared_textvqa_questions_with_their_real_image_are_generic_records() -> None:
    path = PF_IMAGES / "textvqa_val_qa_for_fc126f88f3500417.jsonl"
    rows = [{"id": str(r["question_id"]), "instruction": r["question"], "images": [r["image"]],
             "answer": max(sorted(set(r["answers"])), key=r["answers"].count)}  # the most common human answer
            for r in map(json.loads, path.read_text().splitlines())]
    records, rejected = generic_annotations(rows, source="textvqa", image_root=PF_IMAGES)
    assert rejected == [] and [r["raw"] for r in records] == ["mets", "80"]
    assert all(r["instruction"].endswith(IMAGE_PLACEHOLDER) for r in records)
