"""Write the Polite Flamingo demo data: drawn shapes and texts about them, all generated here.

Every image is a coloured shape drawn on a plain background, so the texts describe it exactly: a
conversation dataset with detailed descriptions and the captions and boxes they could be written from
(for `build pf-pairs`), terse raw annotations in the formats `build pf-rewrite` reads (VQA questions and
answers, captions), and evaluation questions with ground truth (VQA and POPE-style yes/no).

    python data/pf_demo/generate.py        # rewrites the files next to this script, byte for byte the same
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 64
COLOURS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "grey": (150, 150, 150)}
SHAPES = ("circle", "square", "triangle")


def _draw(shape: str, colour: str, background: str, box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([((x1 + x2) // 2, y1), (x2, y2), (x1, y2)], fill=COLOURS[colour])
    return image


def _items() -> list[dict]:
    items = []
    for i, (shape, colour) in enumerate((s, c) for s in SHAPES for c in COLOURS):
        background = "white" if i % 2 == 0 else "grey"
        offset = 4 + (i * 5) % 20
        box = (offset, offset, offset + 30, offset + 30)
        items.append({"id": f"shape-{i:02d}", "shape": shape, "colour": colour, "background": background,
                      "box": box, "file": f"shape-{i:02d}.png"})
    return items


def _description(item: dict) -> str:
    place = "upper left" if item["box"][0] < 14 else "centre"
    return (f"The image shows a single {item['colour']} {item['shape']} on a plain {item['background']} background. "
            f"The {item['shape']} sits towards the {place} of the picture and fills about a quarter of it.\n\n"
            f"There is nothing else in the image: no text, no people and no other objects.")


def _captions(item: dict) -> list[str]:
    return [f"A {item['colour']} {item['shape']} on a {item['background']} background.",
            f"A simple drawing of a {item['shape']}.",
            f"One {item['colour']} shape.",
            f"A {item['shape']} coloured {item['colour']}.",
            f"A plain {item['background']} picture with a {item['colour']} {item['shape']} in it."]


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> None:
    (HERE / "images").mkdir(exist_ok=True)
    items = _items()
    for item in items:
        _draw(item["shape"], item["colour"], item["background"], item["box"]).save(HERE / "images" / item["file"])
    # conversations with detailed descriptions, plus the captions and boxes they describe (build pf-pairs)
    conversations = [{
        "id": item["id"], "images": [f"images/{item['file']}"],
        "conversations": [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                          {"from": "gpt", "value": _description(item)}],
        "captions": _captions(item),
        "instances": [{"category": item["shape"], "bbox": [round(v / SIZE, 3) for v in item["box"]]}],
    } for item in items]
    (HERE / "conversations.jsonl").write_text(_lines(conversations))
    # raw annotations (build pf-rewrite): VQA format and captions
    questions, annotations = [], []
    for i, item in enumerate(items):
        for k, (question, answer) in enumerate((("What colour is the shape?", item["colour"]),
                                                ("What shape is in the picture?", item["shape"]))):
            qid = 2 * i + k
            questions.append({"question": question, "image_id": item["id"], "question_id": qid})
            answers = [answer] * 8 + ["a " + answer, answer + " one"]
            annotations.append({"question_id": qid, "image_id": item["id"], "multiple_choice_answer": answer,
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                                            for n, a in enumerate(answers)]})
    (HERE / "vqa_questions.json").write_text(json.dumps({"questions": questions}, indent=1) + "\n")
    (HERE / "vqa_annotations.json").write_text(json.dumps({"annotations": annotations}, indent=1) + "\n")
    captions = [{"id": item["id"], "image": f"images/{item['file']}", "captions": _captions(item)} for item in items]
    (HERE / "captions.jsonl").write_text(_lines(captions))
    # evaluation: VQA questions with the ground truth as the last assistant turn, and POPE-style yes/no
    vqa_eval, pope = [], []
    for item in items:
        vqa_eval.append({"id": f"{item['id']}-colour", "images": [f"images/{item['file']}"], "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": item["colour"]}]})
        other = next(s for s in SHAPES if s != item["shape"])
        for probe, label in ((item["shape"], "yes"), (other, "no")):
            pope.append({"id": f"{item['id']}-{probe}", "images": [f"images/{item['file']}"], "conversations": [
                {"from": "human", "value": f"<image>\nIs there a {probe} in the image?"},
                {"from": "gpt", "value": label}]})
    (HERE / "vqa_eval.jsonl").write_text(_lines(vqa_eval))
    (HERE / "pope.jsonl").write_text(_lines(pope))


if __name__ == "__main__":
    main()
