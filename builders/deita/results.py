"""What a Deita build has in hand between its steps: the pool, the pinned models, the merged shards.

Typed here, apart from the steps, so that building (``build.py``) and publishing (``publish.py``)
share one definition of each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from alignsmith.lineage import ArtifactRef, Lineage
from alignsmith.sources import LoadedSource
from builders.deita.recipe import DeitaRecipe
from builders.deita.strategies import StrategyResult


@dataclass
class Pool:
    """The pool's valid records, its rejected rows, and what pins it."""

    loaded: LoadedSource
    records: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    ref: ArtifactRef

    @cached_property
    def fingerprint(self) -> str:
        """A hash of exactly what the models see (ids and messages, in order), computed once per loaded pool
        however many tasks' shard stores check it.

        The pool's commit sha or file hash is not enough: another split, config, ``columns`` mapping or
        ``format`` of the same source gives other conversations, often under the same generated ids.
        """
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(json.dumps([record["id"], record["messages"]], sort_keys=True, ensure_ascii=False).encode())
            digest.update(b"\n")
        return digest.hexdigest()[:32]


@dataclass
class Models:
    """Every model the build uses, pinned to a commit (or a content hash for local folders)."""

    complexity: ArtifactRef
    quality: ArtifactRef
    embedder: ArtifactRef
    difficulty: ArtifactRef | None

    def refs(self) -> list[ArtifactRef]:
        return [r for r in (self.complexity, self.quality, self.embedder, self.difficulty) if r is not None]


@dataclass
class Merged:
    """Every shard's results, concatenated in pool order."""

    complexity: list[list[float]]
    quality: list[list[float]]
    complexity_truncated: list[list[bool]]
    quality_truncated: list[list[bool]]
    error_field: np.ndarray
    error_reason: np.ndarray
    embeddings: np.ndarray  # memory-mapped [rows, dim]
    embedding_truncated: np.ndarray
    perplexity: np.ndarray | None
    ifd: np.ndarray | None


@dataclass
class FinishedBuild:
    """Everything publishing needs once selection has run."""

    recipe: DeitaRecipe
    pool: Pool
    merged: Merged
    valid: np.ndarray  # pool rows that were scored (indexes into pool.records)
    table: dict[str, Any]  # the selection table of those rows (ids, per-turn scores, lengths...)
    result: StrategyResult
    lineage: Lineage
