"""Per-row random generators: a row's draws depend on the run's seed and the row's id, never on its neighbours.

So a row comes out the same whether it is computed alone, in another batch, in another shard or on
another machine, and a resumed or scaled-out run reproduces a single-process one row for row.
"""

from __future__ import annotations

import hashlib
import random


def row_seed(seed: int, row_id: str) -> int:
    """A 64-bit seed from (global seed, row id)."""
    digest = hashlib.sha256(f"{seed}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def row_rng(seed: int, row_id: str) -> random.Random:
    """The generator for one row's draws."""
    return random.Random(row_seed(seed, row_id))
