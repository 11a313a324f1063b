"""The PF-1M filter cascade (notes ``polite-flamingo.md`` §3.4-3.5), batch in, batch out.

Order, as corrected against the reference: **Length → Change → STS (captions) or NLI (VQA) →
CLIPScore (captions)**; the reward model's score is stored on every kept row, never used as a filter.
A row's ``task`` decides its branch: ``"caption"`` gets STS and CLIPScore, ``"vqa"`` gets NLI, any
other task only Length, Change and the reward. Rows are dicts with at least ``instruction``,
``original`` (the raw annotation), ``output`` (the rewrite), ``images`` (PIL images) and ``task``.

Every score computed is kept on the row under PF-1M's field names: ``rouge_score``,
``sts_similarity``, ``nli_similarity``, ``paragraph_clip_scores``, ``filtered_paragraphs``,
``reward``. A row that fails a filter comes back in :attr:`FilterResult.dropped` with the filter's
name, its score and a reason (and the scores computed until then): nothing is dropped silently.

Scores and how they follow the reference:

* ``rouge_score`` (:func:`rouge_l`): ROUGE-L F-measure with stemming, exactly
  ``rouge_score.rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)`` (F is symmetric in its two
  arguments). Kept at full precision; PF-1M's published values are unrounded floats too.
* ``sts_similarity`` (:class:`StsScorer`): cosine (``util.pytorch_cos_sim``) of sentence-transformers
  embeddings of the whole rewrite and the whole original (``all-mpnet-base-v2`` in the paper). The
  README rounds it to 4 decimals before storing; here it is kept and compared at full precision, so
  a value within 5e-5 below 0.40 that PF-1M rounded up to 0.4000 is dropped here.
* ``nli_similarity`` (:class:`NliScorer`): the cross-encoder's 3 logits for (premise, hypothesis) =
  (:func:`nli_pair`), always stored in the order ``['contradiction', 'entailment', 'neutral']``
  (``cross-encoder/nli-deberta-v3-base``'s own order), whatever the model's label ids are; the
  predicted label is the argmax. The paper drops contradictions; whether "neutral" was kept is
  unpublished (kept here; :attr:`FilterSettings.nli_drop_labels` changes it).
* ``paragraph_clip_scores`` / ``filtered_paragraphs`` (:class:`ClipScorer`): CLIPScore per paragraph
  (see :func:`paragraph_pieces` and :meth:`ClipScorer.paragraph_scores`). The reference is open_clip
  ``ViT-L-14-336`` (``pretrained='openai'``); its transformers port is
  ``openai/clip-vit-large-patch14-336``. As in PF-1M only captions containing ``"\\n\\n"`` are scored
  (:attr:`FilterSettings.clip_multi_paragraph_only`).
* ``reward`` (:class:`RewardScorer`): ``logits[0]`` of a single-label sequence classifier on
  ``tokenizer(question, answer)`` (``OpenAssistant/reward-model-deberta-v3-large-v2``).

Questions (for NLI and the reward) are the row's instruction with alignsmith's ``<image>``
placeholders removed and the ends stripped (:func:`question_text`): the reference asked about the
dataset's own question, which carried no image marker.

Models are loaded once, pinned (:func:`alignsmith.models.loading.pinned`) and by commit sha, in
float32 by default (the reference ran them unquantised); they run in batches under
``torch.inference_mode``, on CUDA when there is one (``device="auto"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from alignsmith.errors import AlignsmithError
from alignsmith.models.scorers import (
    EMPTY_PIECES,
    NLI_LABELS,
    PARAGRAPH_SEPARATOR,
    ClipScorer,
    EmptyPieces,
    NliScorer,
    RewardScorer,
    StsScorer,
    question_text,
    rouge_l,
    split_paragraphs,
)
from alignsmith.recipes import check_choice

if TYPE_CHECKING:
    from PIL import Image

FilterName = Literal["length", "change", "sts", "nli", "clip"]
FILTERS: tuple[FilterName, ...] = ("length", "change", "sts", "nli", "clip")

CAPTION, VQA = "caption", "vqa"
REQUIRED_FIELDS = ("instruction", "original", "output", "task")


class FilterInputError(AlignsmithError):
    """A row the cascade cannot read: which row, which field, what is wrong."""

    def __init__(self, index: int, field: str, problem: str) -> None:
        self.index, self.field, self.problem = index, field, problem
        super().__init__(f"row {index}, {field}: {problem}")


# --- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds of the cascade. Published: ``sts_min``, ``clip_min``, dropping NLI contradictions.

    ``min_chars``/``max_chars`` bound the stripped rewrite's length in characters. The paper only says
    it "excludes too-short or too-long responses"; the defaults are this implementation's: 8 removes
    empty and one-word degenerate rewrites (a short VQA answer such as "Yes, it is." passes), 4096 is
    far above LLaVA-detail-style two-paragraph captions and catches runaway repetition.

    The change filter always drops a rewrite equal to its raw annotation after whitespace
    normalisation (the paper's "not rewritten"); ``change_max_rouge`` additionally drops rewrites
    whose ROUGE-L against the original is at least that value (unpublished; off by default).

    ``clip_empty_pieces``: ``"skip"`` (default) ignores blank ``'.'``-pieces of a paragraph, such as the
    empty one after its final period; ``"score"`` averages them in as the reference does, which pulls
    every paragraph that ends in '.' toward the image's score for an empty caption.
    """

    min_chars: int = 8
    max_chars: int = 4096
    change_max_rouge: float | None = None
    sts_min: float = 0.40
    nli_drop_labels: tuple[str, ...] = ("contradiction",)
    clip_min: float = 17.0
    clip_max_pieces: int = 10
    clip_empty_pieces: EmptyPieces = "skip"
    clip_multi_paragraph_only: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {self.min_chars} and {self.max_chars}")
        if self.clip_max_pieces < 1:
            raise ValueError(f"clip_max_pieces must be at least 1, got {self.clip_max_pieces}")
        check_choice("clip_empty_pieces", self.clip_empty_pieces, EMPTY_PIECES)
        for label in self.nli_drop_labels:
            check_choice("nli_drop_labels", label, NLI_LABELS)


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


# --- the cascade ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dropped:
    """A row the cascade removed: which input row, the filter, its score and why (row has the scores so far)."""

    index: int
    filter: FilterName
    score: Any
    reason: str
    row: dict[str, Any]


@dataclass
class FilterResult:
    """Kept rows (with their scores; captions possibly with paragraphs removed) and dropped ones."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    kept_index: list[int] = field(default_factory=list)  # the input row of each kept row
    dropped: list[Dropped] = field(default_factory=list)


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    for i, row in enumerate(rows):
        for name in REQUIRED_FIELDS:
            if name not in row:
                raise FilterInputError(i, name, "missing")
            if not isinstance(row[name], str):
                raise FilterInputError(i, name, f"expected a string, got {type(row[name]).__name__}")


def _first_image(row: Mapping[str, Any]) -> Image.Image | None:
    images = row.get("images") or []
    return images[0] if images else None


def filter_rows(
    rows: Sequence[Mapping[str, Any]],
    settings: FilterSettings = FilterSettings(),
    *,
    sts: StsScorer | None = None,
    nli: NliScorer | None = None,
    clip: ClipScorer | None = None,
    reward: RewardScorer | None = None,
) -> FilterResult:
    """Run the cascade on a batch of rows; models are needed only for the branches present.

    Captions need ``sts`` and ``clip``, VQA rows ``nli`` (a missing one raises ValueError before
    anything runs). Without ``reward`` kept rows carry no ``reward`` field. The input rows are not
    modified: kept and dropped rows are copies with the scores added. CLIPScore reads the row's first
    image; a caption to be CLIP-scored without one is dropped by the ``clip`` filter.
    """
    _check_rows(rows)
    tasks = {row["task"] for row in rows}
    for task, name, scorer in ((CAPTION, "sts", sts), (CAPTION, "clip", clip), (VQA, "nli", nli)):
        if task in tasks and scorer is None:
            raise ValueError(f"rows with task {task!r} need the {name} model; pass {name}=")
    result = FilterResult()
    work = {i: dict(row) for i, row in enumerate(rows)}
    dropped: dict[int, Dropped] = {}

    def drop(i: int, name: FilterName, score: Any, reason: str) -> None:
        dropped[i] = Dropped(i, name, score, reason, work.pop(i))

    # 1. length
    for i, row in list(work.items()):
        n = len(row["output"].strip())
        if n < settings.min_chars:
            drop(i, "length", n, f"rewrite too short: {n} characters < min_chars {settings.min_chars}")
        elif n > settings.max_chars:
            drop(i, "length", n, f"rewrite too long: {n} characters > max_chars {settings.max_chars}")

    # 2. change
    for i, row in list(work.items()):
        row["rouge_score"] = score = rouge_l(row["output"], row["original"])
        if normalise_whitespace(row["output"]) == normalise_whitespace(row["original"]):
            drop(i, "change", score, "not rewritten: the rewrite equals the raw annotation up to whitespace")
        elif settings.change_max_rouge is not None and score >= settings.change_max_rouge:
            drop(i, "change", score, f"barely rewritten: ROUGE-L {score:.4f} >= change_max_rouge {settings.change_max_rouge}")

    # 3a. STS (captions)
    captions = [i for i, row in work.items() if row["task"] == CAPTION]
    if captions:
        similarities = sts.similarity([work[i]["output"] for i in captions], [work[i]["original"] for i in captions])
        for i, score in zip(captions, similarities):
            work[i]["sts_similarity"] = score
            if score < settings.sts_min:
                drop(i, "sts", score, f"rewrite drifted from the caption: STS {score:.4f} < sts_min {settings.sts_min}")

    # 3b. NLI (VQA)
    questions = [i for i, row in work.items() if row["task"] == VQA]
    if questions:
        logits = nli.logits([question_text(work[i]["instruction"]) for i in questions],
                            [work[i]["output"] for i in questions], [work[i]["original"] for i in questions])
        for i, row_logits in zip(questions, logits):
            work[i]["nli_similarity"] = values = [float(v) for v in row_logits]
            label = NLI_LABELS[int(np.argmax(row_logits))]
            if label in settings.nli_drop_labels:
                drop(i, "nli", values, f"NLI predicts {label!r} between the rewrite and the original answer")

    # 4. CLIPScore per paragraph (captions)
    to_score = [i for i, row in work.items() if row["task"] == CAPTION
                and (not settings.clip_multi_paragraph_only or PARAGRAPH_SEPARATOR in row["output"])]
    for i in [i for i in to_score if _first_image(work[i]) is None]:
        drop(i, "clip", None, "caption has no image to compute CLIPScore against")
    to_score = [i for i in to_score if i in work]
    if to_score:
        paragraphs = [split_paragraphs(work[i]["output"]) for i in to_score]
        scores = clip.paragraph_scores(paragraphs, [_first_image(work[i]) for i in to_score],
                                       max_pieces=settings.clip_max_pieces, empty_pieces=settings.clip_empty_pieces)
        for i, paras, para_scores in zip(to_score, paragraphs, scores):
            row = work[i]
            kept = [(s, p) for s, p in zip(para_scores, paras) if s is not None and s >= settings.clip_min]
            row["paragraph_clip_scores"] = [s for s, _ in kept]
            row["filtered_paragraphs"] = [[s, p] for s, p in zip(para_scores, paras) if s is None or s < settings.clip_min]
            if not kept:
                drop(i, "clip", para_scores,
                     f"every paragraph scores below clip_min {settings.clip_min} (or is blank)")
            else:
                row["output"] = PARAGRAPH_SEPARATOR.join(p for _, p in kept)

    # 5. reward (stored, not a filter)
    survivors = list(work)
    if reward is not None and survivors:
        values = reward.scores([question_text(work[i]["instruction"]) for i in survivors],
                               [work[i]["output"] for i in survivors])
        for i, value in zip(survivors, values):
            work[i]["reward"] = value

    result.kept_index = survivors
    result.kept = [work[i] for i in survivors]
    result.dropped = [dropped[i] for i in sorted(dropped)]
    return result


ELLIPSIS = "..."


def top_k_by_reward(rows: Sequence[Mapping[str, Any]], k: int, *, drop_ellipsis: bool = True) -> list[Mapping[str, Any]]:
    """The ``k`` rows with the highest ``reward``, in their input order (ties: the earlier row wins).

    As instruct_flamingo's ``pf_1m_to_instruction.py`` converter (which kept the top 800k), outputs
    ending in ``'...'`` (checked on the output as is, e.g. a truncated generation) are removed first
    unless ``drop_ellipsis=False``. Every row must carry a ``reward``.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    for i, row in enumerate(rows):
        if not isinstance(row.get("reward"), (int, float)):
            raise FilterInputError(i, "reward", "missing or not a number; score the rows with a reward model first")
    candidates = [i for i, row in enumerate(rows) if not (drop_ellipsis and row["output"].endswith(ELLIPSIS))]
    best = sorted(candidates, key=lambda i: -float(rows[i]["reward"]))[:k]  # sorted is stable: ties keep input order
    return [rows[i] for i in sorted(best)]
