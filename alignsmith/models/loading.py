"""Loading a pinned model for inference: device, dtype, eval mode, and errors that name the model.

Every stage that runs a model (scorers, embedders, judges, rewriters) pins it first with
:func:`alignsmith.lineage.pin` and loads it here by that sha, so what ran is what lineage records.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef, load_revision, pin

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


ADAPTER_CONFIG = "adapter_config.json"  # what makes a model folder or repo a PEFT adapter


class ModelLoadError(AlignsmithError):
    """A model or tokenizer that cannot be found or loaded; the message names it and its revision."""


class PinnedModel:
    """What every model-running component exposes about its weights: the model it runs, pinned."""

    model_ref: ArtifactRef

    @property
    def model_sha(self) -> str | None:
        """The Hub commit the weights were loaded at (None for a local folder or a model handed in)."""
        return load_revision(self.model_ref)

    @property
    def model_revision(self) -> str | None:
        """The branch, tag or sha that was asked for."""
        return self.model_ref.revision


def pinned(model: str | ArtifactRef, revision: str | None, role: str) -> ArtifactRef:
    """``model`` as pinned lineage: an already pinned ref as it is, else pinned now (as a model load error)."""
    if isinstance(model, ArtifactRef):
        return model
    try:
        return pin(role, model, "model", revision)
    except AlignsmithError as err:
        raise ModelLoadError(str(err)) from None


def has_file(ref: ArtifactRef, filename: str) -> bool:
    """Whether the pinned model folder or commit holds ``filename``."""
    if ref.repo_type == "local":
        return (Path(ref.repo_id) / filename).is_file()
    from huggingface_hub import HfApi

    return HfApi().file_exists(ref.repo_id, filename, revision=load_revision(ref))


def is_adapter(ref: ArtifactRef) -> bool:
    """Whether the pinned model is a PEFT adapter (to be loaded onto its own base)."""
    return has_file(ref, ADAPTER_CONFIG)


def is_vision_language(ref: ArtifactRef) -> bool:
    """Whether the pinned model (not an adapter: pass its base) reads images: an image-text-to-text architecture.

    Such models load with ``AutoModelForImageTextToText`` and a processor instead of a causal LM and a tokenizer.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(ref.repo_id, revision=load_revision(ref))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{ref.role}: cannot read the config of {ref.repo_id!r} @ {ref.sha}: {err}") from None
    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def in_memory_ref(model: Any, role: str) -> ArtifactRef:
    """The lineage of a model handed in already loaded: its name, unpinned."""
    return ArtifactRef(role, model.config.name_or_path, "local")


def resolve_device(device: str | torch.device) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` is bfloat16 on CUDA and float32 elsewhere (CPU bfloat16 matmuls are slow and lossy)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return resolved


def load_pretrained(
    ref: ArtifactRef,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    auto_class: type | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a pinned model in eval mode on ``device`` and its tokenizer, by commit sha when there is one.

    ``auto_class`` defaults to ``AutoModelForCausalLM``; embedders pass ``AutoModel`` (no LM head).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve_device(device)
    weights_dtype = resolve_dtype(dtype, target)
    revision = load_revision(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.repo_id, revision=revision)
        model = (auto_class or AutoModelForCausalLM).from_pretrained(
            ref.repo_id, revision=revision, dtype=weights_dtype, device_map=str(target)
        )
    except (OSError, ValueError) as err:  # transformers raises ValueError for a missing tokenizer or an unknown config
        raise ModelLoadError(f"{ref.role}: cannot load model {ref.repo_id!r} (revision {revision}): {err}") from None
    return model.eval(), tokenizer


def load_sentence_transformer(ref: ArtifactRef, *, device: str | torch.device = "auto") -> Any:
    """A pinned sentence-transformers model (its own pooling, normalisation and truncation) on ``device``."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(ref.repo_id, revision=load_revision(ref), device=str(resolve_device(device)))
    except (OSError, ValueError) as err:  # ValueError: a folder without a tokenizer or a known config
        raise ModelLoadError(f"{ref.role}: cannot load sentence-transformers model {ref.repo_id!r}: {err}") from None
