"""The Deita build recipe (``recipes/build/deita/*.yaml``).

Kept free of heavy imports so ``alignsmith build deita --help`` is instant: the selection checks
(numpy) are imported only when a recipe is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

from alignsmith.executors import ExecutorSpec
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, help_text, non_default
from alignsmith.sources import DatasetSource

SCORE_DIGITS = "123456"  # a Deita scorer answers with one of these digits


@dataclass(kw_only=True)
class ScorerSpec:
    model: str = help_text(
        "Scorer repo id or local path: hkust-nlp/deita-complexity-scorer as complexity_scorer, "
        "hkust-nlp/deita-quality-scorer as quality_scorer."
    )
    revision: str | None = help_text("Model revision (tag, branch or sha).", default=None)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_text("'auto': bf16 on GPU, fp32 on CPU.", default="auto")
    batch_size: int = help_text("Prompts per forward pass (length-sorted).", default=16, minimum=1)
    max_length: int | None = help_text("Prompt token budget (default: the model's context).", default=None, minimum=1)
    digit_token_ids: list[int] | None = help_text(
        "Token ids of '1'..'6' (default: read from the scorer's tokenizer).", default=None, minimum=0
    )

    def __post_init__(self) -> None:
        ids = self.digit_token_ids
        if ids is not None and (len(ids) != len(SCORE_DIGITS) or len(set(ids)) != len(ids)):
            raise RecipeError(f"digit_token_ids: expected {len(SCORE_DIGITS)} distinct token ids, got {ids}")


@dataclass(kw_only=True)
class EmbedderSpec:
    kind: Literal["causal_lm", "sentence_transformers"] = help_text(
        "'causal_lm': Deita's last-token hidden state over the vicuna_v1.1 rendering; "
        "'sentence_transformers': any sentence-transformers model.",
        default="causal_lm",
    )
    model: str = help_text("Embedding model repo id or local path.")
    revision: str | None = help_text("Model revision.", default=None)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_text("Model dtype (causal_lm only).", default="auto")
    batch_size: int = help_text("Rows per forward pass (length-sorted).", default=8, minimum=1)
    max_length: int = help_text(
        "Token budget of the rendered conversation (right-truncated; causal_lm only).", default=2048, minimum=1
    )
    only_answer: bool = help_text("Embed only the assistant turns (the reference's only_answer).", default=False)
    storage_dtype: Literal["float32", "float16"] = help_text("dtype of the stored embeddings.", default="float16")

    def __post_init__(self) -> None:
        # sentence-transformers loads its model in its own dtype and truncates at its own max_seq_length
        unused = non_default(self, ("dtype", "max_length")) if self.kind == "sentence_transformers" else []
        if unused:
            raise RecipeError(f"{unused[0]}: not used by kind 'sentence_transformers'; remove it")


@dataclass(kw_only=True)
class SelectionSpec:
    strategy: Literal["deita", "topk", "random", "instruction_length", "response_length", "perplexity", "ifd"] = help_text(
        "Selection strategy; 'deita' is score-first diversity-aware greedy selection.", default="deita"
    )
    budget: int | None = help_text("Rows to select (null: no budget; 0: publish the scores only).", default=6000)
    max_similarity: float = help_text(
        "Reject a candidate whose cosine SIMILARITY (-1..1) to any selected row is above this (Deita: 0.9).", default=0.9
    )
    score: str = help_text("How per-turn scores combine into the final score (Deita: sum_product).", default="sum_product")
    tie_order: Literal["stable", "reference"] = help_text(
        "'stable': ties keep pool order; 'reference': reproduce the reference's unstable pandas sort.", default="stable"
    )
    invalid_embeddings: Literal["accept", "reject"] = help_text(
        "Zero-norm/NaN embeddings: 'accept' (the reference's behaviour) or 'reject'.", default="reject"
    )
    block_size: int = help_text(
        "Candidates compared per matrix product (speed only; output is identical; at least 1).", default=1024
    )
    seed: int = help_text("Seed of the 'random' strategy.", default=0)

    def __post_init__(self) -> None:
        """The selection's own checks, run now rather than after hours of scoring."""
        from builders.deita.selection import OPTION_PROBLEMS, SelectionInputError, check_score_combination
        from builders.deita.strategies import STRATEGIES, strategy_options

        for name, problem in OPTION_PROBLEMS.items():
            if (reason := problem(getattr(self, name))) is not None:
                raise RecipeError(f"{name}: {reason}")
        try:
            check_score_combination(self.score)
        except SelectionInputError as err:
            raise RecipeError(f"score: {err}") from None
        # an option of some strategy, set here but not taken by the chosen one, would be silently ignored;
        # `score` is exempt: it also computes the published final_score column, whatever the strategy
        options = {option for name in STRATEGIES for option in strategy_options(name)} - {"score"}
        taken = strategy_options(self.strategy)
        unused = [name for name in non_default(self, (f.name for f in fields(self) if f.name in options))
                  if name not in taken]
        if unused:
            raise RecipeError(f"{unused[0]}: not used by strategy {self.strategy!r}, which takes "
                              f"{', '.join(taken) or 'no options'}")


@dataclass(kw_only=True)
class DeitaRecipe(HubRecipe):
    pool: DatasetSource = help_text("The instruction pool to select from.")
    complexity_scorer: ScorerSpec = help_text("Complexity scorer (scores each user turn).")
    quality_scorer: ScorerSpec = help_text("Quality scorer (scores each (user, assistant) pair).")
    embedder: EmbedderSpec = help_text("Embedding model for the diversity filter.")
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    difficulty_model: str | None = help_text(
        "Causal LM for the perplexity/IFD strategies (only needed by those).", default=None
    )
    context: Literal["turn", "history"] = help_text(
        "'turn': each turn scored on its own (the reference); 'history': later turns see earlier ones.", default="turn"
    )
    truncation: Literal["head", "error"] = help_text(
        "Prompts over the scorer's context: 'head' keeps the start of each text and always the score cue; "
        "'error' stops.",
        default="head",
    )
    on_invalid: Literal["error", "reject"] = help_text(
        "Malformed or unscorable rows: stop ('error') or keep them aside in the 'rejected' split.", default="reject"
    )
    work_dir: str = help_text("Where finished shards are kept; a rerun resumes from them.", default="runs/deita")
    shard_size: int = help_text("Rows per work shard (the unit of resumption).", default=256, minimum=1)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    publish_embeddings: bool = help_text("Also publish an 'embeddings' config.", default=False)
    output: OutputRepo = help_text("Dataset repo (and tag) to publish to.")

    removed_keys: ClassVar[dict[str, str]] = dict.fromkeys(
        ("num_shards", "shard_index"), "spread the work over machines with `executor: {kind: slurm, tasks: N}` "
        "(one `build deita` submits every task and the publishing job)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection.strategy in ("perplexity", "ifd") and not self.difficulty_model:
            raise RecipeError(f"difficulty_model: needed by selection.strategy {self.selection.strategy!r}")
