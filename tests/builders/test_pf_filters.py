"""The PF-1M filter cascade on tiny offline models: scores as the reference computes them, order, reasons."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image
from rouge_score import rouge_scorer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

from alignsmith.models import tiny
from alignsmith.models.loading import ModelLoadError, pinned
from alignsmith.models.scorers import (
    NLI_LABELS,
    ClipScorer,
    NliScorer,
    RewardScorer,
    StsScorer,
    nli_pair,
    paragraph_pieces,
    rouge_l,
)
from builders.polite_flamingo.filters import FilterInputError, FilterSettings, filter_rows, top_k_by_reward

NLI_ORDER = ["contradiction", "entailment", "neutral"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pf-filter-models")
    return {
        "sts": tiny.build_sentence_transformer(root / "sts"),
        "nli": tiny.build_sequence_classifier(root / "nli", num_labels=3, id2label=NLI_ORDER),
        "reward": tiny.build_sequence_classifier(root / "reward", num_labels=1, seed=1),
        "clip": tiny.build_clip_model(root / "clip"),
    }


@pytest.fixture(scope="module")
def scorers(folders):
    return {
        "sts": StsScorer(pinned(str(folders["sts"]), None, "sts_model"), device="cpu"),
        "nli": NliScorer(pinned(str(folders["nli"]), None, "nli_model"), device="cpu"),
        "reward": RewardScorer(pinned(str(folders["reward"]), None, "reward_model"), device="cpu"),
        "clip": ClipScorer(pinned(str(folders["clip"]), None, "clip_model"), device="cpu"),
    }


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _row(output: str, original: str, task: str = "caption", *, instruction: str = "Describe the image.\n<image>",
         image_seed: int = 0) -> dict:
    return {"instruction": instruction, "original": original, "output": output, "images": [_image(image_seed)],
            "task": task}


@contextlib.contextmanager
def _nli_predicting(scorer: NliScorer, label: str):
    """Bias the tiny cross-encoder so every pair's argmax is `label` (restored afterwards)."""
    bias = scorer.model.classifier.bias
    saved = bias.detach().clone()
    column = scorer.model.config.label2id[label]
    with torch.no_grad():
        bias.add_(torch.nn.functional.one_hot(torch.tensor(column), bias.numel()).float() * 100.0)
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


# --- tiny models -----------------------------------------------------------------------------------------


def test_tiny_sequence_classifiers_load_as_an_nli_cross_encoder_and_a_reward_model(folders, tmp_path):
    nli = AutoModelForSequenceClassification.from_pretrained(folders["nli"])
    assert [nli.config.id2label[i] for i in range(3)] == NLI_ORDER and nli.config.num_labels == 3
    reward = AutoModelForSequenceClassification.from_pretrained(folders["reward"])
    assert reward.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(folders["nli"])
    encoded = tok("a cat", "a dog")["input_ids"]
    assert encoded[0] == tok.bos_token_id and encoded.count(tok.eos_token_id) == 2 and encoded[-1] == tok.eos_token_id
    with torch.inference_mode():
        logits = nli(**tok(["a cat", "x"], ["a dog", "y z"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 3)
    again = tiny.build_sequence_classifier(tmp_path / "again", num_labels=3, id2label=NLI_ORDER)
    assert (again / "model.safetensors").read_bytes() == (folders["nli"] / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="id2label"):
        tiny.build_sequence_classifier(tmp_path / "bad", num_labels=2, id2label=NLI_ORDER)


def test_tiny_clip_model_loads_with_a_pil_processor_and_pools_at_its_eos(folders):
    model = CLIPModel.from_pretrained(folders["clip"])
    processor = CLIPProcessor.from_pretrained(folders["clip"])
    assert isinstance(processor.image_processor, CLIPImageProcessorPil)
    ids = processor.tokenizer("a cat on a mat")["input_ids"]
    assert ids[0] == processor.tokenizer.bos_token_id and ids[-1] == processor.tokenizer.eos_token_id
    assert model.config.text_config.eos_token_id == processor.tokenizer.eos_token_id != 2  # not the legacy argmax pooling
    assert processor.tokenizer.model_max_length == model.config.text_config.max_position_embeddings == 77
    encoded = processor(text=["a cat"], images=[_image(0)], return_tensors="pt")
    with torch.inference_mode():
        text = model.get_text_features(input_ids=encoded["input_ids"]).pooler_output
        image = model.get_image_features(pixel_values=encoded["pixel_values"]).pooler_output
    assert text.shape == image.shape == (1, model.config.projection_dim)


# --- scores ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output, original", [
    ("The cats are running in the park.", "a cat runs in a park"),
    ("A man is riding a horse on the beach.", "man riding horse"),
    ("Completely unrelated words here.", "the quick brown fox"),
    ("same text", "same text"),
    ("", "nothing to compare"),
])
def test_rouge_l_is_rouge_scores_stemmed_f_measure(output, original):
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(original, output)["rougeL"].fmeasure
    assert rouge_l(output, original) == expected
    assert rouge_l(original, output) == expected  # F is symmetric


def test_rouge_l_stems():
    assert rouge_l("cats running", "cat runs") == 1.0


def test_nli_pair_is_the_notes_templates_byte_for_byte():
    premise, hypothesis = nli_pair("What color is the bus?", "The bus is red.", "red")
    assert premise == '"The bus is red." is the answer to the question: "What color is the bus?"'
    assert hypothesis == '"red" is the answer to the question: "What color is the bus?"'
    template = '"<<ANSWER>>" is the answer to the question: "<<QUESTION>>"'
    assert premise == template.replace("<<ANSWER>>", "The bus is red.").replace("<<QUESTION>>", "What color is the bus?")


def test_nli_logits_come_back_in_pf1m_label_order_whatever_the_models_ids(tmp_path):
    order = ["entailment", "neutral", "contradiction"]
    folder = tiny.build_sequence_classifier(tmp_path / "nli", num_labels=3, id2label=order, seed=3)
    scorer = NliScorer(pinned(str(folder), None, "nli_model"), device="cpu")
    q, out, orig = "What is it?", "It is a cat.", "cat"
    raw = scorer.pair_logits(*map(list, zip(nli_pair(q, out, orig))))[0]
    logits = scorer.logits([q], [out], [orig])[0]
    assert list(logits) == [raw[order.index(label)] for label in NLI_LABELS]
    with pytest.raises(ModelLoadError, match="NLI"):
        NliScorer(pinned(str(tiny.build_sequence_classifier(tmp_path / "two", num_labels=2)), None, "nli"))


def test_clip_paragraph_scores_are_the_hand_computed_clipscore(scorers, folders):
    model = CLIPModel.from_pretrained(folders["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(folders["clip"])
    image = _image(5)
    paragraphs = ["A cat sits on a mat. It is red.", "In the background there is a dog", "One. Two. Three."]

    def by_hand(paragraph: str, empty: str) -> float:
        with torch.inference_mode():
            pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
            img = model.get_image_features(pixel_values=pixels).pooler_output[0]
            img = img / img.norm()
            feats = []
            for piece in paragraph.split(".")[:10]:
                if empty == "skip" and not piece.strip():
                    continue
                ids = processor.tokenizer([piece], return_tensors="pt", truncation=True, max_length=77)
                f = model.get_text_features(**ids).pooler_output[0]
                feats.append(f / f.norm())
            return float(100 * img @ torch.stack(feats).mean(0))

    for empty in ("skip", "score"):
        scores = scorers["clip"].paragraph_scores([paragraphs], [image], empty_pieces=empty)[0]
        assert scores == pytest.approx([by_hand(p, empty) for p in paragraphs], abs=1e-3)
    skip = scorers["clip"].paragraph_scores([paragraphs], [image], empty_pieces="skip")[0]
    score = scorers["clip"].paragraph_scores([paragraphs], [image], empty_pieces="score")[0]
    assert abs(skip[0] - score[0]) > 1e-4 and abs(skip[2] - score[2]) > 1e-4  # end in '.': an empty last piece
    assert skip[1] == pytest.approx(score[1], abs=1e-6)  # no trailing period: nothing to skip
    assert paragraph_pieces("a. b.", empty_pieces="score") == ["a", " b", ""]
    assert paragraph_pieces("a. b.") == ["a", " b"]
    assert len(paragraph_pieces("x." * 20, empty_pieces="score")) == 10


# --- the cascade -------------------------------------------------------------------------------------------------


CAPTION_A = "A small cat sits on a red mat in a sunny kitchen."
CAPTION_B = "Numbers: 0 1 2 3 4 5 6 7 8 9, 10, 42, 100, 2048, 3.14159."


def test_the_cascade_runs_length_change_sts_nli_in_order_and_says_why(scorers):
    originals = {"a": "a cat on a mat", "b": "a photo of a street"}
    sims = scorers["sts"].similarity([CAPTION_A, CAPTION_B], [originals["a"], originals["b"]])
    assert sims[0] != sims[1]
    low = int(np.argmin(sims))
    settings = FilterSettings(min_chars=10, max_chars=200, sts_min=sum(sims) / 2)
    rows = [
        _row("Short.", "a cat"),  # 0: length (too short), never STS-scored
        _row("x" * 201, "a cat"),  # 1: length (too long)
        _row("  a cat   on a mat ", "a cat on a mat"),  # 2: change (whitespace only)
        _row(CAPTION_A, originals["a"]),  # 3
        _row(CAPTION_B, originals["b"]),  # 4
        _row("Yes, there are two dogs.", "yes", "vqa", instruction="<image>\nAre there dogs?"),  # 5
        _row("Paris is the capital of France.", "Paris", "other", instruction="What is the capital of France?"),  # 6
    ]
    with _nli_predicting(scorers["nli"], "contradiction"):
        result = filter_rows(rows, settings, sts=scorers["sts"], nli=scorers["nli"], clip=scorers["clip"],
                             reward=scorers["reward"])
    by_index = {d.index: d for d in result.dropped}
    sts_dropped = 3 + low
    assert sorted(by_index) == sorted([0, 1, 2, sts_dropped, 5])
    assert [by_index[i].filter for i in (0, 1, 2, sts_dropped, 5)] == ["length", "length", "change", "sts", "nli"]
    assert "too short" in by_index[0].reason and by_index[0].score == 6
    assert "too long" in by_index[1].reason and by_index[1].score == 201
    for i in (0, 1):  # failed Length: no later score
        assert not {"rouge_score", "sts_similarity", "reward"} & set(by_index[i].row)
    assert by_index[2].row["rouge_score"] == by_index[2].score == 1.0 and "sts_similarity" not in by_index[2].row
    assert by_index[sts_dropped].score == by_index[sts_dropped].row["sts_similarity"] == sims[low] < settings.sts_min
    assert "reward" not in by_index[sts_dropped].row
    nli = by_index[5]
    assert "contradiction" in nli.reason and nli.score == nli.row["nli_similarity"] and len(nli.score) == 3
    assert int(np.argmax(nli.score)) == NLI_LABELS.index("contradiction")

    kept_caption = 3 + (1 - low)
    assert result.kept_index == [kept_caption, 6]
    caption, other = result.kept
    assert caption["sts_similarity"] == sims[1 - low] and caption["rouge_score"] == rouge_l(caption["output"], caption["original"])
    assert "paragraph_clip_scores" not in caption  # one paragraph: PF-1M scores only multi-paragraph captions
    assert "sts_similarity" not in other and "nli_similarity" not in other and "rouge_score" in other
    assert all(isinstance(r["reward"], float) for r in result.kept)
    assert "rouge_score" not in rows[3]  # inputs untouched


def test_a_vqa_rewrite_that_does_not_contradict_is_kept_with_its_logits(scorers):
    rows = [_row("Yes, there are two dogs.", "yes", "vqa", instruction="<image>\nAre there dogs?")]
    with _nli_predicting(scorers["nli"], "neutral"):
        result = filter_rows(rows, nli=scorers["nli"], reward=scorers["reward"])
        expected = list(scorers["nli"].logits(["Are there dogs?"], ["Yes, there are two dogs."], ["yes"])[0])
    (row,) = result.kept
    assert not result.dropped and int(np.argmax(row["nli_similarity"])) == NLI_LABELS.index("neutral")
    assert row["nli_similarity"] == pytest.approx(expected, abs=1e-5)
    assert row["reward"] == pytest.approx(scorers["reward"].scores(["Are there dogs?"], [row["output"]])[0], abs=1e-5)


def test_a_paragraph_below_clip_min_is_removed_and_recorded(scorers):
    first, second = "A cat sits on a red mat. It looks calm.", "In the background, a dog plays with a ball"
    texts = [first, second]
    rows = [_row(first + "\n\n" + second, "a cat on a mat", image_seed=1)]
    (scores,) = scorers["clip"].paragraph_scores([texts], [rows[0]["images"][0]])
    assert scores[0] != scores[1]
    threshold = sum(scores) / 2  # between the two: deterministic whatever the tiny model's values
    low, high = (0, 1) if scores[0] < scores[1] else (1, 0)
    settings = FilterSettings(sts_min=-1.0, clip_min=threshold)
    result = filter_rows(rows, settings, sts=scorers["sts"], clip=scorers["clip"], reward=scorers["reward"])
    (row,) = result.kept
    assert not result.dropped and row["output"] == texts[high] and row["original"] == "a cat on a mat"
    assert row["paragraph_clip_scores"] == pytest.approx([scores[high]])
    ((removed_score, removed_text),) = row["filtered_paragraphs"]
    assert removed_text == texts[low] and removed_score == pytest.approx(scores[low]) and removed_score < threshold
    assert row["reward"] == pytest.approx(scorers["reward"].scores(["Describe the image."], [texts[high]])[0], abs=1e-5)

    everything = filter_rows(rows, FilterSettings(sts_min=-1.0, clip_min=max(scores) + 1.0),
                             sts=scorers["sts"], clip=scorers["clip"])
    (dropped,) = everything.dropped
    assert not everything.kept and dropped.filter == "clip" and "every paragraph" in dropped.reason
    assert dropped.score == pytest.approx(scores)
    assert [s for s, _ in dropped.row["filtered_paragraphs"]] == pytest.approx(scores)

    no_image = filter_rows([{**rows[0], "images": []}], settings, sts=scorers["sts"], clip=scorers["clip"])
    assert [(d.filter, d.score) for d in no_image.dropped] == [("clip", None)]


def test_missing_models_and_bad_settings_are_refused(scorers):
    with pytest.raises(ValueError, match="sts"):
        filter_rows([_row(CAPTION_A, "a cat")], clip=scorers["clip"])
    with pytest.raises(ValueError, match="nli"):
        filter_rows([_row(CAPTION_A, "a cat", "vqa")])
    with pytest.raises(ValueError, match="clip_empty_pieces"):
        FilterSettings(clip_empty_pieces="keep")
    with pytest.raises(ValueError, match="nli_drop_labels"):
        FilterSettings(nli_drop_labels=("contradicts",))


def test_change_filter_can_also_drop_near_copies_by_rouge():
    rows = [_row("A cat on the mat.", "a cat on a mat", "other")]
    assert filter_rows(rows).kept[0]["rouge_score"] == pytest.approx(0.8)
    (dropped,) = filter_rows(rows, FilterSettings(change_max_rouge=0.8)).dropped
    assert dropped.filter == "change" and dropped.score == pytest.approx(0.8) and "ROUGE-L" in dropped.reason


def test_top_k_by_reward_drops_ellipses_and_keeps_input_order():
    rows = [{"output": "a", "reward": 1.0}, {"output": "b...", "reward": 9.0}, {"output": "c", "reward": 3.0},
            {"output": "d", "reward": 2.0}, {"output": "e", "reward": 3.0}]
    assert [r["output"] for r in top_k_by_reward(rows, 2)] == ["c", "e"]
    assert [r["output"] for r in top_k_by_reward(rows, 3)] == ["c", "d", "e"]
    assert [r["output"] for r in top_k_by_reward(rows, 1, drop_ellipsis=False)] == ["b..."]
    assert len(top_k_by_reward(rows, 10)) == 4
    with pytest.raises(FilterInputError, match="reward"):
        top_k_by_reward([{"output": "x"}], 1)
