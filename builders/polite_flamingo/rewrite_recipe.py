"""The Polite Flamingo rewriting recipe (``recipes/build/pf-rewrite/*.yaml``): raw vision-language
annotations -> rewritten by a published rewriter -> filter cascade -> a PF-1M-style dataset.

Kept free of heavy imports so ``alignsmith build pf-rewrite --help`` is instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignsmith.models.generation import api_key_field, check_endpoint, endpoint_field
from alignsmith.executors import ExecutorSpec
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text
from builders.polite_flamingo.rewriting import RewriterLayout

SourceTask = Literal["vqa", "caption", "classification", "generic"]
NliLabel = Literal["contradiction", "entailment", "neutral"]
# which filter models each task's branch of the cascade needs (notes polite-flamingo.md §3.4, corrections)
NEEDED_FILTER_MODELS: dict[str, tuple[str, ...]] = {"caption": ("sts", "clip"), "vqa": ("nli",)}
RESERVED_CONFIGS = ("rejected", "multiturn")


@dataclass(kw_only=True)
class AnnotationSource:
    """One raw annotation set, converted by :mod:`builders.polite_flamingo.annotations`; one published config."""

    task: SourceTask = help_text(
        "vqa: a VQA-format questions + annotations pair; caption: rows of (image, captions); classification: "
        "rows of (image, label); generic: rows of (instruction, short answer, images).")
    name: str = help_text("Config name of this source in the published dataset (also the records' `source`).")
    questions_file: str | None = help_text("vqa: the questions JSON ({'questions': [...]}).", default=None)
    annotations_file: str | None = help_text("vqa: the annotations JSON ({'annotations': [...]}).", default=None)
    image_template: str = help_text(
        "vqa: image file name from {image_id} / {question_id}, e.g. 'COCO_val2014_{image_id:012d}.jpg'.",
        default="{image_id}.jpg")
    path: str | None = help_text("caption / classification / generic: a local JSON (list of rows) or JSONL file.",
                                 default=None)
    image_root: str | None = help_text("Folder that relative image paths are resolved against.", default=None)
    require_images: bool = help_text(
        "Open every image while converting (a missing or undecodable one is a rejection).", default=True)
    id_column: str = help_text("Column of the row id (missing: '{name}-{row}'). Not for vqa (question_id).",
                               default="id")
    image_column: str = help_text("caption / classification: the image column.", default="image")
    captions_column: str = help_text("caption: the captions column (a list, or one string).", default="captions")
    label_column: str = help_text("classification: the label column (a name, or an index into label_names).",
                                  default="label")
    label_names: list[str] | None = help_text("classification: class names of integer labels.", default=None)
    template: str = help_text("classification: the raw annotation, from {label}.",
                              default="This is a photo of a {label}.")
    instruction_column: str = help_text("generic: the instruction column.", default="instruction")
    answer_column: str = help_text("generic: the short answer column.", default="answer")
    images_column: str = help_text("generic: the images column (a list, one image, or absent).", default="images")

    def __post_init__(self) -> None:
        where = f"sources[{self.name!r}]"
        if not self.name or self.name in RESERVED_CONFIGS:
            raise RecipeError(f"{where}.name: must be non-empty and not one of {list(RESERVED_CONFIGS)}")
        if self.task == "vqa":
            if not (self.questions_file and self.annotations_file):
                raise RecipeError(f"{where}: task 'vqa' needs questions_file and annotations_file")
            if self.path is not None:
                raise RecipeError(f"{where}.path: task 'vqa' reads questions_file and annotations_file, not path")
        else:
            if not self.path:
                raise RecipeError(f"{where}.path: task {self.task!r} needs a JSON or JSONL file")
            if self.questions_file or self.annotations_file:
                raise RecipeError(f"{where}: questions_file / annotations_file are for task 'vqa' only")


@dataclass(kw_only=True)
class RewriterSpec:
    """The published rewriter: an image-text-to-text model (images fed) or a text-only causal LM, run here or
    behind OpenAI-compatible servers."""

    model: str = help_text("Hub repo id or local folder of the rewriter (image-text-to-text or causal LM); or, "
                           "with `endpoint`, the model name the server knows.")
    revision: str | None = help_text("Branch, tag or sha (Hub models only); pinned to a sha.", default=None)
    layout: RewriterLayout = help_text(
        "Prompt layout: 'paper' (Figure 3, spelling fixed) or 'readme' (the README's, typo included: the one "
        "the released weights were used with). Use the layout the rewriter was trained with.", default="paper")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_text(
        "'auto': bf16 on GPU, fp32 on CPU; in-process models only.", default="auto")
    batch_size: int = help_text("Prompts per generate call (left-padded), or requests in flight (endpoint).",
                                default=8, minimum=1)
    endpoint: str | list[str] | None = endpoint_field(many=True)
    images: bool = help_text(
        "With `endpoint`: the served rewriter reads images (each prompt goes to chat completions as text and "
        "image parts; else to raw /completions, `<image>` as text). In-process, the model's config decides.",
        default=False)
    api_key_env: str = api_key_field()

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint, self.revision, self.dtype)
        if self.images and self.endpoint is None:
            raise RecipeError("rewriter.images: applies to an endpoint; a model run here is read as image-text-to-"
                              "text or text-only from its config")


@dataclass(kw_only=True)
class RewriteDecoding:
    """Decoding of the rewriting pass. Unpublished in the paper (notes §2.6, §3.3): this build's choices,
    recorded on every row."""

    temperature: float = help_text("0 is greedy (the released inferencer samples at 1.0).", default=0.0, minimum=0)
    top_p: float = help_text("Nucleus sampling mass (released inferencer: 0.9).", default=1.0,
                             exclusive_minimum=0, maximum=1)
    max_new_tokens: int = help_text("Continuation budget (released inferencer: 1024).", default=512, minimum=1)
    no_repeat_ngram_size: int | None = help_text(
        "Forbid repeating n-grams of this size (released inferencer: 3); null: the rewriter's generation config.",
        default=None, minimum=1)
    seed: int = help_text("Sampling seed, mixed per batch with the batch's first row.", default=0)


@dataclass(kw_only=True)
class FilterModel:
    model: str = help_text("Hub repo id or local folder.")
    revision: str | None = help_text("Branch, tag or sha (Hub models only); pinned to a sha.", default=None)


@dataclass(kw_only=True)
class FilterSpec:
    """The PF-1M cascade, Length -> Change -> STS (captions) / NLI (VQA) -> CLIPScore (captions); the reward
    is stored, not filtered on (see :class:`builders.polite_flamingo.filters.FilterSettings`)."""

    min_chars: int = help_text("Length filter: shortest rewrite kept, in characters (unpublished).", default=8,
                               minimum=0)
    max_chars: int = help_text("Length filter: longest rewrite kept, in characters (unpublished).", default=4096,
                               minimum=0)
    change_max_rouge: float | None = help_text(
        "Change filter: also drop rewrites with ROUGE-L >= this against the raw annotation (null: only unchanged "
        "ones).", default=None, minimum=0, maximum=1)
    sts_min: float = help_text("STS filter (captions): drop below this cosine (published: 0.40).", default=0.40)
    nli_drop_labels: list[NliLabel] = help_text(
        "NLI filter (VQA): predicted labels that drop the row (published: contradiction).",
        default_factory=lambda: ["contradiction"])
    clip_min: float = help_text("CLIPScore (captions): paragraphs below this are removed (published: 17.0).",
                                default=17.0)
    clip_max_pieces: int = help_text("CLIPScore: '.'-pieces per paragraph scored (reference: 10).", default=10,
                                     minimum=1)
    clip_empty_pieces: Literal["skip", "score"] = help_text(
        "CLIPScore: blank '.'-pieces skipped, or scored as the reference does.", default="skip")
    clip_multi_paragraph_only: bool = help_text("CLIPScore only captions holding a blank line (as PF-1M).",
                                                default=True)
    sts: FilterModel | None = help_text("Sentence-transformers model (paper: all-mpnet-base-v2); captions need it.",
                                        default=None)
    nli: FilterModel | None = help_text("3-way NLI cross-encoder (paper: cross-encoder/nli-deberta-v3-base); VQA "
                                        "needs it.", default=None)
    clip: FilterModel | None = help_text("CLIP dual encoder (paper: ViT-L-14-336 openai); captions need it.",
                                         default=None)
    reward: FilterModel | None = help_text(
        "Reward model (PF-1M: OpenAssistant/reward-model-deberta-v3-large-v2); optional, stored as `reward`.",
        default=None)

    def __post_init__(self) -> None:
        if self.min_chars > self.max_chars:
            raise RecipeError(f"filters.min_chars: {self.min_chars} is above max_chars {self.max_chars}")
        if len(set(self.nli_drop_labels)) != len(self.nli_drop_labels):
            raise RecipeError(f"filters.nli_drop_labels: repeated labels in {self.nli_drop_labels}")


@dataclass(kw_only=True)
class MultiturnSpec:
    """instruct_flamingo's multi-turn augmentation over the kept rows: a published `multiturn` config."""

    max_img: int = help_text("Stop drawing once the conversation would hold this many images.", default=8, minimum=1)
    max_tokens: int = help_text("Token budget of a conversation (turns past it are dropped).", default=2048,
                                minimum=1)
    seed: int = help_text("Seed of the draws (per first sample).", default=0)
    tokenizer: str | None = help_text(
        "Tokenizer (Hub repo or folder) that counts tokens; null: the rewriter's.", default=None)


@dataclass(kw_only=True)
class RewriteRecipe(HubRecipe):
    sources: list[AnnotationSource] = help_text("Raw annotation sets, one published config each (by name).")
    rewriter: RewriterSpec = help_text("The published rewriter (Polite Flamingo).")
    decoding: RewriteDecoding = field(default_factory=RewriteDecoding)
    filters: FilterSpec = field(default_factory=FilterSpec)
    top_k: int | None = help_text(
        "Keep only the k kept rows with the highest reward over all sources, outputs ending in '...' removed "
        "first (instruct_flamingo's converter); needs filters.reward. Null: keep all.", default=None, minimum=1)
    multiturn: MultiturnSpec | None = help_text("Also publish a `multiturn` config (null: none).", default=None)
    seed: int = help_text("Seed of per-row draws (caption prompts).", default=0)
    work_dir: str = help_text("Where finished shards are kept; a rerun resumes from them.", default="runs/pf-rewrite")
    shard_size: int = help_text("Records per work shard (the unit of resumption).", default=256, minimum=1)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    output: OutputRepo = help_text("Dataset repo (and tag) to publish to.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sources:
            raise RecipeError("sources: at least one source is needed")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise RecipeError(f"sources: names must be distinct, got {names}")
        for source in self.sources:
            for needed in NEEDED_FILTER_MODELS.get(source.task, ()):
                if getattr(self.filters, needed) is None:
                    raise RecipeError(f"filters.{needed}: needed by source {source.name!r} (task {source.task!r})")
        if self.top_k is not None and self.filters.reward is None:
            raise RecipeError("top_k: ranks rows by reward, so it needs filters.reward")
        if self.multiturn is not None and self.multiturn.tokenizer is None and self.rewriter.endpoint is not None:
            raise RecipeError("multiturn.tokenizer: needed with an endpoint rewriter (its tokenizer is not here)")
