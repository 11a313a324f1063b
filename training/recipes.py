"""Training recipes: what a run starts from, what it reads, how it trains and where it publishes.

One YAML file is one run, in the alignment-handbook style, with two differences: every dataset
and base model is pinned by revision (the resolved commit sha lands in the model card), and the
trl arguments live in a ``training:`` mapping that is checked against ``SFTConfig``/``DPOConfig``
so a misspelt key is an error, not a silently ignored default.

Kept free of heavy imports: ``alignsmith train sft --help`` reads these classes.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from alignsmith.converters import RecordKind
from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, build, help_text
from alignsmith.mixtures import MixtureRecipe

# trl/transformers arguments that alignsmith sets itself; accepting them in `training:` would let a
# recipe say one thing while the run does another.
RESERVED_TRAINING_KEYS = {
    "output_dir": "set the top-level output_dir instead",
    "push_to_hub": "alignsmith publishes to `output:` after training",
    "hub_model_id": "set output.repo_id instead",
    "hub_revision": "set output.branch instead",
    "hub_strategy": "alignsmith publishes one tagged commit per release",
    "hub_token": "use HF_TOKEN",
    "hub_private_repo": "set output.private instead",
    "model_init_kwargs": "set base_model.dtype; alignsmith loads the model itself",
    "chat_template_path": "set chat_template.template or chat_template.template_file instead",
    "eos_token": "set chat_template.eos_token instead",
    "resume_from_checkpoint": "runs resume from the newest checkpoint in output_dir (see `resume`)",
}


@dataclass(kw_only=True)
class BaseModelSpec:
    """The model a run starts from."""

    path: str = help_text(
        "Hub model repo id (or a local folder) of the base model; a LoRA adapter repo is merged into its base first."
    )
    revision: str | None = help_text("Branch, tag or commit sha; resolved to a commit sha for the card.", default=None)
    dtype: Literal["float32", "bfloat16", "float16"] = help_text(
        "Weights dtype while training (trl would otherwise load float32).", default="float32"
    )
    attn_implementation: str | None = help_text(
        "Attention kernels: sdpa, eager, flash_attention_2 (GPU; what packing's padding-free batches need "
        "to skip attention across packed conversations); default: transformers' choice.",
        default=None,
    )


@dataclass(kw_only=True)
class ChatTemplateRecipe:
    """The chat template trained with (and shipped with the model)."""

    template: str | None = help_text(
        "Jinja chat template with assistant content inside {% generation %}...{% endgeneration %}; "
        "default: the base model's, or trl's training variant of it.",
        default=None,
    )
    template_file: str | None = help_text("Read the template from this .jinja file instead.", default=None)
    eos_token: str | None = help_text("Token that ends an assistant turn (default: the tokenizer's EOS).", default=None)

    def __post_init__(self) -> None:
        if self.template is not None and self.template_file is not None:
            raise RecipeError("template_file: give template or template_file, not both")

    def supplied(self) -> str | None:
        """The recipe's own template text, if it names one."""
        if self.template_file is None:
            return self.template
        path = Path(self.template_file).expanduser()
        if not path.is_file():
            raise RecipeError(f"chat_template.template_file: file not found: {path}")
        return path.read_text(encoding="utf-8")


@dataclass(kw_only=True)
class ModelOutput(OutputRepo):
    """Where the trained model is published."""

    repo_id: str = help_text("Target model repo id, e.g. 'my-org/qwen2.5-0.5b-sft'.")
    merged: bool = help_text(
        "With LoRA: publish merged full weights at the repo root (the adapter goes under adapter/).", default=False
    )


@dataclass(kw_only=True)
class TrainRecipe(HubRecipe):
    """Fields shared by SFT and DPO runs."""

    kind: ClassVar[Literal["sft", "dpo"]]
    trl_config: ClassVar[str]  # config class name in trl
    trl_trainer: ClassVar[str]  # trainer class name in trl
    record_kind: ClassVar[RecordKind]  # the records it trains on

    base_model: BaseModelSpec = help_text("Model to start from.")
    data: MixtureRecipe = help_text("Training mixture.")
    output: ModelOutput = help_text("Model repo to publish to.")
    chat_template: ChatTemplateRecipe = help_text("Chat template and EOS.", default_factory=ChatTemplateRecipe)
    lora: dict[str, Any] | None = help_text(
        "peft.LoraConfig fields (r, lora_alpha, lora_dropout, target_modules, modules_to_save, ...); "
        "omit for full fine-tuning.",
        default=None,
    )
    unfrozen: list[str] = help_text(
        "Without LoRA: train only parameters whose names contain one of these substrings (others frozen).",
        default_factory=list,
    )
    training: dict[str, Any] = help_text(
        "trl SFTConfig/DPOConfig arguments (learning_rate, max_steps, packing, use_cpu, bf16, save_steps, ...).",
        default_factory=dict,
    )
    output_dir: str | None = help_text(
        "Local folder for checkpoints and the saved model (default: runs/<output repo id>).", default=None
    )
    resume: bool = help_text(
        "Resume from the newest complete checkpoint in output_dir, which must come from a recipe that trains the "
        "same weights (false: delete the checkpoints and start over).",
        default=True,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora is not None and self.unfrozen:
            raise RecipeError(
                "unfrozen: applies to runs without LoRA; with LoRA, list whole modules to train in lora.modules_to_save"
            )
        if self.output.merged and self.lora is None:
            raise RecipeError(
                "output.merged: only a LoRA run has an adapter to merge; full fine-tuning publishes full weights"
            )
        for index, entry in enumerate(self.data.datasets):
            entry.check_gives(self.record_kind, f"data.datasets[{index}]")
        for key in self.training:
            if key in RESERVED_TRAINING_KEYS:
                raise RecipeError(f"training.{key}: not settable here: {RESERVED_TRAINING_KEYS[key]}")
        # checked now so a typo in a later pipeline stage fails before the first stage trains; values are
        # checked when the run starts (trl validates them against the machine, e.g. bf16 needs a GPU)
        self.lora_config()
        _check_keys(self.trl_config, self.training)
        _check_trackers(self.training.get("report_to", "none"))

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.output.repo_id)

    def lora_config(self) -> Any:
        """The recipe's ``lora`` mapping as a ``peft.LoraConfig`` (unknown keys are a RecipeError)."""
        if self.lora is None:
            return None
        from peft import LoraConfig

        return build(LoraConfig, {"task_type": "CAUSAL_LM", **self.lora}, where="lora")

    @property
    def raw_prompts(self) -> bool:
        """Whether rows are raw prompt/completion text rather than conversations for a chat template."""
        return False

    def config_defaults(self) -> dict[str, Any]:
        """alignsmith's defaults for the trl config, under the recipe's ``training:``."""
        return {}

    def trainer_config(self) -> Any:
        """The trl config (``SFTConfig``/``DPOConfig``) from ``training:``; unknown keys are a RecipeError."""
        import trl

        arguments = {"output_dir": str(self.run_dir), **self.config_defaults(), **self.training}
        return build(getattr(trl, self.trl_config), arguments, where="training")


PromptFormat = Literal["chat", "raw"]


@dataclass(kw_only=True)
class MultiturnSpec:
    """Clever Flamingo's multi-turn augmentation (alignsmith.multiturn): each training row becomes the first turn
    of a conversation padded with randomly drawn rows of the whole mixture, as instruct_flamingo's data.py does."""

    max_img: int = help_text("Image budget: drawing stops at the first draw that would reach it (the paper: 10 in "
                             "stages 1 and 3, 3 in stage 2).", minimum=1)
    max_tokens: int | None = help_text("Token budget the conversation is truncated to after drawing (images count "
                                       "as the tokens they expand to); default: training.max_length.",
                                       default=None, minimum=1)
    max_draws: int = help_text("Most draws per conversation (32 in instruct_flamingo's scripts).", default=32,
                               minimum=0)
    truncate: Literal["turns", "reference"] = help_text(
        "turns: drop whole trailing turns that do not fit; reference: cut the last one's response mid-way, as "
        "instruct_flamingo does.", default="turns")
    seed: int = help_text("Seed of the draws (per row: the same row draws the same turns whatever the order).",
                          default=0)


@dataclass(kw_only=True)
class SFTRecipe(TrainRecipe):
    """Supervised fine-tuning on conversations (assistant-only loss by default), or on raw prompt/completion text."""

    kind: ClassVar[Literal["sft", "dpo"]] = "sft"
    trl_config: ClassVar[str] = "SFTConfig"
    trl_trainer: ClassVar[str] = "SFTTrainer"
    record_kind: ClassVar[RecordKind] = "conversation"

    prompt_format: PromptFormat = help_text(
        "chat: conversations rendered by the chat template, loss on the assistant turns. raw: single-turn "
        "records whose user turn is the prompt text as is and whose assistant turn is the completion (EOS "
        "appended), no chat template, loss on the completion only; for prompt/completion data with its own "
        "layout, such as a Polite Flamingo rewriter's pairs.",
        default="chat",
    )
    multiturn: MultiturnSpec | None = help_text(
        "Pad each training row with random rows of the mixture as later turns (chat rows of one user and one "
        "assistant turn); unset: rows as they are.", default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.multiturn is not None:
            if self.raw_prompts:
                raise RecipeError("multiturn: applies to chat conversations, not to prompt_format: raw")
            if self.multiturn.max_tokens is None and self.training.get("max_length", 1024) is None:
                raise RecipeError("multiturn.max_tokens: needed when training.max_length is null")
        if self.raw_prompts:
            if self.training.get("assistant_only_loss"):
                raise RecipeError("training.assistant_only_loss: raw prompts have no assistant turns to mark; "
                                  "prompt_format: raw trains on the completion only")
            if self.chat_template.template is not None or self.chat_template.template_file is not None:
                raise RecipeError("chat_template: prompt_format: raw uses no chat template; leave only eos_token")

    @property
    def raw_prompts(self) -> bool:
        return self.prompt_format == "raw"

    def multiturn_budget(self, default_max_length: int | None) -> Any:
        """The multi-turn augmentation to apply, with its token budget resolved; None without one."""
        from training.data import Multiturn

        spec = self.multiturn
        if spec is None:
            return None
        max_tokens = spec.max_tokens or self.training.get("max_length", default_max_length)
        return Multiturn(spec.max_img, max_tokens, spec.max_draws, spec.truncate, spec.seed)

    def config_defaults(self) -> dict[str, Any]:
        if self.raw_prompts:
            return {"assistant_only_loss": False, "completion_only_loss": True}
        return {"assistant_only_loss": True}


@dataclass(kw_only=True)
class DPORecipe(TrainRecipe):
    """Direct preference optimisation on prompt/chosen/rejected pairs."""

    kind: ClassVar[Literal["sft", "dpo"]] = "dpo"
    trl_config: ClassVar[str] = "DPOConfig"
    trl_trainer: ClassVar[str] = "DPOTrainer"
    record_kind: ClassVar[RecordKind] = "preference"


STAGE_RECIPES: dict[str, type[TrainRecipe]] = {"sft": SFTRecipe, "dpo": DPORecipe}


@dataclass(kw_only=True)
class PipelineRecipe(HubRecipe):
    """Stages run in order; each stage starts from the exact commit the previous one published.

    A stage is a mapping with ``kind`` (sft or dpo) plus the keys of that kind's recipe, except
    ``hub``/``hub_root`` (shared) and ``base_model`` (the pipeline's for the first stage, the previous
    stage's release after that). ``defaults`` is merged into every stage first (nested mappings merge
    key by key).
    """

    base_model: BaseModelSpec = help_text("Model the first stage starts from.")
    defaults: dict[str, Any] = help_text("Keys merged into every stage (e.g. training.use_cpu).", default_factory=dict)
    stages: list[dict[str, Any]] = help_text("The stages, in order: each {kind: sft|dpo, ...recipe keys}.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.stages:
            raise RecipeError("stages: at least one stage is required")
        self.stage_recipes()  # every stage is checked when the recipe loads, not when its turn comes

    def stage_recipes(self) -> list[TrainRecipe]:
        """Each stage as its own recipe; stage N>1 starts from stage N-1's output repo at its tag.

        The runner pins that to the commit sha stage N-1 actually published before stage N starts.
        """
        recipes: list[TrainRecipe] = []
        released: dict[tuple[str, str], int] = {}  # (repo id, tag) -> the stage that publishes it
        for index, raw in enumerate(self.stages):
            where = f"stages[{index}]"
            if not isinstance(raw, dict) or raw.get("kind") not in STAGE_RECIPES:
                raise RecipeError(f"{where}: each stage needs kind: {' or '.join(STAGE_RECIPES)}")
            stage = _deep_merge(self.defaults, {k: v for k, v in raw.items() if k != "kind"})
            for key in ("hub", "hub_root", "base_model"):
                if key in stage:
                    origin = where if key in raw else "defaults"
                    raise RecipeError(f"{origin}.{key}: set by the pipeline, not per stage")
            stage["hub"], stage["hub_root"] = self.hub, self.hub_root
            if index == 0:
                stage["base_model"] = dataclasses.asdict(self.base_model)
            else:
                previous = recipes[-1].output
                stage["base_model"] = {
                    **dataclasses.asdict(self.base_model),
                    "path": previous.repo_id,
                    "revision": previous.tag or previous.branch,
                }
            recipe = build(STAGE_RECIPES[raw["kind"]], stage, where=where)
            if index and _unmerged_lora(recipes[-1]) and _unmerged_lora(recipe):
                raise RecipeError(
                    f"{where}: a LoRA stage after an unmerged LoRA stage would train an adapter on a merge that is "
                    f"published nowhere: set output.merged: true on stages[{index - 1}] or on this stage"
                )
            if recipe.output.tag is not None:  # the later stage would find the tag taken by another recipe
                other = released.setdefault((recipe.output.repo_id, recipe.output.tag), index)
                if other != index:
                    raise RecipeError(
                        f"{where}.output.tag: stages[{other}] already publishes {recipe.output.repo_id} at "
                        f"{recipe.output.tag!r}; give each stage its own repo or tag"
                    )
            recipes.append(recipe)
        return recipes


def _check_keys(config_name: str, training: dict[str, Any]) -> None:
    import trl

    known = {f.name for f in dataclasses.fields(getattr(trl, config_name)) if f.init}
    for key in training:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"training.{key}: not an argument of trl's {config_name}{hint}")


def _check_trackers(report_to: str | list[str]) -> None:
    """Refuse an unknown or uninstalled ``training.report_to`` tracker when the recipe loads.

    transformers would otherwise fail inside ``Trainer.__init__``, after the data and model loaded.
    """
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    requested = [report_to] if isinstance(report_to, str) else list(report_to)
    if requested in (["none"], ["all"]):
        return
    for name in requested:
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(
                f"training.report_to: unknown tracker {name!r}; expected none, all or one of "
                f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
            )
    available = get_available_reporting_integrations()
    missing = [name for name in requested if name not in available]
    if missing:
        raise RecipeError(
            f"training.report_to: {', '.join(missing)} not installed (or not configured) in this environment; "
            f"install it, or set report_to: none"
        )


def _unmerged_lora(recipe: TrainRecipe) -> bool:
    return recipe.lora is not None and not recipe.output.merged


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
