"""The model a run starts from, pinned to a commit, and which of its parameters train.

A base may be a full model or a LoRA adapter (a previous stage's release); an adapter is merged
into its own base on load, so every stage trains plain weights and the lineage records both the
adapter and the base under it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from alignsmith.lineage import ArtifactRef, load_revision
from alignsmith.models.loading import ModelLoadError, is_adapter, pinned
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


def load_base_model(ref: BaseModelSpec) -> BaseModel:
    """Load the pinned base (merging a LoRA adapter into its base) and its tokenizer."""
    from transformers import AutoTokenizer

    artifact = pinned(ref.path, ref.revision, "base_model")
    was_adapter = is_adapter(artifact)
    try:
        model, ancestors = _load_weights(ref, artifact, was_adapter)
        tokenizer = AutoTokenizer.from_pretrained(artifact.repo_id, revision=load_revision(artifact))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"base_model {ref.path!r} @ {artifact.sha}: cannot load: {err}") from None
    card_base = ref.path if artifact.repo_type == "model" else None
    return BaseModel(model, tokenizer, artifact, was_adapter, card_base, ancestors)


def load_reference_model(ref: BaseModelSpec, base: BaseModel) -> Any:
    """A frozen second copy of the weights ``base`` starts from, read from the same pinned commits.

    Full-parameter DPO measures the policy against this. Left to itself, trl reloads the reference
    from ``config._name_or_path`` at the Hub's main revision: neither the pinned commit nor, for a
    merged adapter, the merge.
    """
    model, _ = _load_weights(ref, base.ref, base.was_adapter)  # the files `base` was just loaded from
    return model.eval().requires_grad_(False)


def _load_weights(ref: BaseModelSpec, artifact: ArtifactRef, is_adapter: bool) -> tuple[Any, list[ArtifactRef]]:
    """The pinned weights in the recipe's dtype, and the adapter's own base when an adapter was merged."""
    import torch
    from transformers import AutoModelForCausalLM

    load_kwargs = {"dtype": getattr(torch, ref.dtype), "attn_implementation": ref.attn_implementation}
    if is_adapter:
        model, adapter_base = _merged_adapter(artifact.repo_id, load_revision(artifact), load_kwargs)
        return model, [adapter_base]
    return AutoModelForCausalLM.from_pretrained(artifact.repo_id, revision=load_revision(artifact), **load_kwargs), []



def _merged_adapter(location: str, revision: str | None, load_kwargs: dict[str, Any]) -> tuple[Any, ArtifactRef]:
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    config = PeftConfig.from_pretrained(location, revision=revision)
    base_ref = pinned(config.base_model_name_or_path, config.revision, "adapter_base")
    base = AutoModelForCausalLM.from_pretrained(base_ref.repo_id, revision=load_revision(base_ref), **load_kwargs)
    log.info("merging LoRA adapter %s into its base %s@%s", location, base_ref.repo_id, base_ref.sha)
    merged = PeftModel.from_pretrained(base, location, revision=revision).merge_and_unload()
    merged.requires_grad_(True)  # peft froze the base weights while the adapter was attached
    # the merged weights are what this run starts from; the card points at the adapter release
    merged.name_or_path = location
    return merged, base_ref


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
