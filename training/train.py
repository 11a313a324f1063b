"""One SFT or DPO run: check everything, train (resuming a killed run), evaluate, publish once.

Everything that can be wrong with a recipe (unknown trl keys, a taken release tag, a missing
dataset revision, rows that are not valid records, a chat template that does not mark the
assistant) is checked before the first step. Under ``accelerate launch`` every process trains;
only the main process saves the release and publishes it, then tells the others what it published.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from alignsmith.publish import Release, ensure_tag_free
from alignsmith.recipes import RESOLVED_RECIPE_FILENAME, RecipeError, save_resolved, to_dict

from training.chat import prepare_chat
from training.data import TrainingData, load_mixture
from training.models import BaseModel, count_parameters, freeze_except, load_base_model, load_reference_model
from training.publish import TrainingSummary, publish_model
from training.recipes import TrainRecipe

log = logging.getLogger(__name__)

# recipe sections that define what a checkpoint is a checkpoint *of*; the rest (steps, lr...) may change on resume
_RUN_IDENTITY = ("base_model", "data", "chat_template", "lora", "unfrozen")


@dataclass
class TrainingResult:
    release: Release
    metrics: dict[str, float]
    resumed_from_step: int | None


def run(recipe: TrainRecipe) -> Release:
    """Entry point for ``alignsmith train sft|dpo``."""
    return train(recipe).release


def train(recipe: TrainRecipe, *, callbacks: Iterable[Any] = ()) -> TrainingResult:
    """Train as ``recipe`` says and publish the model; ``callbacks`` are extra ``TrainerCallback``s."""
    import trl

    args = recipe.trainer_config()
    peft_config = recipe.lora_config()
    if recipe.output.merged and args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3:
        raise RecipeError(
            "output.merged is not supported under DeepSpeed ZeRO-3 (weights are sharded): use zero2 or ddp"
        )
    ensure_tag_free(recipe.output.repo_id, "model", recipe.output.tag)
    with args.main_process_first(desc="loading the training data and base model"):
        data = load_mixture(recipe.data, recipe.record_kind)
        base = load_base_model(recipe.base_model)
    if base.was_adapter and peft_config is not None and not recipe.output.merged:
        raise RecipeError(
            f"base_model {recipe.base_model.path!r} is a LoRA adapter, merged before training; a new adapter on "
            "top of that merge has no published base to load from: set output.merged: true"
        )
    template_origin = prepare_chat(
        base.tokenizer,
        base.model,
        recipe.chat_template.supplied(),
        recipe.chat_template.eos_token,
        need_markers=getattr(args, "assistant_only_loss", False),
    )
    if peft_config is not None and base.ref.repo_type == "model":
        peft_config.revision = base.ref.sha  # the adapter's config then pins the exact base it was trained on
    reference: dict[str, Any] = {}
    # with LoRA the reference is the base with the adapter off; precomputed reference log-probs come from the
    # policy before its first step
    if recipe.kind == "dpo" and peft_config is None and not args.precompute_ref_log_probs:
        reference["ref_model"] = load_reference_model(recipe.base_model, base)
    if recipe.unfrozen:
        freeze_except(base.model, recipe.unfrozen)
    resume_from = _checkpoint_to_resume(recipe, args)
    if args.should_save:
        save_resolved(recipe, recipe.run_dir)

    trainer = getattr(trl, recipe.trl_trainer)(
        model=base.model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=base.tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
        **reference,
    )
    trainable, total = count_parameters(trainer.model)
    resumed_step = _global_step(resume_from) if resume_from else None
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, resumed_step)
    output = trainer.train(resume_from_checkpoint=resume_from)
    metrics = _metrics(trainer, output)
    if data.eval is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})

    release_dir = recipe.run_dir / "release"
    summary = TrainingSummary(
        metrics=metrics,
        trainable_parameters=trainable,
        total_parameters=total,
        world_size=args.world_size,
        template_origin=template_origin,
        resumed_from_step=resumed_step,
        trainer_args=args,
    )
    release = _save_and_publish(trainer, recipe, release_dir, base, data, summary)
    return TrainingResult(release, metrics, resumed_step)


def _checkpoint_to_resume(recipe: TrainRecipe, args: Any) -> str | None:
    """The newest checkpoint in the run folder, if it belongs to this run; stale ones go when resume is off."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = recipe.run_dir
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if last is None:
        return None
    if not recipe.resume:
        if args.should_save:
            log.info("resume is off: removing old checkpoints in %s", folder)
            for checkpoint in folder.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
        return None
    saved_path = folder / RESOLVED_RECIPE_FILENAME
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else {}
    current = to_dict(recipe)
    changed = [key for key in _RUN_IDENTITY if saved.get(key) != current[key]]
    if changed:
        raise RecipeError(
            f"output_dir {folder} holds checkpoints of a different run ({', '.join(changed)} changed): "
            "choose another output_dir, or set resume: false to start over"
        )
    return last


def _global_step(checkpoint: str) -> int:
    from transformers import TrainerState

    return TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json")).global_step


def _metrics(trainer: Any, output: Any) -> dict[str, float]:
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    metrics = {
        "train_loss": float(output.training_loss),
        "train_runtime": float(output.metrics["train_runtime"]),
        "global_step": float(trainer.state.global_step),
        "epoch": float(trainer.state.epoch or 0.0),
    }
    if history:
        metrics["final_train_loss"] = float(history[-1]["loss"])
        metrics["first_train_loss"] = float(history[0]["loss"])
        if "num_tokens" in history[-1]:
            metrics["train_tokens"] = float(history[-1]["num_tokens"])
    return metrics


def _save_and_publish(
    trainer: Any, recipe: TrainRecipe, release_dir: Path, base: BaseModel, data: TrainingData, summary: TrainingSummary
) -> Release:
    """Save the release folder and publish it from the main process; every process gets the Release."""
    from accelerate.utils import broadcast_object_list
    from transformers.trainer import TRAINING_ARGS_NAME

    if release_dir.exists() and trainer.args.should_save:
        shutil.rmtree(release_dir)  # a previous attempt's files must not leak into this release
    trainer.accelerator.wait_for_everyone()
    adapter_dir = release_dir / "adapter" if recipe.output.merged else release_dir
    trainer.save_model(str(adapter_dir))  # collective under FSDP/DeepSpeed; writes on the main process only
    outcome: list[Any] = [None]
    if trainer.args.should_save:
        # a pickle of the trl config: the release carries the resolved recipe instead
        (adapter_dir / TRAINING_ARGS_NAME).unlink(missing_ok=True)
        try:
            if recipe.output.merged:
                _save_merged(trainer, release_dir)
            outcome = [publish_model(recipe, release_dir, base, data, summary)]
        except Exception as err:  # handed to the other processes so none waits forever
            outcome = [err]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(outcome, from_process=0)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def _save_merged(trainer: Any, release_dir: Path) -> None:
    """Merged full weights at the release root, next to the adapter under ``adapter/``."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(release_dir))
    trainer.processing_class.save_pretrained(str(release_dir))

