"""The reference Deita selection loop, re-stated for timing and cross-checking alignsmith.

Behaviour of hkust-nlp/deita@b279f2c ``Combined_Filter.filter`` with its default ``batch_size=1``
and ``distance_metric="cosine"``, written independently from the description of its semantics:

* ``final_score`` = per-row ``(np.array(complexity) * np.array(quality)).sum()``; pandas
  ``sort_values(ascending=False)`` (unstable quicksort, NaN last).
* the sorted embeddings become one host array; the top row is selected unconditionally;
* for every further candidate: gather *all* selected rows with numpy fancy indexing, convert them
  and the candidate to float32 torch tensors, L2-normalise both twice (the reference normalises in
  ``normalize_emb`` and again in its cosine branch), fill a zeros placeholder with the
  ``selected x candidate`` similarities chunk by chunk, repeat that for the candidate against
  itself (the in-batch check), and reject iff any similarity is ``> threshold``;
* stop once ``data_size`` rows are selected (``-1``: no budget) and truncate to ``data_size``.

This is deliberately slow; it exists only so the benchmark can compare like with like.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch


def _cosine(matrix: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    matrix = matrix / matrix.norm(dim=1)[:, None]
    other = other / other.norm(dim=1)[:, None]
    matrix = matrix / matrix.norm(dim=1)[:, None]
    other = other / other.norm(dim=1)[:, None]
    return torch.mm(matrix, other.t())


def _chunked_similarity(existing: np.ndarray, candidate: torch.Tensor, chunk_size: int) -> torch.Tensor:
    out = torch.zeros((candidate.size(0), existing.shape[0]), dtype=torch.float32)
    for start in range(0, existing.shape[0], chunk_size):
        chunk = torch.tensor(existing[start : start + chunk_size], dtype=torch.float32)
        sims = _cosine(candidate, chunk)
        out[:, start : start + sims.size(1)] = sims
    return out


def reference_select(
    complexity_scores: Sequence[Sequence[float]],
    quality_scores: Sequence[Sequence[float]],
    embeddings: np.ndarray,
    *,
    threshold: float = 0.9,
    data_size: int = -1,
    chunk_size: int = 100_000,
) -> list[int]:
    """Original row indices of the selected rows, in selection order (CPU)."""
    frame = pd.DataFrame(
        {
            "embedding": list(embeddings),
            "idx": np.arange(len(embeddings)),
            "complexity_scores": list(complexity_scores),
            "quality_scores": list(quality_scores),
        }
    )
    product = frame["complexity_scores"].apply(np.array) * frame["quality_scores"].apply(np.array)
    frame["final_score"] = product.apply(lambda turns: turns.sum())
    ordered = frame.sort_values(by="final_score", ascending=False)
    sorted_embeddings = np.array(ordered["embedding"].values.tolist())

    kept = [0]
    for i in range(1, sorted_embeddings.shape[0]):
        candidate_row = sorted_embeddings[i : i + 1]
        candidate = torch.tensor(candidate_row, dtype=torch.float32)
        existing = sorted_embeddings[kept]
        too_similar = torch.any(_chunked_similarity(existing, candidate, chunk_size) > threshold, dim=1)
        in_batch = _chunked_similarity(candidate_row, candidate, chunk_size).tril(-1)
        too_similar |= torch.any(in_batch > threshold, dim=1)
        if not bool(too_similar[0]):
            kept.append(i)
        if data_size > -1 and len(kept) >= data_size:
            break
    chosen = ordered.iloc[kept]
    if data_size > -1:
        chosen = chosen[:data_size]
    return chosen["idx"].tolist()
