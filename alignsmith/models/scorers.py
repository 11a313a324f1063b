"""Model-based and reference text scores over pinned models, batch in, batch out.

Dataset filters (e.g. Polite Flamingo's rewrite filters) and evaluators (VQA by NLI, captioning by
ROUGE-L, politeness by a reward model) score the same way, so they share these:

* :func:`rouge_l`: ROUGE-L F-measure with stemming, exactly ``rouge_score``'s
  ``RougeScorer(['rougeL'], use_stemmer=True)`` (what instruct_flamingo computes).
* :class:`StsScorer`: cosine of sentence-transformers embeddings of two whole texts.
* :class:`NliScorer`: a cross-encoder's three logits for a (premise, hypothesis) pair, always in the
  order :data:`NLI_LABELS` whatever the model's label ids; :func:`nli_pair` builds the pair Polite
  Flamingo uses to compare two answers to one question (notes ``polite-flamingo.md`` §3.4, verbatim).
* :class:`RewardScorer`: ``logits[0]`` of a single-label sequence classifier on (question, answer).
* :class:`ClipScorer`: CLIPScore of paragraphs against an image (pieces split on ``.``, encoded,
  normalised, averaged, 100 x cosine with the image).

Models load pinned (:func:`alignsmith.models.loading.pinned`) and by commit sha, float32 by default,
and run in batches under ``torch.inference_mode``, on CUDA when there is one (``device="auto"``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from alignsmith.lineage import ArtifactRef, load_revision
from alignsmith.models.batching import length_sorted_batches
from alignsmith.models.loading import (
    ModelLoadError,
    PinnedModel,
    load_pretrained,
    load_sentence_transformer,
    pinned,
    resolve_device,
    resolve_dtype,
)
from alignsmith.recipes import check_choice
from alignsmith.records import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from PIL import Image

EmptyPieces = Literal["skip", "score"]
EMPTY_PIECES: tuple[EmptyPieces, ...] = ("skip", "score")
NLI_LABELS = ("contradiction", "entailment", "neutral")
PARAGRAPH_SEPARATOR = "\n\n"


# --- text scores and helpers -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(output: str, original: str) -> float:
    """ROUGE-L F-measure (Porter stemming) of the rewrite against the original, at full precision.

    rouge_score lowercases and keeps only ``[a-z0-9]`` tokens, so text without any (e.g. CJK) scores 0.
    """
    return float(_rouge_scorer().score(original, output)["rougeL"].fmeasure)


def question_text(instruction: str) -> str:
    """The instruction as the NLI and reward models read it: ``<image>`` placeholders removed, stripped."""
    return instruction.replace(IMAGE_PLACEHOLDER, "").strip()


def nli_statement(answer: str, question: str) -> str:
    """``"<<ANSWER>>" is the answer to the question: "<<QUESTION>>"``, byte for byte (notes §3.4)."""
    return '"' + answer + '" is the answer to the question: "' + question + '"'


def nli_pair(question: str, output: str, original: str) -> tuple[str, str]:
    """(premise, hypothesis): the rewrite's statement first, the original answer's second."""
    return nli_statement(output, question), nli_statement(original, question)


def split_paragraphs(text: str) -> list[str]:
    return text.split(PARAGRAPH_SEPARATOR)


def paragraph_pieces(paragraph: str, max_pieces: int = 10, empty_pieces: EmptyPieces = "skip") -> list[str]:
    """The texts CLIP encodes for one paragraph: ``paragraph.split('.')[:max_pieces]``.

    ``"skip"`` leaves out pieces that are blank (after the slice, so it never reaches past the
    reference's first ``max_pieces``); ``"score"`` keeps them all, as the reference does.
    """
    check_choice("empty_pieces", empty_pieces, EMPTY_PIECES)
    pieces = paragraph.split(".")[:max_pieces]
    return pieces if empty_pieces == "score" else [p for p in pieces if p.strip()]


# --- scorers ------------------------------------------------------------------------------------------


def _batches(n: int, batch_size: int) -> list[range]:
    """Consecutive batches, for inputs of one size (images through a fixed-size processor)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _max_length(config: Any, tokenizer: Any) -> int | None:
    """The longest input to encode: the tokenizer's limit, capped by the model's position table."""
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    limits = [int(n) for n in limits if n and n < 1_000_000]
    return min(limits) if limits else None


class _SequenceClassifier(PinnedModel):
    """A pinned ``AutoModelForSequenceClassification`` and its tokenizer, run on text pairs."""

    role = "classifier"

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "auto",
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification

        self.model_ref = pinned(model, revision, self.role)
        self.model, self.tokenizer = load_pretrained(
            self.model_ref, dtype=dtype, device=device, auto_class=AutoModelForSequenceClassification
        )
        self.batch_size = batch_size
        self.max_length = max_length or _max_length(self.model.config, self.tokenizer)

    @torch.inference_mode()
    def pair_logits(self, first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        """Logits [n, num_labels] (float32) of ``tokenizer(first[i], second[i])``, in input order.

        Pairs longer than ``max_length`` tokens are cut longest-first, as a cross-encoder does.
        """
        if len(first) != len(second):
            raise ValueError(f"{len(first)} first texts but {len(second)} second texts")
        out = np.empty((len(first), self.model.config.num_labels), dtype=np.float32)
        for rows in length_sorted_batches([len(a) + len(b) for a, b in zip(first, second)], self.batch_size):
            encoded = self.tokenizer(
                [first[i] for i in rows], [second[i] for i in rows], padding=True,
                truncation="longest_first" if self.max_length else False, max_length=self.max_length,
                return_tensors="pt",
            ).to(self.model.device)
            out[rows] = self.model(**encoded).logits.float().cpu().numpy()
        return out


class NliScorer(_SequenceClassifier):
    """An NLI cross-encoder (``cross-encoder/nli-deberta-v3-base`` in the paper).

    Its config's ``id2label`` must name exactly contradiction, entailment and neutral (any case, any
    order); :meth:`logits` reorders the logits to :data:`NLI_LABELS`.
    """

    role = "nli_model"

    def __init__(self, model: str | ArtifactRef, **options: Any) -> None:
        super().__init__(model, **options)
        names = {int(i): str(name).lower() for i, name in self.model.config.id2label.items()}
        if sorted(names.values()) != sorted(NLI_LABELS):
            raise ModelLoadError(
                f"{self.model_ref.repo_id!r} is not a 3-way NLI model: its labels are {names}, "
                f"need {list(NLI_LABELS)}"
            )
        by_name = {name: i for i, name in names.items()}
        self.label_columns = [by_name[label] for label in NLI_LABELS]

    def logits(self, questions: Sequence[str], outputs: Sequence[str], originals: Sequence[str]) -> np.ndarray:
        """[n, 3] logits over (premise, hypothesis) of :func:`nli_pair`, columns in :data:`NLI_LABELS` order."""
        pairs = [nli_pair(q, out, orig) for q, out, orig in zip(questions, outputs, originals, strict=True)]
        raw = self.pair_logits([p for p, _ in pairs], [h for _, h in pairs])
        return raw[:, self.label_columns]


class RewardScorer(_SequenceClassifier):
    """A single-label reward model (``OpenAssistant/reward-model-deberta-v3-large-v2`` in PF-1M)."""

    role = "reward_model"

    def __init__(self, model: str | ArtifactRef, **options: Any) -> None:
        super().__init__(model, **options)
        if self.model.config.num_labels != 1:
            raise ModelLoadError(
                f"{self.model_ref.repo_id!r} has {self.model.config.num_labels} labels; a reward model has 1"
            )

    def scores(self, questions: Sequence[str], answers: Sequence[str]) -> list[float]:
        """``logits[0]`` of ``tokenizer(question, answer)`` for each pair."""
        return [float(v) for v in self.pair_logits(questions, answers)[:, 0]]


class StsScorer(PinnedModel):
    """Semantic similarity with a sentence-transformers model (``all-mpnet-base-v2`` in the paper)."""

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 32,
    ) -> None:
        self.model_ref = pinned(model, revision, "sts_model")
        self.model = load_sentence_transformer(self.model_ref, device=device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def similarity(self, outputs: Sequence[str], originals: Sequence[str]) -> list[float]:
        """``util.pytorch_cos_sim(embed(output), embed(original))`` for each pair, at full precision."""
        if len(outputs) != len(originals):
            raise ValueError(f"{len(outputs)} outputs but {len(originals)} originals")
        if not outputs:
            return []
        texts = list(outputs) + list(originals)
        embedded = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False)
        a, b = embedded[: len(outputs)].float(), embedded[len(outputs) :].float()
        cos = torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)
        return [float(v) for v in cos.sum(-1).cpu()]


class ClipScorer(PinnedModel):
    """CLIPScore of paragraphs against an image with a transformers CLIP-style dual encoder.

    Loaded with ``AutoModel`` and ``AutoProcessor``; the model must offer ``get_text_features`` and
    ``get_image_features`` (their ``pooler_output`` is the projected embedding).
    """

    def __init__(
        self,
        model: str | ArtifactRef,
        *,
        revision: str | None = None,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "auto",
        batch_size: int = 64,
    ) -> None:
        from transformers import AutoModel, AutoProcessor

        self.model_ref = ref = pinned(model, revision, "clip_model")
        target = resolve_device(device)
        try:
            self.processor = AutoProcessor.from_pretrained(ref.repo_id, revision=load_revision(ref))
            self.model = AutoModel.from_pretrained(
                ref.repo_id, revision=load_revision(ref), dtype=resolve_dtype(dtype, target)
            ).to(target).eval()
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"clip_model: cannot load {ref.repo_id!r} (revision {load_revision(ref)}): {err}") from None
        if not hasattr(self.model, "get_text_features") or not hasattr(self.model, "get_image_features"):
            raise ModelLoadError(f"{ref.repo_id!r} is not a CLIP-style dual encoder")
        self.batch_size = batch_size
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_length = _max_length(text_config, self.processor.tokenizer) or 77

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings [n, d] (float32, CPU; n >= 1), each text truncated to the context."""
        batches = length_sorted_batches([len(t) for t in texts], self.batch_size)
        parts = []
        for rows in batches:
            encoded = self.processor.tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            ).to(self.model.device)
            features = self.model.get_text_features(**encoded).pooler_output.float()
            parts.append(torch.nn.functional.normalize(features, dim=-1).cpu())
        out = torch.empty_like(torch.cat(parts))
        out[torch.as_tensor(np.concatenate(batches))] = torch.cat(parts)
        return out

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings [n, d] (float32, CPU; n >= 1); images are converted to RGB first."""
        parts = []
        for batch in _batches(len(images), self.batch_size):
            pixels = self.processor.image_processor(
                images=[images[i].convert("RGB") for i in batch], return_tensors="pt"
            )["pixel_values"].to(self.model.device, self.model.dtype)
            features = self.model.get_image_features(pixel_values=pixels).pooler_output.float()
            parts.append(torch.nn.functional.normalize(features, dim=-1).cpu())
        return torch.cat(parts)

    def paragraph_scores(
        self,
        paragraphs: Sequence[Sequence[str]],
        images: Sequence[Image.Image],
        *,
        max_pieces: int = 10,
        empty_pieces: EmptyPieces = "skip",
    ) -> list[list[float | None]]:
        """For row ``i``, the CLIPScore of each of ``paragraphs[i]`` against ``images[i]``.

        Score = 100 · ⟨normalised image feature, mean of the normalised features of the paragraph's
        :func:`paragraph_pieces`⟩ (the mean is not re-normalised). A paragraph without a piece to
        score (blank, with ``"skip"``) gets None.
        """
        if len(paragraphs) != len(images):
            raise ValueError(f"{len(paragraphs)} rows of paragraphs but {len(images)} images")
        pieces = [[paragraph_pieces(p, max_pieces, empty_pieces) for p in row] for row in paragraphs]
        unique = sorted({piece for row in pieces for para in row for piece in para})
        index = {text: i for i, text in enumerate(unique)}
        texts = self.text_features(unique) if unique else None
        image = self.image_features(images) if images else None
        scores: list[list[float | None]] = []
        for i, row in enumerate(pieces):
            row_scores: list[float | None] = []
            for para in row:
                if not para:
                    row_scores.append(None)
                    continue
                mean = texts[[index[p] for p in para]].mean(0)
                row_scores.append(float(100.0 * (image[i] @ mean)))
            scores.append(row_scores)
        return scores


# --- the cascade ----------------------------------------------------------------------------------------
