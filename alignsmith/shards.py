"""Resumable, shardable work: long jobs write results shard by shard and pick up where they stopped.

A job over N rows is cut into fixed work shards of ``shard_size`` rows. Each finished shard is one
file, written to a temporary name and renamed into place, so a job killed at any moment leaves only
whole shards behind. A manifest pins the job's fingerprint (inputs and settings): a work folder
from a different job is refused instead of being silently mixed in.

Shards are spread round-robin over tasks (``num_tasks``/``task_index``: the tasks of a datatrove
executor, see :mod:`alignsmith.executors`) and over processes (``accelerate launch``); the global
step checks that every shard is present and was produced under the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from alignsmith.errors import AlignsmithError
from alignsmith.files import atomic_write, atomic_writer

MANIFEST = "manifest.json"


class ShardMismatchError(AlignsmithError):
    """The work folder belongs to a different job, or a shard is missing or foreign."""


def fingerprint(settings: Any) -> str:
    """A stable hash of JSON-serialisable job settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ShardPlan:
    """How ``num_rows`` rows are cut into work shards and which of them this worker owns."""

    num_rows: int
    shard_size: int
    num_tasks: int = 1
    task_index: int = 0
    num_processes: int = 1
    process_index: int = 0

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if not 0 <= self.task_index < self.num_tasks:
            raise ValueError(f"task index {self.task_index} is outside 0..{self.num_tasks - 1}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)

    def rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.num_rows, (shard + 1) * self.shard_size))

    def mine(self) -> list[int]:
        """Shards for this task, then for this process of it (round-robin at both levels)."""
        task = list(range(self.task_index, self.num_shards, self.num_tasks))
        return task[self.process_index :: self.num_processes]


class ShardStore:
    """A folder of finished shards for one named step of one job (e.g. ``scores``, ``embeddings``)."""

    def __init__(self, root: str | Path, step: str, job_fingerprint: str, num_shards: int) -> None:
        self.dir = Path(root) / step
        self.fingerprint = job_fingerprint
        self.num_shards = num_shards
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_manifest()

    def _check_manifest(self) -> None:
        path = self.dir / MANIFEST
        wanted = {"fingerprint": self.fingerprint, "num_shards": self.num_shards}
        if path.exists():
            found = json.loads(path.read_text())
            if found != wanted:
                raise ShardMismatchError(
                    f"{self.dir} holds shards of a different job ({found}, expected {wanted}); "
                    "use another work_dir or delete this one"
                )
            return
        atomic_write(path, json.dumps(wanted))

    def path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:05d}-of-{self.num_shards:05d}.npz"

    def done(self, shard: int) -> bool:
        return self.path(shard).exists()

    def write(self, shard: int, **arrays: np.ndarray) -> None:
        """Atomically store one finished shard's arrays."""
        with atomic_writer(self.path(shard)) as fh:
            np.savez(fh, **arrays)

    def read(self, shard: int) -> dict[str, np.ndarray]:
        with np.load(self.path(shard), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def missing(self) -> list[int]:
        return [s for s in range(self.num_shards) if not self.done(s)]

    def read_all(self) -> Iterator[dict[str, np.ndarray]]:
        """Every shard in order; refuses to merge an incomplete step."""
        missing = self.missing()
        if missing:
            raise ShardMismatchError(
                f"{self.dir}: {len(missing)} of {self.num_shards} shards are missing "
                f"(first: {missing[:5]}); run the build again to compute them"
            )
        for shard in range(self.num_shards):
            yield self.read(shard)


def all_done(stores: Iterable[ShardStore], shards: Iterable[int]) -> bool:
    """Whether each of ``shards`` is on disk in every store (e.g. the shards one task owns)."""
    shards = list(shards)
    return all(store.done(shard) for store in stores for shard in shards)
