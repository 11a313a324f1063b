"""File-backed repository storage for the embedded Hub.

Every revision is kept. Under ``root/repos/{type}s/{namespace}/{name}/`` a repository holds:

* ``blobs/``: file contents, content-addressed by sha256 (shared by regular and LFS files);
* ``commits/``: immutable commit objects (parents, the full tree ``path -> file entry``, message,
  author, time), named by the sha1 of their canonical JSON;
* ``changes/``: per commit, the commit that last changed each of its files and directories,
  recorded when the commit is made so listings with ``expand`` never walk the history;
* ``refs.json``: branches and tags; ``repo.json``: visibility and creation metadata;
* ``tmp/``: uploads in progress, on the same filesystem so finished ones are renamed into place.

A commit is made visible in three durable steps: blobs, then the commit object and its
``changes/`` record, then the ref update (write to a temporary file, fsync, ``os.replace``). A
process killed at any point leaves the previous revision as the visible one. The only leftovers
are ``tmp/`` files, which :meth:`HubStorage.recover` removes on the next start, and unreferenced
blobs, which are kept: content-addressed, they are harmless, and a client retrying the commit
reuses them.

One process owns a root at a time (the server takes a file lock); inside it, writes to one
repository are serialised by a per-repository lock. A repository deleted and created again under
the same name is a new instance (``repo.json``'s ``uid``): a write that began on the old one is
refused rather than applied to the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path, PureWindowsPath
from typing import Any, Generic, Iterable, Iterator, Mapping, TypeVar

from alignsmith.files import atomic_write, atomic_write_json, fsync_dir

ROOT_ENV = "ALIGNSMITH_HUB_ROOT"
REPO_TYPES = ("model", "dataset", "space")
DEFAULT_BRANCH = "main"

# Suffixes stored through LFS, as on huggingface.co: binary formats, archives and media.
LFS_SUFFIXES = tuple("""
    .7z .arrow .bin .bz2 .ckpt .ftz .gguf .gz .h5 .joblib .lz4 .model .msgpack .npy .npz .onnx .ot
    .parquet .pb .pickle .pkl .pt .pth .rar .safetensors .tar .tflite .tgz .wasm .xz .zip .zst .png .jpg
    .jpeg .gif .webp .bmp .tif .tiff .wav .mp3 .flac .ogg .mp4 .avi .mkv
    """.split())
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
MAX_PATH_SEGMENT_BYTES = 255  # NAME_MAX: a longer file or folder name cannot be created on download

_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_REF_NAME = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}")
# First path segments the HTTP routes use for themselves (``/api/...``, ``/datasets/...``).
RESERVED_NAMESPACES = frozenset({"api", "datasets", "spaces", "models", "buckets"})


class HubError(Exception):
    """An error the Hub reports to clients: an HTTP status and, for 404s, a Hub error code."""

    status = 500
    error_code: str | None = None


class BadRequestError(HubError, ValueError):
    status = 400


class RepoNotFoundError(HubError):
    status = 404
    error_code = "RepoNotFound"


class RevisionNotFoundError(HubError):
    status = 404
    error_code = "RevisionNotFound"


class EntryNotFoundError(HubError):
    status = 404
    error_code = "EntryNotFound"


class ConflictError(HubError):
    status = 409


class StaleParentError(HubError):
    """The commit was prepared against a parent that is no longer the branch head."""

    status = 412


@dataclass(frozen=True, order=True)
class RepoRef:
    """A repository address: its type (model, dataset, space) and ``namespace/name`` id."""

    type: str
    id: str

    @classmethod
    def parse(cls, repo_type: str, repo_id: str) -> RepoRef:
        if repo_type not in REPO_TYPES:
            raise BadRequestError(f"repo type {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
        parts = repo_id.split("/")
        if len(parts) != 2:
            raise BadRequestError(f"repo id {repo_id!r} must have the form 'namespace/name'")
        for part in parts:
            if not _NAME_PART.fullmatch(part) or "--" in part or ".." in part:
                raise BadRequestError(
                    f"repo id {repo_id!r}: {part!r} must be 1-96 letters, digits, '-', '_' or '.', "
                    "start and end with a letter or digit, and contain no '--' or '..'"
                )
        if parts[0] in RESERVED_NAMESPACES:
            raise BadRequestError(f"repo id {repo_id!r}: namespace {parts[0]!r} is reserved")
        if parts[1].endswith(".git"):
            raise BadRequestError(f"repo id {repo_id!r}: a name cannot end with '.git'")
        return cls(repo_type, repo_id)

    @property
    def namespace(self) -> str:
        return self.id.split("/")[0]

    @property
    def url_prefix(self) -> str:
        """The prefix huggingface.co puts before the id in web and download URLs."""
        return "" if self.type == "model" else f"{self.type}s/"

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a revision. ``oid`` is its git blob id (of the LFS pointer for LFS files)."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    @property
    def etag(self) -> str:
        """What huggingface.co sends as ETag: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.oid

    @property
    def lfs_pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "lfs": self.lfs, "oid": self.oid}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEntry:
        return cls(data["sha256"], int(data["size"]), bool(data["lfs"]), data["oid"])


@dataclass(frozen=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    tree: Mapping[str, FileEntry]
    title: str
    message: str
    author: str
    date: str

    @cached_property
    def directory_oids(self) -> dict[str, str]:
        """A content hash for every directory (stable; changes when anything below changes)."""
        hashers: dict[str, Any] = {}
        for path in sorted(self.tree):
            parts = path.split("/")
            for depth in range(1, len(parts)):
                hashers.setdefault("/".join(parts[:depth]), hashlib.sha1()).update(
                    f"{path}\0{self.tree[path].oid}\n".encode()
                )
        return {d: h.hexdigest() for d, h in hashers.items()}

    def item_oid(self, path: str) -> str | None:
        entry = self.tree.get(path)
        return entry.oid if entry is not None else self.directory_oids.get(path)

    def payload(self) -> dict[str, Any]:
        return {
            "parents": list(self.parents),
            "tree": {path: entry.to_json() for path, entry in sorted(self.tree.items())},
            "title": self.title,
            "message": self.message,
            "author": self.author,
            "date": self.date,
        }


@dataclass(frozen=True)
class CommitSummary:
    """What a listing with ``expand`` shows of the commit that last changed a path."""

    id: str
    title: str
    date: str


@dataclass(frozen=True)
class TreeItem:
    """A file or a directory in a listing; directories carry a content hash as their oid."""

    path: str
    oid: str
    file: FileEntry | None = None  # None for directories


@dataclass
class Refs:
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"commit", "message"}

    def to_json(self) -> dict[str, Any]:
        return {"branches": self.branches, "tags": self.tags}


@dataclass(frozen=True)
class RepoMeta:
    ref: RepoRef
    private: bool
    created_at: str
    uid: str
    sdk: str | None = None


@dataclass(frozen=True)
class AddFile:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class DeleteFolder:
    path: str


Operation = AddFile | DeleteFile | DeleteFolder


def git_blob_id(data: bytes) -> str:
    """The id git gives a blob: sha1 of ``blob <size>\\0<content>``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def should_use_lfs(path: str, size: int, sample: bytes) -> bool:
    """LFS for known binary suffixes, anything over 10 MB, and content that looks binary."""
    return path.lower().endswith(LFS_SUFFIXES) or size > LFS_SIZE_THRESHOLD or b"\0" in sample


def validate_path(path: str) -> str:
    """Reject repository paths that could escape the tree or that clients refuse to download.

    huggingface_hub refuses to download, on every platform, a name with a ``..`` segment (split on
    ``/`` or ``\\``) or with a segment Windows reads as a drive or root (``C:``, ``\\server``); one
    such file makes the whole repository un-downloadable, so it is refused when it is written.
    """
    if not path or path.startswith("/") or path.endswith("/"):
        raise BadRequestError(f"path {path!r} must be relative and name a file")
    if "\\" in path:
        raise BadRequestError(f"path {path!r} contains a backslash: separate folders with '/'")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequestError(f"path {path!r} contains an empty, '.' or '..' segment")
    if parts[0] == ".git":
        raise BadRequestError(f"path {path!r}: '.git' is reserved")
    drive = next((part for part in parts if PureWindowsPath(part).drive), None)
    if drive is not None:
        raise BadRequestError(f"path {path!r}: {drive!r} reads as a Windows drive, which clients refuse to download")
    if any(len(part.encode()) > MAX_PATH_SEGMENT_BYTES for part in parts):
        raise BadRequestError(f"path {path!r} has a file or folder name over {MAX_PATH_SEGMENT_BYTES} bytes")
    if len(path.encode()) > 1024 or any(ord(c) < 32 for c in path):
        raise BadRequestError(f"path {path!r} is too long or contains control characters")
    return path


def validate_ref_name(kind: str, name: str) -> str:
    if (
        not _REF_NAME.fullmatch(name)
        or name.startswith(("refs/", "-", "/"))
        or name.endswith(("/", ".lock", "."))
        or ".." in name
        or "//" in name
        or _SHA1.fullmatch(name)
    ):
        raise BadRequestError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '-' and '/', "
            "not starting with 'refs/' or '-', and not a 40-hex commit id"
        )
    return name


def default_root() -> Path:
    """The storage folder used when none is given: ``$ALIGNSMITH_HUB_ROOT``, else ``~/.cache/alignsmith/hub``."""
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "alignsmith" / "hub").expanduser()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.load(f)


_V = TypeVar("_V")


class _BoundedCache(Generic[_V]):
    """Commits and what is derived from them are immutable, so parsed ones are kept (bounded, by
    ``(repo uid, commit id)``) across requests."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[tuple[str, str], _V] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> _V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: _V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class HubStorage:
    """All repositories under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.repos_dir = self.root / "repos"
        self.trash_dir = self.root / "trash"
        self.repos_dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[RepoRef, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._commits: _BoundedCache[Commit] = _BoundedCache(512)
        self._changes: _BoundedCache[Mapping[str, CommitSummary]] = _BoundedCache(64)
        self._unsynced_blobs = False
        self._sync_lock = threading.Lock()

    # -- housekeeping -------------------------------------------------------------------------

    def recover(self) -> int:
        """Remove what interrupted uploads and deletions left behind; return how many files went."""
        removed = 0
        for tmp in self.repos_dir.glob("*/*/*/tmp/*"):
            tmp.unlink(missing_ok=True)
            removed += 1
        for stray in [*self.root.glob(".*.tmp"), *self.repos_dir.glob("*/*/*/**/.*.tmp")]:
            stray.unlink(missing_ok=True)
            removed += 1
        for staging in self.repos_dir.glob(".create-*"):
            shutil.rmtree(staging, ignore_errors=True)
            removed += 1
        if self.trash_dir.exists():
            shutil.rmtree(self.trash_dir, ignore_errors=True)
        return removed

    def _lock(self, ref: RepoRef) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(ref, threading.Lock())

    def _dir(self, ref: RepoRef) -> Path:
        return self.repos_dir / f"{ref.type}s" / ref.id

    # -- repositories -------------------------------------------------------------------------

    def create_repo(self, ref: RepoRef, *, private: bool, author: str, sdk: str | None = None) -> RepoMeta:
        """Create a repository whose ``main`` holds one commit with the LFS ``.gitattributes``."""
        final = self._dir(ref)
        with self._lock(ref):
            if (final / "repo.json").exists():
                raise ConflictError(f"You already created this {ref.type} repo: {ref.id}")
            if final.exists():  # no repository, only files an upload wrote while it was being deleted
                self._discard(final)
            meta = RepoMeta(ref, private, utc_now(), uuid.uuid4().hex, sdk)
            staging = Path(tempfile.mkdtemp(prefix=".create-", dir=self.repos_dir))
            try:
                atomic_write_json(staging / "repo.json", self._meta_json(meta))
                gitattributes = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
                entry = self._store_small_blob(staging, gitattributes)
                tree = {".gitattributes": entry}
                commit = self._write_commit(staging, meta.uid, None, {}, tree, "initial commit", "", author)
                atomic_write_json(staging / "refs.json", Refs(branches={DEFAULT_BRANCH: commit.id}).to_json())
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)  # the whole repository appears at once
                fsync_dir(final.parent)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        return meta

    def delete_repo(self, ref: RepoRef) -> None:
        with self._lock(ref):
            self.repo_meta(ref)
            self._discard(self._dir(ref))

    def _discard(self, directory: Path) -> None:
        """Make ``directory`` vanish at once (a rename into the trash), then remove its files."""
        self.trash_dir.mkdir(exist_ok=True)
        target = self.trash_dir / uuid.uuid4().hex
        os.rename(directory, target)
        shutil.rmtree(target, ignore_errors=True)

    def repo_meta(self, ref: RepoRef) -> RepoMeta:
        try:
            data = _read_json(self._dir(ref) / "repo.json")
        except FileNotFoundError:
            raise RepoNotFoundError(f"Repository not found: {ref}") from None
        return RepoMeta(ref, bool(data["private"]), data["created_at"], data["uid"], data.get("sdk"))

    def _instance(self, ref: RepoRef, expected: str | None = None) -> str:
        """The uid of the repository's current instance.

        With ``expected`` (the instance a write began on), a repository deleted since is a 404 and
        one deleted and created again a 409: the write must not land in, or refer to, another instance.
        """
        uid = self.repo_meta(ref).uid
        if expected is not None and uid != expected:
            raise ConflictError(
                f"{ref} was deleted and created again while this request was in progress; "
                "nothing was changed: start over against the new repository"
            )
        return uid

    def set_private(self, ref: RepoRef, private: bool) -> None:
        with self._lock(ref):
            meta = self.repo_meta(ref)
            new = RepoMeta(ref, private, meta.created_at, meta.uid, meta.sdk)
            atomic_write_json(self._dir(ref) / "repo.json", self._meta_json(new))

    @staticmethod
    def _meta_json(meta: RepoMeta) -> dict[str, Any]:
        return {
            "type": meta.ref.type,
            "id": meta.ref.id,
            "private": meta.private,
            "created_at": meta.created_at,
            "uid": meta.uid,
            "sdk": meta.sdk,
        }

    def list_repos(self, repo_type: str) -> list[RepoRef]:
        base = self.repos_dir / f"{repo_type}s"
        return sorted(
            RepoRef(repo_type, f"{p.parent.name}/{p.name}") for p in base.glob("*/*") if (p / "repo.json").exists()
        )

    # -- refs and revisions -------------------------------------------------------------------

    def refs(self, ref: RepoRef) -> Refs:
        self.repo_meta(ref)
        data = _read_json(self._dir(ref) / "refs.json")
        return Refs(branches=dict(data["branches"]), tags=dict(data["tags"]))

    def _write_refs(self, ref: RepoRef, refs: Refs) -> None:
        atomic_write_json(self._dir(ref) / "refs.json", refs.to_json())

    def resolve(self, ref: RepoRef, revision: str) -> str:
        """Commit id of a branch, tag, ``refs/heads/X``, ``refs/tags/X`` or full commit id."""
        refs = self.refs(ref)
        if revision.startswith("refs/heads/"):
            sha = refs.branches.get(revision.removeprefix("refs/heads/"))
        elif revision.startswith("refs/tags/"):
            tag = refs.tags.get(revision.removeprefix("refs/tags/"))
            sha = tag["commit"] if tag else None
        elif revision in refs.branches:
            sha = refs.branches[revision]
        elif revision in refs.tags:
            sha = refs.tags[revision]["commit"]
        elif _SHA1.fullmatch(revision) and self._commit_path(ref, revision).exists():
            sha = revision
        else:
            sha = None
        if sha is None:
            raise RevisionNotFoundError(f"Invalid rev id: {revision} (no such branch, tag or commit in {ref})")
        return sha

    def create_branch(self, ref: RepoRef, branch: str, start: str | None) -> str:
        validate_ref_name("branch", branch)
        with self._lock(ref):
            refs = self.refs(ref)
            if branch in refs.branches:
                raise ConflictError(f"Reference already exists: branch {branch!r} in {ref}")
            if branch in refs.tags:
                raise ConflictError(f"A tag named {branch!r} already exists in {ref}; pick another branch name")
            sha = self.resolve(ref, start or DEFAULT_BRANCH)
            refs.branches[branch] = sha
            self._write_refs(ref, refs)
            return sha

    def delete_branch(self, ref: RepoRef, branch: str) -> None:
        with self._lock(ref):
            refs = self.refs(ref)
            if branch not in refs.branches:
                raise RevisionNotFoundError(f"Invalid rev id: branch {branch!r} does not exist in {ref}")
            if branch == DEFAULT_BRANCH:
                raise BadRequestError(f"cannot delete the default branch {DEFAULT_BRANCH!r} of {ref}")
            del refs.branches[branch]
            self._write_refs(ref, refs)

    def create_tag(self, ref: RepoRef, tag: str, revision: str, message: str | None) -> str:
        """Tags are immutable: an existing tag is never moved (409)."""
        validate_ref_name("tag", tag)
        with self._lock(ref):
            refs = self.refs(ref)
            if tag in refs.tags:
                raise ConflictError(
                    f"Tag {tag!r} already exists in {ref} (at {refs.tags[tag]['commit']}); tags cannot be moved"
                )
            if tag in refs.branches:
                raise ConflictError(f"A branch named {tag!r} already exists in {ref}; pick another tag name")
            sha = self.resolve(ref, revision)
            refs.tags[tag] = {"commit": sha, "message": message or ""}
            self._write_refs(ref, refs)
            return sha

    def delete_tag(self, ref: RepoRef, tag: str) -> None:
        with self._lock(ref):
            refs = self.refs(ref)
            if tag not in refs.tags:
                raise RevisionNotFoundError(f"Invalid rev id: tag {tag!r} does not exist in {ref}")
            del refs.tags[tag]
            self._write_refs(ref, refs)

    # -- commits ------------------------------------------------------------------------------

    def _commit_path(self, ref: RepoRef, sha: str) -> Path:
        return self._dir(ref) / "commits" / sha[:2] / f"{sha[2:]}.json"

    def commit(self, ref: RepoRef, sha: str) -> Commit:
        meta = self.repo_meta(ref)
        cached = self._commits.get((meta.uid, sha))
        if cached is not None:
            return cached
        try:
            data = _read_json(self._commit_path(ref, sha))
        except FileNotFoundError:
            raise RevisionNotFoundError(f"Invalid rev id: commit {sha} does not exist in {ref}") from None
        commit = Commit(
            id=sha,
            parents=tuple(data["parents"]),
            tree={path: FileEntry.from_json(e) for path, e in data["tree"].items()},
            title=data["title"],
            message=data["message"],
            author=data["author"],
            date=data["date"],
        )
        self._commits.put((meta.uid, sha), commit)
        return commit

    def history(self, ref: RepoRef, sha: str) -> Iterator[Commit]:
        """Commits reachable from ``sha`` along first parents, newest first."""
        next_sha: str | None = sha
        while next_sha is not None:
            commit = self.commit(ref, next_sha)
            yield commit
            next_sha = commit.parents[0] if commit.parents else None

    def _write_commit(
        self,
        repo_dir: Path,
        uid: str,
        parent: Commit | None,
        parent_changes: Mapping[str, CommitSummary],
        tree: Mapping[str, FileEntry],
        title: str,
        message: str,
        author: str,
    ) -> Commit:
        """Write a commit on top of ``parent`` and, from the parent's, the record of its last changes."""
        self._flush_blobs()
        parents = (parent.id,) if parent is not None else ()
        draft = Commit("", parents, dict(tree), title, message, author, utc_now())
        body = json.dumps(draft.payload(), sort_keys=True, separators=(",", ":")).encode()
        sha = hashlib.sha1(body).hexdigest()
        commit = Commit(sha, parents, draft.tree, title, message, author, draft.date)
        atomic_write(repo_dir / "commits" / sha[:2] / f"{sha[2:]}.json", body)
        changes = _next_changes(commit, parent, parent_changes)
        ids = {summary.id: summary for summary in changes.values()}
        record = {
            "commits": {i: {"title": c.title, "date": c.date} for i, c in ids.items()},
            "paths": {path: summary.id for path, summary in changes.items()},
        }
        atomic_write(self._changes_path(repo_dir, sha), json.dumps(record, separators=(",", ":")))
        # The next commit starts from this one: keep what it will need parsed.
        self._commits.put((uid, sha), commit)
        self._changes.put((uid, sha), changes)
        return commit

    @staticmethod
    def _changes_path(repo_dir: Path, sha: str) -> Path:
        return repo_dir / "changes" / sha[:2] / f"{sha[2:]}.json"

    def last_changes(self, ref: RepoRef, commit: Commit) -> Mapping[str, CommitSummary]:
        """For every file and directory of ``commit``, the newest commit (first parents) that changed it.

        Read from the record written with the commit, so its cost does not grow with the history.
        Commits stored before records existed get theirs derived once from the nearest recorded
        ancestor (or the first commit).
        """
        uid = self.repo_meta(ref).uid
        unrecorded: list[Commit] = []
        current = commit
        while (changes := self._changes.get((uid, current.id)) or self._read_changes(ref, current.id)) is None:
            unrecorded.append(current)
            if not current.parents:
                break
            current = self.commit(ref, current.parents[0])
        parent = current if changes is not None else None
        for newer in reversed(unrecorded):
            changes, parent = _next_changes(newer, parent, changes or {}), newer
        self._changes.put((uid, commit.id), changes)
        return changes

    def _read_changes(self, ref: RepoRef, sha: str) -> dict[str, CommitSummary] | None:
        try:
            record = _read_json(self._changes_path(self._dir(ref), sha))
        except FileNotFoundError:
            return None
        summaries = {i: CommitSummary(i, c["title"], c["date"]) for i, c in record["commits"].items()}
        return {path: summaries[i] for path, i in record["paths"].items()}

    def apply_commit(
        self,
        ref: RepoRef,
        branch: str,
        operations: Iterable[Operation],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None,
        repo_uid: str | None = None,
    ) -> Commit:
        """Apply ``operations`` on top of ``branch`` and move the branch, all or nothing.

        Blobs referenced by ``AddFile`` must already be stored. With ``parent_commit`` the
        commit is refused (412) unless it is still the branch head, so an update prepared
        against an older revision never overwrites a newer one. With ``repo_uid`` (the instance
        the blobs were stored in) it is refused if the repository was replaced meanwhile: its
        blobs went to the old one, and the new one must not list files it does not hold.
        """
        with self._lock(ref):
            uid = self._instance(ref, repo_uid)
            refs = self.refs(ref)
            if branch not in refs.branches:
                if branch in refs.tags or _SHA1.fullmatch(branch):
                    raise BadRequestError(f"cannot commit to {branch!r} in {ref}: only branches can receive commits")
                raise RevisionNotFoundError(f"Invalid rev id: branch {branch!r} does not exist in {ref}")
            head = refs.branches[branch]
            if parent_commit is not None and parent_commit != head:
                raise StaleParentError(
                    f"A commit has happened since. Please refresh and try again. "
                    f"(parentCommit {parent_commit} is not the head {head} of branch {branch!r} in {ref})"
                )
            parent = self.commit(ref, head)
            tree = dict(parent.tree)
            for op in operations:
                _apply_operation(tree, op)
            _check_file_directory_clashes(tree)
            changes = self.last_changes(ref, parent)
            commit = self._write_commit(self._dir(ref), uid, parent, changes, tree, title, message, author)
            refs.branches[branch] = commit.id
            self._write_refs(ref, refs)
            return commit

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, ref: RepoRef, sha256: str) -> Path:
        return self._dir(ref) / "blobs" / sha256[:2] / sha256[2:]

    def has_blob(self, ref: RepoRef, sha256: str, size: int | None = None) -> bool:
        if not _SHA256.fullmatch(sha256):
            return False
        try:
            actual = self.blob_path(ref, sha256).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or actual == size

    def lfs_entry(self, ref: RepoRef, sha256: str, size: int | None) -> FileEntry:
        """The entry for an already uploaded LFS object (its size is checked when given)."""
        path = self.blob_path(ref, sha256) if _SHA256.fullmatch(sha256) else None
        if path is None or not path.exists():
            raise BadRequestError(f"LFS object sha256:{sha256} was never uploaded to {ref}")
        actual = path.stat().st_size
        if size is not None and actual != size:
            raise BadRequestError(f"LFS object sha256:{sha256} has {actual} bytes, not the announced {size}")
        return FileEntry(sha256, actual, True, git_blob_id(lfs_pointer(sha256, actual)))

    def store_bytes(self, ref: RepoRef, data: bytes) -> FileEntry:
        """Store a regular (non-LFS) file sent inline in a commit."""
        self.repo_meta(ref)
        return self._store_small_blob(self._dir(ref), data)

    def _store_small_blob(self, repo_dir: Path, data: bytes) -> FileEntry:
        sha256 = hashlib.sha256(data).hexdigest()
        path = repo_dir / "blobs" / sha256[:2] / sha256[2:]
        if not path.exists():
            atomic_write(path, data, durable=False)
            self._unsynced_blobs = True  # set after the write: see _flush_blobs
        return FileEntry(sha256, len(data), False, git_blob_id(data))

    def _flush_blobs(self) -> None:
        """Make inline blobs durable before a commit can reference them.

        A commit with thousands of small files would otherwise pay one fsync per file; one
        ``sync`` covers the batch. The flag is cleared before syncing and set after writing,
        so a blob written concurrently is either covered by this sync or leaves the flag set;
        the lock makes a caller that finds the flag cleared wait until the sync that cleared it
        has finished, instead of committing while its blobs may still be in flight.
        """
        with self._sync_lock:
            if self._unsynced_blobs:
                self._unsynced_blobs = False
                os.sync()

    def write_blob(self, ref: RepoRef, chunks: Iterable[bytes], *, sha256: str, size: int) -> None:
        """Stream an LFS upload into the store, hashing as it goes; refuse content that does not match.

        The bytes land in ``tmp/`` and are renamed into ``blobs/`` only once complete and
        verified, so an interrupted upload is never mistaken for the object. A repository deleted
        meanwhile takes ``tmp/`` with it: that is a 404, not an I/O failure.
        """
        uid = self._instance(ref)
        try:
            self._receive_blob(ref, chunks, sha256, size)
        except FileNotFoundError:
            self._instance(ref, uid)
            raise

    def _receive_blob(self, ref: RepoRef, chunks: Iterable[bytes], sha256: str, size: int) -> None:
        tmp_dir = self._dir(ref) / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        hasher = hashlib.sha256()
        received = 0
        fd, tmp = tempfile.mkstemp(prefix=f"{sha256[:16]}-", dir=tmp_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    received += len(chunk)
                    if received > size:
                        raise BadRequestError(f"upload of sha256:{sha256} is larger than the announced {size} bytes")
                    hasher.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if received != size:
                raise BadRequestError(f"upload of sha256:{sha256} ended after {received} of {size} bytes")
            if hasher.hexdigest() != sha256:
                raise BadRequestError(
                    f"upload does not match its oid: expected sha256:{sha256}, got sha256:{hasher.hexdigest()}"
                )
            final = self.blob_path(ref, sha256)
            final.parent.mkdir(exist_ok=True)  # not parents: a deleted repository must stay deleted
            os.replace(tmp, final)
            fsync_dir(final.parent)
        finally:
            Path(tmp).unlink(missing_ok=True)

    # -- trees --------------------------------------------------------------------------------

    def list_tree(self, commit: Commit, path: str, *, recursive: bool) -> list[TreeItem]:
        """Files and directories under ``path`` ('' for the root), sorted by path.

        Raises EntryNotFound when ``path`` is neither the root nor a directory.
        """
        prefix = f"{path}/" if path else ""
        dir_oids = commit.directory_oids
        if path and path not in dir_oids:
            raise EntryNotFoundError(f"{path!r} is not a directory at revision {commit.id}")
        items: dict[str, TreeItem] = {}
        for file_path, entry in commit.tree.items():
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :].split("/")
            if recursive:
                for depth in range(1, len(rest)):
                    d = prefix + "/".join(rest[:depth])
                    items.setdefault(d, TreeItem(d, dir_oids[d]))
                items[file_path] = TreeItem(file_path, entry.oid, entry)
            elif len(rest) == 1:
                items[file_path] = TreeItem(file_path, entry.oid, entry)
            else:
                d = prefix + rest[0]
                items.setdefault(d, TreeItem(d, dir_oids[d]))
        return [items[k] for k in sorted(items)]

    def path_item(self, commit: Commit, path: str) -> TreeItem | None:
        entry = commit.tree.get(path)
        if entry is not None:
            return TreeItem(path, entry.oid, entry)
        oid = commit.directory_oids.get(path)
        return TreeItem(path, oid) if oid is not None else None


def _next_changes(
    commit: Commit, parent: Commit | None, parent_changes: Mapping[str, CommitSummary]
) -> dict[str, CommitSummary]:
    """Each item of ``commit`` keeps its parent's last change unless ``commit`` changed its oid."""
    own = CommitSummary(commit.id, commit.title, commit.date)
    items = {**{path: entry.oid for path, entry in commit.tree.items()}, **commit.directory_oids}
    return {
        path: parent_changes[path] if parent is not None and parent.item_oid(path) == oid else own
        for path, oid in items.items()
    }


def _apply_operation(tree: dict[str, FileEntry], op: Operation) -> None:
    if isinstance(op, AddFile):
        tree[validate_path(op.path)] = op.entry
    elif isinstance(op, DeleteFile):
        if tree.pop(op.path, None) is None:
            raise EntryNotFoundError(f"cannot delete {op.path!r}: no such file")
    else:
        prefix = op.path.strip("/") + "/"
        doomed = [p for p in tree if p.startswith(prefix)]
        if not doomed:
            raise EntryNotFoundError(f"cannot delete folder {op.path!r}: no such folder")
        for p in doomed:
            del tree[p]


def _check_file_directory_clashes(tree: Mapping[str, FileEntry]) -> None:
    """A path cannot be both a file and a directory (``a`` and ``a/b``)."""
    for path in tree:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in tree:
                raise BadRequestError(f"{path!r} would sit inside {parent!r}, which is a file")
