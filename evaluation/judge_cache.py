"""A persistent cache of judge calls, so a rerun (or a crashed run resumed) never pays for a judgment twice
and always gets the same answer back.

A call is keyed by who judged (a Hub model pinned to its commit sha, or an endpoint URL and model
name), the exact messages sent and the decoding settings: change any of them and it is a new call. The
store is one SQLite file in WAL mode, so several judging processes on one machine can read and write
it at once; the first answer stored for a key is kept (``INSERT OR IGNORE``), so concurrent duplicate
calls cannot make two runs disagree. SQLite's locking needs a local filesystem, not NFS.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alignsmith.errors import AlignsmithError

SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")  # a Hub commit, or a local folder's content sha256
BUSY_TIMEOUT_MS = 60_000


class JudgeCacheError(AlignsmithError):
    """A judge identity that cannot key a cache entry reproducibly."""


@dataclass(frozen=True)
class JudgeIdentity:
    """Who answers: a Hub model at a commit (``repo_id`` + ``revision``) or a served model (``endpoint`` + ``model``).

    A judge model must be pinned: a Hub model to its 40-character commit sha, a local folder to the
    sha256 of its content (as :func:`alignsmith.lineage.pin` records it). A branch name moves, and
    answers cached under it would silently mix two models.
    """

    repo_id: str | None = None
    revision: str | None = None
    endpoint: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        hub, served = self.repo_id is not None, self.endpoint is not None
        if hub == served:
            raise JudgeCacheError("a judge is either a Hub model (repo_id + revision) or an endpoint (endpoint + model)")
        if hub and not (self.revision and SHA.match(self.revision)):
            raise JudgeCacheError(f"judge {self.repo_id}: revision must be a commit sha (or a local folder's content sha256), "
                                  f"got {self.revision!r}")
        if served and not self.model:
            raise JudgeCacheError(f"judge at {self.endpoint}: the model name is required")


def cache_key(judge: JudgeIdentity, messages: Sequence[Mapping[str, Any]], decoding: Mapping[str, Any]) -> str:
    """The sha256 of the canonical JSON of (judge, messages, decoding settings)."""
    return hashlib.sha256(_canonical(judge, messages, decoding).encode("utf-8")).hexdigest()


def _canonical(judge: JudgeIdentity, messages: Sequence[Mapping[str, Any]], decoding: Mapping[str, Any]) -> str:
    request = {"judge": asdict(judge), "messages": list(messages), "decoding": dict(decoding)}
    return json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class JudgeCache:
    """Judge answers on disk, by :func:`cache_key`; open one per process (connections are not shared)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL)")

    def get(self, judge: JudgeIdentity, messages: Sequence[Mapping[str, Any]], decoding: Mapping[str, Any]) -> Any | None:
        """The stored answer (a string, or the JSON a logprob judge returned), or None if never asked."""
        stored = self._stored(cache_key(judge, messages, decoding))
        return None if stored is None else json.loads(stored)

    def put(self, judge: JudgeIdentity, messages: Sequence[Mapping[str, Any]], decoding: Mapping[str, Any], response: Any) -> Any:
        """Store ``response`` unless the key already has one; returns the answer now stored (the first one)."""
        key = cache_key(judge, messages, decoding)
        self._db.execute("INSERT OR IGNORE INTO calls (key, request, response) VALUES (?, ?, ?)",
                         (key, _canonical(judge, messages, decoding), json.dumps(response)))
        return json.loads(self._stored(key))

    def call(
        self,
        judge: JudgeIdentity,
        messages: Sequence[Mapping[str, Any]],
        decoding: Mapping[str, Any],
        ask: Callable[[], Any],
    ) -> Any:
        """The cached answer, or ``ask()``'s, stored first. ``ask`` must return JSON-serialisable data."""
        stored = self._stored(cache_key(judge, messages, decoding))
        return json.loads(stored) if stored is not None else self.put(judge, messages, decoding, ask())

    def _stored(self, key: str) -> str | None:
        row = self._db.execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
