"""Terse vision-language annotations -> (instruction, raw annotation) records for the rewriting pass.

PF-1M was made by letting Polite Flamingo rewrite the raw annotation of 37 datasets (notes
``polite-flamingo.md`` §3.2). No conversion script was released; these converters follow what the
paper and the README samples pin down. Each returns a :class:`Converted`: the records
``{"id", "source", "task", "instruction", "raw", "images"}`` and the rejected rows (row index, id,
field, reason, code and the row itself, as :func:`alignsmith.converters.rejection` writes them), so
no input row disappears without a reason.

Shared choices:

* **Image position.** Every published PF-1M ``input`` ends with its ``<img_path>…<img_path>`` marker,
  right after the text with no separator (``"...or two?<img_path>mscoco_2017/...jpg<img_path>"``).
  The canonical placeholder takes that position: ``instruction + "<image>"`` (one per image).
* **Images** are alignsmith image refs ``{"bytes": None, "path": str}``, a relative file name resolved
  against ``image_root``. By default each image is opened once through
  :func:`alignsmith.records.validate_conversation`, so a missing or undecodable file is a rejection
  naming the record and the input field (``image_id``, ``image``). ``require_images=False`` keeps the
  resolved paths unopened, for building the text before the images are downloaded (PF-1M's images
  are not redistributed); images must then be paths.
* **Ids**: the row's ``id`` (VQA: ``question_id``) as a string, else ``f"{source}-{row_index}"``;
  a repeated id is a rejection.

Per task:

* ``vqa`` (:func:`vqa_annotations`): a VQA-format questions file joined with its annotations file on
  ``question_id``. Instruction = the bare question (PF-1M's "VQA without rationale"). Raw = the
  dataset's consensus answer ``multiple_choice_answer`` when present, else the most frequent human
  answer (ties: the first given); the ten human answers are kept as ``answers`` (raw strings, no VQA
  normalisation), for the NLI filter or an evaluation.
* ``caption`` (:func:`caption_annotations`): raw = the captions, each stripped, joined with ``"\\n"``;
  instruction = one of LLaVA's 16 detailed-description prompts, drawn per row from
  ``row_rng(seed, id)`` so the choice depends on the seed and the id, not on the row order.
* ``classification`` (:func:`classification_annotations`): ELEVATER's ``What is this?`` and CLIP's
  zero-shot template ``This is a photo of a {label}.``. ELEVATER's external knowledge, appended in
  the paper, is not added (put it in the template when available).
* ``generic`` (:func:`generic_annotations`): instruction, short answer and images as given. An
  instruction that already holds ``<image>`` placeholders keeps them in place (their count must
  match the images); otherwise they are appended at the end as above.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from string import Formatter
from typing import Any, Literal, NamedTuple, NotRequired, TypedDict

from alignsmith.converters import rejection
from alignsmith.errors import AlignsmithError
from alignsmith.records import (
    IMAGE_PLACEHOLDER,
    ImageRef,
    RecordError,
    RecordRef,
    UniqueIds,
    check_text,
    type_name,
    validate_conversation,
)
from alignsmith.seeding import row_rng

Task = Literal["vqa", "caption", "classification", "generic"]
PathLike = str | os.PathLike[str]

# LLaVA's detailed-description prompts, verbatim (notes §3.2; instruct_flamingo img2p_to_instruction.py).
DETAILED_DESCRIPTION_PROMPTS: tuple[str, ...] = (
    "Describe the following image in detail",
    "Provide a detailed description of the given image",
    "Give an elaborate explanation of the image you see",
    "Share a comprehensive rundown of the presented image",
    "Offer a thorough analysis of the image",
    "Explain the various aspects of the image before you",
    "Clarify the contents of the displayed image with great detail",
    "Characterize the image using a well-detailed description",
    "Break down the elements of the image in a detailed manner",
    "Walk through the important details of the image",
    "Portray the image with a rich, descriptive narrative",
    "Narrate the contents of the image with precision",
    "Analyze the image in a comprehensive and detailed manner",
    "Illustrate the image through a descriptive explanation",
    "Examine the image closely and share its details",
    "Write an exhaustive depiction of the given image",
)
CLASSIFICATION_INSTRUCTION = "What is this?"  # ELEVATER-IC in PF-1M (paper p.18)
CLIP_TEMPLATE = "This is a photo of a {label}."  # paper Fig. 5: "This is a photo of a Eurofighter Typhoon, ..."
VQA_IMAGE_FIELDS = ("image_id", "question_id")  # what a VQA image_template may refer to


class RawAnnotation(TypedDict):
    id: str
    source: str
    task: Task
    instruction: str
    raw: str
    images: list[ImageRef]
    answers: NotRequired[list[str]]  # VQA: every human answer, in file order


class Converted(NamedTuple):
    records: list[RawAnnotation]
    rejected: list[dict[str, Any]]


class AnnotationInputError(AlignsmithError):
    """A whole input (file or setting) is unusable, as opposed to one rejected row."""

    def __init__(self, where: object, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


# --- shared ------------------------------------------------------------------------------------


def _row_id(row: Mapping[str, Any], row_index: int, source: str, column: str) -> str:
    value = row.get(column)
    return f"{source}-{row_index}" if value is None else str(value)


def _resolve(name: PathLike, image_root: PathLike | None) -> str:
    if image_root is None or Path(name).is_absolute():
        return str(name)
    return str(Path(image_root) / name)


def _unopened(value: object, ref: RecordRef, field: str, image_root: PathLike | None) -> ImageRef:
    if isinstance(value, Mapping) and value.get("bytes") is None:
        value = value.get("path")
    if not isinstance(value, (str, os.PathLike)):
        reason = f"require_images=False takes image paths only, got {type_name(value)}"
        raise ref.error(field, reason, "unsupported")
    return {"bytes": None, "path": _resolve(value, image_root)}


def _record(
    ref: RecordRef,
    *,
    source: str,
    task: Task,
    instruction: str,
    raw: str,
    images: Sequence[Any],
    image_fields: Sequence[str],
    image_root: PathLike | None,
    require_images: bool,
) -> RawAnnotation:
    """The record, its images checked (or only resolved); ``instruction`` already holds the placeholders."""
    ref.fields.update({f"images[{i}]": field for i, field in enumerate(image_fields)})
    placed = instruction.count(IMAGE_PLACEHOLDER) + raw.count(IMAGE_PLACEHOLDER)
    if placed != len(images):
        reason = f"{placed} {IMAGE_PLACEHOLDER} placeholder(s) in the text but {len(images)} image(s)"
        raise ref.error("images", reason, "image_count")
    if require_images:
        conversation = {
            "id": ref.record_id,
            "source": source,
            "messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": raw}],
            "images": list(images),
        }
        refs = validate_conversation(conversation, ref=ref, image_root=image_root)["images"]
    else:
        refs = [_unopened(image, ref, f"images[{i}]", image_root) for i, image in enumerate(images)]
    return {"id": ref.record_id, "source": source, "task": task, "instruction": instruction, "raw": raw,
            "images": refs}


def _convert_rows(
    rows: Iterable[Mapping[str, Any]],
    source: str,
    id_column: str,
    build: Callable[[Mapping[str, Any], RecordRef], RawAnnotation],
    shown: Callable[[Any], Any] = lambda row: row,
) -> Converted:
    """Run ``build`` per row; a row that is not an object, repeats an id or fails is a rejection.

    ``shown``: what a rejection keeps of the row (VQA: the question with its annotation).
    """
    out = Converted([], [])
    ids = UniqueIds()
    for row_index, row in enumerate(rows):
        try:
            if not isinstance(row, Mapping):
                raise RecordError(f"expected a row object, got {type_name(row)}", code="wrong_type",
                                  record_id=None, row_index=row_index)
            record_id = _row_id(row, row_index, source, id_column)
            ids.claim(record_id, row_index)
            out.records.append(build(row, RecordRef(record_id, row_index)))
        except RecordError as err:
            out.rejected.append(rejection(err, shown(row)))
    return out


def _check_template(template: str, fields: Sequence[str], what: str) -> None:
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as err:
        raise AnnotationInputError(what, f"template {template!r} does not parse: {err}") from None
    names = {name.split(".")[0].split("[")[0] for _, name, _, _ in parsed if name is not None}
    if not names or not names <= set(fields):
        raise AnnotationInputError(what, f"template {template!r} must refer to {' or '.join(map(repr, fields))} only")


# --- VQA ---------------------------------------------------------------------------------------


def _load_list(path: PathLike, key: str) -> list[Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationInputError(path, f"cannot read a VQA-format JSON file: {err}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get(key), list):
        raise AnnotationInputError(path, f"expected a JSON object with a {key!r} list (VQA format)")
    return data[key]


def _annotations_by_question(path: PathLike, annotations: list[Any]) -> dict[Any, tuple[int, Mapping[str, Any]]]:
    by_question: dict[Any, tuple[int, Mapping[str, Any]]] = {}
    for i, annotation in enumerate(annotations):
        if not isinstance(annotation, Mapping) or annotation.get("question_id") is None:
            raise AnnotationInputError(path, f"annotations[{i}] is not an object with a question_id")
        qid = annotation["question_id"]
        if qid in by_question:
            raise AnnotationInputError(path, f"question_id {qid!r} is annotated twice "
                                             f"(annotations[{by_question[qid][0]}] and annotations[{i}])")
        by_question[qid] = (i, annotation)
    return by_question


def _human_answers(annotation: Mapping[str, Any], ref: RecordRef) -> list[str]:
    answers = annotation.get("answers")
    if not isinstance(answers, list):
        raise ref.error("answers", f"expected a list of answers, got {type_name(answers)}", "wrong_type")
    if not answers:
        raise ref.error("answers", "no human answers", "empty")
    texts = []
    for i, answer in enumerate(answers):
        text = answer.get("answer") if isinstance(answer, Mapping) else None
        if not isinstance(text, str):
            raise ref.error(f"answers[{i}].answer", f"expected a string, got {type_name(text)}", "wrong_type")
        texts.append(text)
    return texts


def _vqa_record(
    question: Mapping[str, Any],
    annotation: Mapping[str, Any] | None,
    ref: RecordRef,
    *,
    source: str,
    annotations_file: PathLike,
    image_template: str,
    image_root: PathLike | None,
    require_images: bool,
) -> RawAnnotation:
    text = check_text(question.get("question"), ref, "question")
    if annotation is None:
        raise ref.error("question_id", f"no annotation for this question in {annotations_file}", "missing_field")
    image_id = question.get("image_id")
    if image_id is None:
        raise ref.error("image_id", "missing", "missing_field")
    if annotation.get("image_id") is not None and annotation["image_id"] != image_id:
        raise ref.error("image_id", f"the annotation has image_id {annotation['image_id']!r}", "malformed")
    answers = _human_answers(annotation, ref)
    consensus = annotation.get("multiple_choice_answer")
    if consensus is not None:
        raw = check_text(consensus, ref, "multiple_choice_answer")
    else:
        raw = check_text(Counter(answers).most_common(1)[0][0], ref, "answers")
    try:
        image = image_template.format(image_id=image_id, question_id=question["question_id"])
    except (ValueError, TypeError) as err:
        raise ref.error("image_id", f"image_template {image_template!r} does not apply: {err}", "malformed") from None
    record = _record(ref, source=source, task="vqa", instruction=text + IMAGE_PLACEHOLDER, raw=raw, images=[image],
                     image_fields=["image_id"], image_root=image_root, require_images=require_images)
    record["answers"] = answers
    return record


def vqa_annotations(
    questions_file: PathLike,
    annotations_file: PathLike,
    *,
    source: str,
    image_root: PathLike | None = None,
    image_template: str = "{image_id}.jpg",
    require_images: bool = True,
) -> Converted:
    """VQA-format questions + annotations files -> one ``vqa`` record per question.

    ``image_template`` names the image file from ``{image_id}`` (and ``{question_id}``), with format
    specs allowed (``"COCO_val2014_{image_id:012d}.jpg"``; VizWiz ids are file names: ``"{image_id}"``).
    Row indexes are positions in the questions file; an annotation no question refers to is a
    rejection without a row index. An unreadable file, or a question annotated twice, is an
    :class:`AnnotationInputError` naming the file.
    """
    _check_template(image_template, VQA_IMAGE_FIELDS, "image_template")
    questions = _load_list(questions_file, "questions")
    by_question = _annotations_by_question(annotations_file, _load_list(annotations_file, "annotations"))
    matched: set[Any] = set()

    def build(question: Mapping[str, Any], ref: RecordRef) -> RawAnnotation:
        if question.get("question_id") is None:
            raise ref.error("question_id", "missing", "missing_field")
        if not isinstance(question["question_id"], (int, str)):
            raise ref.error("question_id", f"expected a number or string, got {type_name(question['question_id'])}",
                            "wrong_type")
        _, annotation = by_question.get(question["question_id"], (None, None))
        matched.add(question["question_id"])
        return _vqa_record(question, annotation, ref, source=source, annotations_file=annotations_file,
                           image_template=image_template, image_root=image_root, require_images=require_images)

    def shown(question: Any) -> Any:
        qid = question.get("question_id") if isinstance(question, Mapping) else None
        found = by_question.get(qid) if isinstance(qid, (int, str)) else None
        return {"question": question, "annotation": found[1] if found else None}

    out = _convert_rows(questions, source, "question_id", build, shown)
    for qid, (i, annotation) in by_question.items():
        if qid not in matched:
            err = RecordError(f"annotations[{i}] answers a question that is not in {questions_file}",
                              code="missing_field", record_id=str(qid), field="question_id")
            out.rejected.append(rejection(err, annotation))
    return out


# --- captioning, classification, generic -------------------------------------------------------


def _captions(value: object, ref: RecordRef, column: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ref.error(column, f"expected a list of captions, got {type_name(value)}", "wrong_type")
    if not value:
        raise ref.error(column, "no captions", "empty")
    return [check_text(caption, ref, f"{column}[{i}]").strip() for i, caption in enumerate(value)]


def caption_annotations(
    rows: Iterable[Mapping[str, Any]],
    *,
    source: str,
    seed: int,
    image_root: PathLike | None = None,
    require_images: bool = True,
    captions_column: str = "captions",
    image_column: str = "image",
    id_column: str = "id",
) -> Converted:
    """Rows of (image, captions) -> ``caption`` records with a seeded detailed-description prompt.

    A single caption string (an Image2Paragraph paragraph) counts as a list of one.
    """

    def build(row: Mapping[str, Any], ref: RecordRef) -> RawAnnotation:
        raw = "\n".join(_captions(row.get(captions_column), ref, captions_column))
        prompt = row_rng(seed, ref.record_id).choice(DETAILED_DESCRIPTION_PROMPTS)
        return _record(ref, source=source, task="caption", instruction=prompt + IMAGE_PLACEHOLDER, raw=raw,
                       images=[_image(row, ref, image_column)], image_fields=[image_column],
                       image_root=image_root, require_images=require_images)

    return _convert_rows(rows, source, id_column, build)


def _image(row: Mapping[str, Any], ref: RecordRef, column: str) -> Any:
    if row.get(column) is None:
        raise ref.error(column, "missing", "missing_field")
    return row[column]


def _label(value: object, ref: RecordRef, column: str, label_names: Sequence[str] | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if label_names is None:
            raise ref.error(column, f"class index {value} needs label_names", "wrong_type")
        if not 0 <= value < len(label_names):
            raise ref.error(column, f"class index {value} is out of range (0..{len(label_names) - 1})", "malformed")
        value = label_names[value]
    return check_text(value, ref, column).strip()


def classification_annotations(
    rows: Iterable[Mapping[str, Any]],
    *,
    source: str,
    image_root: PathLike | None = None,
    require_images: bool = True,
    label_column: str = "label",
    image_column: str = "image",
    id_column: str = "id",
    label_names: Sequence[str] | None = None,
    template: str = CLIP_TEMPLATE,
) -> Converted:
    """Rows of (image, label) -> ``classification`` records: ``What is this?`` and the filled template.

    A label is a class name, or an index into ``label_names`` (a ``datasets.ClassLabel``'s names).
    """
    _check_template(template, ("label",), "template")

    def build(row: Mapping[str, Any], ref: RecordRef) -> RawAnnotation:
        label = _label(row.get(label_column), ref, label_column, label_names)
        instruction = CLASSIFICATION_INSTRUCTION + IMAGE_PLACEHOLDER
        return _record(ref, source=source, task="classification", instruction=instruction,
                       raw=template.format(label=label), images=[_image(row, ref, image_column)],
                       image_fields=[image_column], image_root=image_root, require_images=require_images)

    return _convert_rows(rows, source, id_column, build)


def generic_annotations(
    rows: Iterable[Mapping[str, Any]],
    *,
    source: str,
    image_root: PathLike | None = None,
    require_images: bool = True,
    instruction_column: str = "instruction",
    answer_column: str = "answer",
    images_column: str = "images",
    id_column: str = "id",
) -> Converted:
    """Rows of (instruction, short answer, images) -> ``generic`` records, texts as given.

    ``images`` is a list of images, one image, or absent (a text-only row).
    """

    def build(row: Mapping[str, Any], ref: RecordRef) -> RawAnnotation:
        instruction = check_text(row.get(instruction_column), ref, instruction_column)
        raw = check_text(row.get(answer_column), ref, answer_column)
        images = row.get(images_column)
        if images is None:
            images, fields = [], []
        elif isinstance(images, list):
            fields = [f"{images_column}[{i}]" for i in range(len(images))]
        else:
            images, fields = [images], [images_column]
        ref.fields["images"] = images_column
        if IMAGE_PLACEHOLDER not in instruction:
            instruction += IMAGE_PLACEHOLDER * len(images)
        return _record(ref, source=source, task="generic", instruction=instruction, raw=raw, images=images,
                       image_fields=fields, image_root=image_root, require_images=require_images)

    return _convert_rows(rows, source, id_column, build)
