"""The Polite Flamingo pairs recipe (``recipes/build/pf-pairs/*.yaml``): (distorted, original) response pairs.

Kept free of heavy imports so ``alignsmith build pf-pairs --help`` is instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignsmith.models.generation import api_key_field, check_endpoint, endpoint_field
from alignsmith.executors import ExecutorSpec
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text
from alignsmith.sources import DatasetSource
from builders.polite_flamingo.rewriting import RewriterLayout

PairKind = Literal["random_augmentation", "llm_instructed", "captions_and_boxes"]


@dataclass(kw_only=True)
class DistorterSpec:
    """The causal LM that continues the Guanaco distortion prompt (the paper: timdettmers/guanaco-33b), run
    here or behind OpenAI-compatible servers (raw ``/completions``)."""

    model: str = help_text("Hub repo id or local folder of a causal LM (a PEFT adapter is loaded on its base); or, "
                           "with `endpoint`, the model name the server knows.")
    revision: str | None = help_text("Branch, tag or sha (Hub models only); pinned to a sha.", default=None)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_text(
        "'auto': bf16 on GPU, fp32 on CPU; in-process models only.", default="auto")
    batch_size: int = help_text("Prompts per generate call (length-sorted, left-padded), or requests in flight "
                                "(endpoint).", default=8, minimum=1)
    endpoint: str | list[str] | None = endpoint_field(many=True)
    api_key_env: str = api_key_field()

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint, self.revision, self.dtype)


@dataclass(kw_only=True)
class DecodingSpec:
    """Decoding of the distortion continuations. The paper does not publish these: they are this
    build's choices, recorded on every row."""

    temperature: float = help_text("0 is greedy; the paper's value is unpublished.", default=0.7, minimum=0)
    top_p: float = help_text("Nucleus sampling mass (unpublished in the paper).", default=0.9,
                             exclusive_minimum=0, maximum=1)
    max_new_tokens: int = help_text(
        "Continuation budget; a continuation that reaches it without a closing quote is rejected.",
        default=512, minimum=1)
    seed: int = help_text("Sampling seed (per batch, see alignsmith.models.hf_chat).", default=0)


@dataclass(kw_only=True)
class PairsRecipe(HubRecipe):
    source: DatasetSource = help_text(
        "Any conversation dataset (text-only or with images); each (user, assistant) turn pair is one candidate.")
    kinds: list[PairKind] = help_text(
        "Distortions to build, one published config each. captions_and_boxes needs 'captions' and 'instances' "
        "columns (LLaVA-detail style, carried in each record's metadata) and uses a record's first turn pair only.",
        default_factory=lambda: ["random_augmentation", "llm_instructed"])
    distorter: DistorterSpec | None = help_text("The LLM of 'llm_instructed' (needed by it only).", default=None)
    decoding: DecodingSpec = field(default_factory=DecodingSpec)
    rewriter_prompt: RewriterLayout = help_text(
        "Layout of the published 'prompt' column: 'paper' (Figure 3, spelling fixed) or 'readme' (the README's "
        "inference helper, typo included: the one the released weights were used with).", default="paper")
    seed: int = help_text("Seed of every per-row draw (commands, augmentation steps).", default=0)
    max_rows: int | None = help_text("Use only the first N source rows (null: all).", default=None, minimum=1)
    work_dir: str = help_text("Where finished shards are kept; a rerun resumes from them.", default="runs/pf-pairs")
    shard_size: int = help_text("Source rows per work shard (the unit of resumption).", default=256, minimum=1)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    output: OutputRepo = help_text("Dataset repo (and tag) to publish to.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise RecipeError(f"kinds: expected distinct kinds, at least one, got {self.kinds}")
        if "llm_instructed" in self.kinds and self.distorter is None:
            raise RecipeError("distorter: needed by kind 'llm_instructed'")
        if "llm_instructed" not in self.kinds and self.distorter is not None:
            raise RecipeError("distorter: used only by kind 'llm_instructed', which `kinds` leaves out; remove it")
        if "captions_and_boxes" in self.kinds and self.source.extra_columns != "carry":
            raise RecipeError(
                f"source.extra_columns: kind 'captions_and_boxes' reads the 'captions' and 'instances' columns "
                f"from each record's metadata, so it needs 'carry', got {self.source.extra_columns!r}")
