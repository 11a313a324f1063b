"""One SFT or DPO run: check everything, train (resuming a killed run), evaluate, publish once.

Everything that can be wrong with a recipe (unknown trl keys, a taken release tag, a missing
dataset revision, rows that are not valid records, a chat template that does not mark the
assistant) is checked before the first step. Under ``accelerate launch`` every process trains;
only the main process saves the release and publishes it, then tells the others what it published.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from transformers import TrainerCallback

from alignsmith.publish import Release, ensure_tag_free
from alignsmith.recipes import RESOLVED_RECIPE_FILENAME, RecipeError, save_resolved, to_dict
from alignsmith.records import IMAGE_PLACEHOLDER

from training.chat import prepare_chat, prepare_raw
from training.data import TrainingData, for_model, load_mixture, tokens_per_image
from training.models import (
    BaseModel,
    count_parameters,
    freeze_except,
    load_base_model,
    load_reference_model,
    pin_base_model,
)
from training.publish import DPO_REWARDS, TrainingSummary, publish_model
from training.recipes import SFTRecipe, TrainRecipe

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
# what a checkpoint needs to resume from -> the files that provide it (optimizer: DDP, FSDP, DeepSpeed)
_CHECKPOINT_FILES = {
    TRAINER_STATE: (TRAINER_STATE,),
    "model weights": ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"),
    "optimizer state": ("optimizer.pt", "optimizer.bin", "latest"),
}
# recipe keys (dotted prefixes) that do not change the trained weights: where they are read from and
# published to, how the run is logged, saved, evaluated or loaded; everything else must match to resume
_NOT_WEIGHTS = ("hub", "output", "resume", "base_model.attn_implementation")  # also hub_root, output_dir
_NOT_WEIGHTS_TRAINING = tuple(
    f"training.{key}"
    for key in ("logging_", "save_", "eval_", "per_device_eval_batch_size", "report_to", "run_name", "project",
                "trackio_", "disable_tqdm", "log_level", "log_on_each_node", "dataloader_")
)
_UNSET = "(unset)"


class CheckpointMismatchError(RecipeError):
    """A checkpoint in output_dir that this recipe must not resume: another recipe made it, or it is finished."""


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
    resume_from = _checkpoint_to_resume(recipe, args)
    if resume_from is not None:
        log.info("resuming from %s (step %d), the newest complete checkpoint", resume_from.path,
                 resume_from.global_step)
        if resume_from.global_step >= resume_from.max_steps:
            log.warning("%s already reached the last step: nothing left to train, publishing its weights",
                        resume_from.path)
    pinned_base = pin_base_model(recipe.base_model)
    if pinned_base.was_adapter and peft_config is not None and not recipe.output.merged:
        raise RecipeError(
            f"base_model {recipe.base_model.path!r} is a LoRA adapter, merged before training; a new adapter on "
            "top of that merge has no published base to load from: set output.merged: true"
        )
    if pinned_base.vision and recipe.kind != "sft":
        raise RecipeError(f"base_model {recipe.base_model.path!r} is a vision-language model: alignsmith trains "
                          f"those with SFT only, not {recipe.kind.upper()}")
    with args.main_process_first(desc="loading the training data and base model"):
        data = load_mixture(recipe.data, recipe.record_kind, prompt_format="raw" if recipe.raw_prompts else "chat",
                            vision=pinned_base.vision)
        base = load_base_model(recipe.base_model, pinned_base)
    if recipe.raw_prompts:
        template_origin = prepare_raw(base.tokenizer, base.model, recipe.chat_template.eos_token)
    else:
        template_origin = prepare_chat(
            base.tokenizer,
            base.model,
            recipe.chat_template.supplied(),
            recipe.chat_template.eos_token,
            need_markers=getattr(args, "assistant_only_loss", False),
            processor=base.processor,
        )
    image_token = getattr(base.processor, "image_token", IMAGE_PLACEHOLDER) if base.processor is not None else None
    multiturn = recipe.multiturn_budget(args.max_length) if isinstance(recipe, SFTRecipe) else None
    image_tokens = tokens_per_image(base.processor, image_token) if multiturn and image_token is not None else 1
    data = for_model(data, base.tokenizer, image_token, raw=recipe.raw_prompts, multiturn=multiturn,
                     image_tokens=image_tokens)
    if peft_config is not None and base.ref.repo_type == "model":
        peft_config.revision = base.ref.sha  # the adapter's config then pins the exact base it was trained on
    reference: dict[str, Any] = {}
    # with LoRA the reference is the base with the adapter off; precomputed reference log-probs come from the
    # policy before its first step
    if recipe.kind == "dpo" and peft_config is None and not args.precompute_ref_log_probs:
        reference["ref_model"] = load_reference_model(recipe.base_model, base)
    if recipe.unfrozen:
        freeze_except(base.model, recipe.unfrozen)
    if args.should_save:
        save_resolved(recipe, recipe.run_dir)

    trainer = getattr(trl, recipe.trl_trainer)(
        model=base.model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=base.processing_class,
        peft_config=peft_config,
        callbacks=[_RecordRecipe(recipe), *callbacks],
        **reference,
    )
    trainable, total = count_parameters(trainer.model)
    resumed_step = resume_from.global_step if resume_from else None
    output = trainer.train(resume_from_checkpoint=str(resume_from.path) if resume_from else None)
    metrics = _metrics(trainer, output)
    if data.eval is not None:
        # trl's eval_num_tokens counts the tokens seen by training and evaluation together: misleading in a card
        evaluated = {k: v for k, v in trainer.evaluate().items() if k != "eval_num_tokens"}
        metrics.update({k: float(v) for k, v in evaluated.items() if isinstance(v, (int, float))})

    release_dir = recipe.run_dir / "release"
    summary = TrainingSummary(
        metrics=metrics,
        trainable_parameters=trainable,
        total_parameters=total,
        world_size=args.world_size,
        template_origin=template_origin,
        resumed_from_step=resumed_step,
        trainer_args=args,
        log_history=list(trainer.state.log_history),
    )
    release = _save_and_publish(trainer, recipe, release_dir, base, data, summary)
    return TrainingResult(release, metrics, resumed_step)


@dataclass(frozen=True)
class _Checkpoint:
    path: Path
    global_step: int
    max_steps: int


def _checkpoint_to_resume(recipe: TrainRecipe, args: Any) -> _Checkpoint | None:
    """The newest complete checkpoint in the run folder, if this recipe may resume it.

    Stale checkpoints go when resume is off. Half-written ones (a run killed while saving) are skipped.
    """
    folder = recipe.run_dir
    checkpoints = sorted(folder.glob("checkpoint-*"), key=_step_of, reverse=True) if folder.is_dir() else []
    if not checkpoints:
        return None
    if not recipe.resume:
        if args.should_save:
            log.info("resume is off: removing old checkpoints in %s", folder)
            for checkpoint in checkpoints:
                shutil.rmtree(checkpoint)
        return None
    for path in checkpoints:
        checkpoint = _read_checkpoint(path)
        if isinstance(checkpoint, str):
            log.warning("skipping %s: incomplete (no %s), probably written by a killed run", path, checkpoint)
            continue
        _check_same_run(recipe, checkpoint)
        return checkpoint
    log.warning("no complete checkpoint in %s: training from the start", folder)
    return None


def _step_of(checkpoint: Path) -> int:
    suffix = checkpoint.name.removeprefix("checkpoint-")
    return int(suffix) if suffix.isdigit() else -1


def _read_checkpoint(path: Path) -> _Checkpoint | str:
    """The checkpoint, or what it lacks to resume from.

    trainer_state.json is written last, but a kill can cut it short, so it must also parse.
    """
    for name, candidates in _CHECKPOINT_FILES.items():
        if not any((path / candidate).exists() for candidate in candidates):
            return name
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        return _Checkpoint(path, state["global_step"], state["max_steps"])
    except (OSError, ValueError, KeyError):
        return f"readable {TRAINER_STATE}"


def _check_same_run(recipe: TrainRecipe, checkpoint: _Checkpoint) -> None:
    """Refuse a checkpoint made by a recipe that trains different weights, or one whose run already ended.

    The recipe is recorded in each checkpoint (older checkpoints: the run folder's copy).
    """
    recorded_path = checkpoint.path / RESOLVED_RECIPE_FILENAME
    if not recorded_path.is_file():
        recorded_path = recipe.run_dir / RESOLVED_RECIPE_FILENAME
    if not recorded_path.is_file():
        raise CheckpointMismatchError(
            f"{checkpoint.path} has no {RESOLVED_RECIPE_FILENAME}, so alignsmith cannot tell which recipe made it: "
            "choose another output_dir, or set resume: false to start over"
        )
    recorded = yaml.safe_load(recorded_path.read_text(encoding="utf-8"))
    current = to_dict(recipe)
    before, after = _weight_defining(recorded), _weight_defining(current)
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key, _UNSET) != after.get(key, _UNSET))
    if changed:
        differences = "; ".join(f"{key}: {before.get(key, _UNSET)!r} -> {after.get(key, _UNSET)!r}" for key in changed)
        raise CheckpointMismatchError(
            f"{checkpoint.path} was trained by a different recipe ({recorded_path}): {differences}. Resuming would "
            "publish weights this recipe did not train: choose another output_dir, or set resume: false to start over"
        )
    if checkpoint.global_step >= checkpoint.max_steps and recorded["output"] != current["output"]:
        raise CheckpointMismatchError(
            f"{checkpoint.path} already finished training (step {checkpoint.global_step} of {checkpoint.max_steps}) "
            f"for output {_describe_output(recorded['output'])}; this run would train nothing and publish the same "
            f"weights as {_describe_output(current['output'])}: choose another output_dir, or set resume: false "
            "to train again"
        )


def _describe_output(output: dict[str, Any]) -> str:
    return f"{output['repo_id']}@{output['tag'] or output['branch']}"


def _weight_defining(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's values that decide the trained weights, as ``dotted.key -> value``."""
    ignored = _NOT_WEIGHTS + _NOT_WEIGHTS_TRAINING
    return {key: value for key, value in _flatten(recipe).items() if not key.startswith(ignored)}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = [(f"{prefix}.{key}" if prefix else str(key), item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(f"{prefix}[{index}]", item) for index, item in enumerate(value)]
    else:
        return {prefix: value}
    return {key: leaf for name, item in items for key, leaf in _flatten(item, name).items()}


class _RecordRecipe(TrainerCallback):
    """Saves the resolved recipe into every checkpoint, so a resume can tell which recipe made it."""

    def __init__(self, recipe: TrainRecipe) -> None:
        self.recipe = recipe

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.should_save:
            save_resolved(self.recipe, Path(args.output_dir) / f"checkpoint-{state.global_step}")


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
    for key in DPO_REWARDS:  # the last logged value of each; absent for SFT
        logged = [entry[key] for entry in history if key in entry]
        if logged:
            metrics[key] = float(logged[-1])
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

