"""The model a run starts from, pinned to a commit, and which of its parameters train.

A base may be a full model or a LoRA adapter (a previous stage's release); an adapter is merged
into its own base on load, so every stage trains plain weights and the lineage records both the
adapter and the base under it. A vision-language base (an image-text-to-text architecture) loads
with ``AutoModelForImageTextToText`` and its processor, which trl then uses to read the images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from alignsmith.lineage import ArtifactRef, load_revision
from alignsmith.models.loading import ModelLoadError, is_adapter, is_vision_language, pinned
from alignsmith.recipes import RecipeError

from training.recipes import BaseModelSpec

log = logging.getLogger(__name__)



@dataclass
class BaseModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # PreTrainedTokenizerBase
    ref: ArtifactRef  # what the recipe named, pinned
    was_adapter: bool  # a LoRA adapter merged into its base on load
    card_base_model: str | None  # Hub id for the card's `base_model` (None for a local folder)
    ancestors: list[ArtifactRef] = field(default_factory=list)  # the adapter's own base, when merged
    processor: Any | None = None  # a vision-language model's processor (its tokenizer is `tokenizer`)

    @property
    def processing_class(self) -> Any:
        """What trl reads the data with: the processor of a vision-language model, else the tokenizer."""
        return self.processor if self.processor is not None else self.tokenizer


@dataclass(frozen=True)
class PinnedBase:
    """The base pinned, with what decides how it loads; cheap (config files only), so known before the data loads."""

    ref: ArtifactRef
    adapter_base: ArtifactRef | None  # for a LoRA adapter: the base it is merged into, pinned
    vision: bool  # an image-text-to-text model (an adapter: its base's architecture)

    @property
    def was_adapter(self) -> bool:
        return self.adapter_base is not None


def pin_base_model(ref: BaseModelSpec) -> PinnedBase:
    artifact = pinned(ref.path, ref.revision, "base_model")
    adapter_base = _adapter_base(artifact) if is_adapter(artifact) else None
    return PinnedBase(artifact, adapter_base, is_vision_language(adapter_base or artifact))


def load_base_model(ref: BaseModelSpec, base: PinnedBase | None = None) -> BaseModel:
    """Load the pinned base (merging a LoRA adapter into its base) and its tokenizer (and processor)."""
    from transformers import AutoProcessor, AutoTokenizer

    base = base or pin_base_model(ref)
    artifact, revision = base.ref, load_revision(base.ref)
    try:
        model, ancestors = _load_weights(ref, base)
        processor = AutoProcessor.from_pretrained(artifact.repo_id, revision=revision) if base.vision else None
        tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(
            artifact.repo_id, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"base_model {ref.path!r} @ {artifact.sha}: cannot load: {err}") from None
    card_base = ref.path if artifact.repo_type == "model" else None
    return BaseModel(model, tokenizer, artifact, base.was_adapter, card_base, ancestors, processor)


def load_reference_model(ref: BaseModelSpec, base: BaseModel) -> Any:
    """A frozen second copy of the weights ``base`` starts from, read from the same pinned commits.

    Full-parameter DPO measures the policy against this. Left to itself, trl reloads the reference
    from ``config._name_or_path`` at the Hub's main revision: neither the pinned commit nor, for a
    merged adapter, the merge.
    """
    adapter_base = base.ancestors[0] if base.was_adapter else None
    model, _ = _load_weights(ref, PinnedBase(base.ref, adapter_base, base.processor is not None))  # the files `base` was just loaded from
    return model.eval().requires_grad_(False)


def _auto_class(vision: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if vision else AutoModelForCausalLM


def _load_weights(ref: BaseModelSpec, base: PinnedBase) -> tuple[Any, list[ArtifactRef]]:
    """The pinned weights in the recipe's dtype, and the adapter's own base when an adapter was merged."""
    import torch

    load_kwargs = {"dtype": getattr(torch, ref.dtype), "attn_implementation": ref.attn_implementation}
    auto_class, artifact = _auto_class(base.vision), base.ref
    if base.adapter_base is not None:
        return _merged_adapter(artifact, base.adapter_base, auto_class, load_kwargs), [base.adapter_base]
    return auto_class.from_pretrained(artifact.repo_id, revision=load_revision(artifact), **load_kwargs), []


def _adapter_base(adapter: ArtifactRef) -> ArtifactRef:
    """The base model a LoRA adapter names in its config, pinned."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(adapter.repo_id, revision=load_revision(adapter))
    return pinned(config.base_model_name_or_path, config.revision, "adapter_base")


def _merged_adapter(adapter: ArtifactRef, base_ref: ArtifactRef, auto_class: Any, load_kwargs: dict[str, Any]) -> Any:
    from peft import PeftModel

    location, revision = adapter.repo_id, load_revision(adapter)
    base = auto_class.from_pretrained(base_ref.repo_id, revision=load_revision(base_ref), **load_kwargs)
    log.info("merging LoRA adapter %s into its base %s@%s", location, base_ref.repo_id, base_ref.sha)
    merged = PeftModel.from_pretrained(base, location, revision=revision).merge_and_unload()
    merged.requires_grad_(True)  # peft froze the base weights while the adapter was attached
    # the merged weights are what this run starts from; the card points at the adapter release
    merged.name_or_path = location
    return merged


def freeze_except(model: Any, substrings: list[str]) -> int:
    """Train only parameters whose names contain one of ``substrings``; return how many elements train."""
    matched = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad = any(s in name for s in substrings)
        matched += parameter.numel() if parameter.requires_grad else 0
    if matched == 0:
        example = next(name for name, _ in model.named_parameters())
        raise RecipeError(
            f"unfrozen: no parameter name contains any of {substrings} (names look like {example!r})"
        )
    # with the embeddings frozen, checkpointed blocks would see inputs without grad and skip backward
    model.enable_input_require_grads()
    return matched


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter elements."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total
