"""Length-sorted, right-padded batches for causal LMs run without an attention mask.

Scorers, embedders and perplexity all run prompts of very different lengths; sorting by length
keeps padding small, and right padding with no mask keeps every real position exact (see
:func:`right_pad`) while letting attention take its fused causal kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from alignsmith.models.loading import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the model was built for: its position table, else the tokenizer's limit."""
    config = model.config.get_text_config()
    limit = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    if not limit or limit > 1_000_000:  # tokenizers without a limit report a huge sentinel
        raise ModelLoadError(f"{config.name_or_path!r} declares no context length; pass max_length explicitly")
    return int(limit)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, longest first (so memory errors show early)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding is never attended to (see :func:`right_pad`); a real pad (or EOS) keeps inputs readable."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def right_pad(
    sequences: Sequence[Sequence[int] | np.ndarray], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and each row's length, to run with NO attention mask.

    In a causal LM a token only attends to earlier positions, so padding placed after a row's last
    real token never reaches it: every real position computes exactly what it would unpadded. With
    no mask, attention takes its fused causal path (flash/memory-efficient kernels on GPU) instead
    of materialising a padding mask, which is what makes batching pay off.
    """
    import torch

    lengths = torch.as_tensor([len(s) for s in sequences], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ValueError("cannot run the model on an empty sequence")
    input_ids = torch.full((len(sequences), int(lengths.max())), pad, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return input_ids.to(device), lengths.to(device)
