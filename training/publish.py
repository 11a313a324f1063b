"""Model releases: the saved model folder plus a card that says exactly how it was made.

The card's metadata carries what the Hub and tools read (``base_model``, ``datasets``,
``library_name``, tags) and alignsmith's lineage (every dataset and model pinned to a commit, the
resolved recipe); the body says how to chat with the model and what the run measured.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignsmith.cards import CardContent, Figure, line_plot, model_card
from alignsmith.lineage import Lineage, load_revision
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
# what DPOTrainer logs about the implicit reward; final values go in the statistics, curves in a figure
DPO_REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
# packages whose versions decide how the weights came out, listed in the card
FRAMEWORKS = ("transformers", "trl", "peft", "torch", "datasets")
# license fields a derived model inherits from its base model's card
_LICENSE_KEYS = ("license", "license_name", "license_link")


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
    log_history: list[dict[str, Any]] = field(default_factory=list)  # the trainer's state.log_history


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
    inherited = {} if recipe.output.license else _base_license(base)
    vision = base.processor is not None
    usage_title, usage = _usage_section(recipe, adapter_only=library == "peft", vision=vision)
    content = CardContent(
        title=recipe.output.repo_id.split("/")[-1],
        summary=_summary(recipe, base, data),
        license=recipe.output.license or inherited.pop("license", None),
        tags=["trl", recipe.kind, *(["lora"] if lora else [])],
        statistics=_statistics(summary, data),
        figures=_figures(summary.log_history),
        extra_sections={"Training": _training_section(recipe, summary),
                        usage_title: usage,
                        "Framework versions": _framework_versions()},
        metadata=metadata | inherited,
    )
    revision_hint = recipe.output.tag or recipe.output.branch
    card = model_card(
        recipe.output.repo_id,
        content,
        lineage,
        base_model=base.card_base_model,
        library_name=library,
        revision_hint=revision_hint,
        pipeline_tag="image-text-to-text" if vision else "text-generation",
    )
    return publish_folder(recipe.output, folder, card, lineage, figures=content.figures)


def _base_license(base: BaseModel) -> dict[str, str]:
    """The license fields of the base model's card, which a model trained from it inherits; none if it has none."""
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    revision = load_revision(base.ref)
    if revision is None:  # a local folder
        readme = Path(base.ref.repo_id) / "README.md"
    else:
        try:
            readme = Path(hf_hub_download(base.ref.repo_id, "README.md", revision=revision))
        except EntryNotFoundError:
            return {}
    if not readme.is_file():
        return {}
    fields = ModelCard.load(readme).data.to_dict()
    return {key: fields[key] for key in _LICENSE_KEYS if isinstance(fields.get(key), str)}


def _figures(log_history: list[dict[str, Any]]) -> list[Figure]:
    """The training loss (and evaluation loss) by step; for DPO also the implicit rewards and their accuracy."""
    plots = (
        ("Loss", "loss", {"training": "loss", "evaluation": "eval_loss"}, "loss.png"),
        ("DPO implicit rewards", "reward", {key: key for key in DPO_REWARDS[:3]}, "rewards.png"),
        ("DPO reward accuracy", "accuracy", {"rewards/accuracies": "rewards/accuracies"}, "reward_accuracy.png"),
    )
    figures = []
    for title, ylabel, keys, filename in plots:
        series = {label: _curve(log_history, key) for label, key in keys.items()}
        series = {label: curve for label, curve in series.items() if curve[0]}
        if series:
            figures.append(line_plot(series, title, "step", ylabel, filename))
    return figures


def _curve(log_history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    return [float(x) for x, _ in points], [float(y) for _, y in points]


def _framework_versions() -> str:
    """Versions of the libraries that trained the model: a rerun with others may not give the same weights."""
    return "\n".join(f"- {package}: {importlib.metadata.version(package)}" for package in FRAMEWORKS)


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


def _usage_section(recipe: TrainRecipe, adapter_only: bool, vision: bool) -> tuple[str, str]:
    """(title, text): how to prompt the release: its chat template, or the raw layout it was trained on."""
    if recipe.raw_prompts:
        reader = "processor" if vision else "tokenizer"
        call = 'processor(images=images, text=prompt, return_tensors="pt")' if vision else \
            'tokenizer(prompt, return_tensors="pt")'
        text = (
            "Trained on raw prompt/completion text, without a chat template: the loss covered the completion "
            "(ending with EOS) only. Give it a prompt laid out exactly like the `prompt` column of its training data"
            + (" (the processor's image token where each image goes)" if vision else "")
            + f", and it writes the completion. With `model` and `{reader}` loaded as above:\n\n"
            f"```python\ninputs = {call}\n"
            f"output = model.generate(**inputs, max_new_tokens=256, eos_token_id={reader}"
            f"{'.tokenizer' if vision else ''}.eos_token_id)\n"
            f'print({reader}.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n```'
        )
        return "Prompting", text
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
    if vision:
        stopping = stopping.replace("The tokenizer carries", "The processor carries").replace(
            "tokenizer.eos_token_id", "processor.tokenizer.eos_token_id")
        stop_kwarg = stop_kwarg.replace("tokenizer.", "processor.tokenizer.")
        messages = ('messages = [{"role": "user", "content": [{"type": "image", "image": image}, '
                    '{"type": "text", "text": "Describe the image."}]}]')
        reader = "processor"
    else:
        messages = 'messages = [{"role": "user", "content": "Hello!"}]'
        reader = "tokenizer"
    text = (
        f"{stopping} With `model` and `{reader}` loaded as above:\n\n"
        f"```python\n{messages}\n"
        f"inputs = {reader}.apply_chat_template(\n"
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True\n'
        ")\n"
        f"output = model.generate(**inputs, max_new_tokens=256{stop_kwarg})\n"
        f'print({reader}.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n```'
    )
    return "Chat", text
