"""Model releases: the saved model folder plus a card that says exactly how it was made.

The card's metadata carries what the Hub and tools read (``base_model``, ``datasets``,
``library_name``, tags) and alignsmith's lineage (every dataset and model pinned to a commit, the
resolved recipe); the body says how to chat with the model and what the run measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignsmith.cards import CardContent, model_card
from alignsmith.lineage import Lineage
from alignsmith.publish import Release, publish_folder
from alignsmith.recipes import to_dict

from training.recipes import TrainRecipe

if TYPE_CHECKING:
    from training.data import TrainingData
    from training.models import BaseModel

_METHOD_NAMES = {"sft": "Supervised fine-tuning", "dpo": "Direct preference optimisation (DPO)"}
# trl arguments worth a line in the card; the full set is in the recipe
_CARD_ARGUMENTS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "packing",
    "assistant_only_loss",
    "beta",
    "loss_type",
    "seed",
)


@dataclass
class TrainingSummary:
    """What a run measured and decided, beyond the recipe."""

    metrics: dict[str, float]
    trainable_parameters: int
    total_parameters: int
    world_size: int
    template_origin: str
    resumed_from_step: int | None
    trainer_args: Any  # the SFTConfig/DPOConfig the run used


def publish_model(
    recipe: TrainRecipe, folder: Path, base: BaseModel, data: TrainingData, summary: TrainingSummary
) -> Release:
    """Publish ``folder`` (adapter, or full weights) as one tagged commit with its card."""
    lora = recipe.lora is not None
    library = "peft" if lora and not recipe.output.merged else "transformers"
    lineage = Lineage(
        command=f"train {recipe.kind}",
        recipe=to_dict(recipe),
        inputs=list(data.inputs),
        models=[base.ref, *base.ancestors],
    )
    metadata: dict[str, Any] = {"training_metrics": {k: float(f"{v:.6g}") for k, v in summary.metrics.items()}}
    if base.card_base_model is not None:
        metadata["base_model_relation"] = "adapter" if library == "peft" else "finetune"
    content = CardContent(
        title=recipe.output.repo_id.split("/")[-1],
        summary=_summary(recipe, base, data),
        license=recipe.output.license,
        tags=["trl", recipe.kind, *(["lora"] if lora else [])],
        statistics=_statistics(summary, data),
        extra_sections={"Training": _training_section(recipe, summary),
                        "Chat": _chat_section(adapter_only=library == "peft")},
        metadata=metadata,
    )
    revision_hint = recipe.output.tag or recipe.output.branch
    card = model_card(
        recipe.output.repo_id,
        content,
        lineage,
        base_model=base.card_base_model,
        library_name=library,
        revision_hint=revision_hint,
    )
    return publish_folder(recipe.output, folder, card, lineage)


def _summary(recipe: TrainRecipe, base: BaseModel, data: TrainingData) -> str:
    method = _METHOD_NAMES[recipe.kind]
    if recipe.lora is not None:
        method += " with a LoRA adapter"
        if recipe.output.merged:
            method += " (merged into the weights; the adapter is in `adapter/`)"
    elif recipe.unfrozen:
        method += f" of the parameters matching {', '.join(f'`{s}`' for s in recipe.unfrozen)} (the rest frozen)"
    start = f"`{base.ref.repo_id}` @ `{base.ref.sha}`"
    if base.was_adapter:
        start += " (a LoRA adapter, merged into its base before training)"
    datasets = "\n".join(f"- {part.description}: {part.used} of {part.available} rows" for part in data.parts)
    return f"{method} of {start} on:\n\n{datasets}"


def _statistics(summary: TrainingSummary, data: TrainingData) -> dict[str, Any]:
    stats: dict[str, Any] = {"training rows": len(data.train)}
    if data.eval is not None:
        stats["evaluation rows (seeded split)"] = len(data.eval)
    stats |= {name: f"{value:.4g}" for name, value in summary.metrics.items()}
    stats["trainable parameters"] = f"{summary.trainable_parameters:,} of {summary.total_parameters:,}"
    stats["processes"] = summary.world_size
    if summary.resumed_from_step is not None:
        stats["resumed from step"] = summary.resumed_from_step
    return stats


def _training_section(recipe: TrainRecipe, summary: TrainingSummary) -> str:
    args = summary.trainer_args
    shown = [n for n in _CARD_ARGUMENTS if hasattr(args, n) and not (n == "num_train_epochs" and args.max_steps > 0)]
    rows = [f"| {name} | `{_plain(getattr(args, name))}` |" for name in shown]
    if recipe.lora is not None:
        rows += [f"| lora.{key} | `{value}` |" for key, value in recipe.lora.items()]
    rows.append(f"| dtype | `{recipe.base_model.dtype}` |")
    rows.append(f"| chat template | {summary.template_origin} |")
    table = "\n".join(rows)
    return (
        f"Trained with trl's `{recipe.trl_trainer}`; the complete recipe is `alignsmith_recipe.yaml`.\n\n"
        f"| argument | value |\n|---|---|\n{table}"
    )


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _chat_section(adapter_only: bool) -> str:
    """How to chat with the release; an unmerged adapter has no generation config of its own."""
    if adapter_only:
        stopping = (
            "The tokenizer carries the chat template the model was trained with. An adapter has no generation "
            "config of its own (loaders use the base model's), so pass the end-of-turn token explicitly:"
        )
        stop_kwarg = ", eos_token_id=tokenizer.eos_token_id"
    else:
        stopping = (
            "The tokenizer carries the chat template the model was trained with, and the generation config "
            "stops at the end of the assistant's turn."
        )
        stop_kwarg = ""
    return (
        f"{stopping} With `model` and `tokenizer` loaded as above:\n\n"
        '```python\nmessages = [{"role": "user", "content": "Hello!"}]\n'
        "inputs = tokenizer.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n'
        ")\n"
        f"output = model.generate(**inputs, max_new_tokens=256{stop_kwarg})\n"
        'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n```'
    )
