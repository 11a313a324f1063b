"""The Hub API of the embedded Hub: routes, request and response objects, and their JSON.

:class:`HubApp` maps the requests ``huggingface_hub``, ``datasets``, ``transformers`` and ``peft``
send onto :mod:`alignsmith.hub.storage` and :mod:`alignsmith.hub.auth`, answering with the status
codes and ``X-Error-Code`` headers huggingface.co sends, so clients raise their usual
``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``EntryNotFoundError`` and
``HfHubHTTPError``. It knows nothing about sockets: :mod:`alignsmith.hub.server` serves it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import io
import json
import logging
import mimetypes
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import parse_qs, quote, unquote, urlencode

import yaml

from alignsmith import __version__
from alignsmith.frontmatter import card_metadata
from alignsmith.hub import auth
from alignsmith.hub.storage import (
    LFS_SIZE_THRESHOLD,
    AddFile,
    BadRequestError,
    Commit,
    CommitSummary,
    ConflictError,
    DeleteFile,
    DeleteFolder,
    EntryNotFoundError,
    FileEntry,
    HubError,
    HubStorage,
    Operation,
    RepoMeta,
    RepoNotFoundError,
    RepoRef,
    TreeItem,
    should_use_lfs,
    validate_path,
)

log = logging.getLogger("alignsmith.hub")

CHUNK_SIZE = 1024 * 1024
MAX_JSON_BODY = 64 * 1024 * 1024
UPLOAD_URL_TTL = 24 * 3600
PAGE_SIZE = 1000
EXPANDED_PAGE_SIZE = 50
# huggingface.co caps paths-info too; huggingface_hub asks for at most 500 paths at a time (FETCH_LFS_BATCH_SIZE).
MAX_PATHS_INFO = 1000
MAX_INLINE_FILE = LFS_SIZE_THRESHOLD  # huggingface.co refuses regular (non-LFS) files over 10 MB
MAX_CARD_BYTES = 1024 * 1024  # a README larger than this is served, but not parsed for card metadata
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


class PayloadTooLargeError(HubError):
    status = 413


class UnprocessableError(HubError):
    status = 422


class NotImplementedByHubError(HubError):
    status = 501


class InsufficientStorageError(HubError):
    """A full disk: 507, which clients do not retry (a 500 has them retry for many seconds)."""

    status = 507


class _RangeNotSatisfiable(HubError):
    status = 416



# -- requests and responses -------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any
    body: io.BufferedReader
    base_url: str
    token: auth.Token | None = None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def _read_small_body(self) -> bytes:
        data = self.body.read(MAX_JSON_BODY + 1)
        if len(data) > MAX_JSON_BODY:
            raise PayloadTooLargeError(f"request body larger than {MAX_JSON_BODY} bytes")
        return data

    def read_json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty)."""
        data = self._read_small_body()
        if not data.strip():
            return {}
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequestError(f"request body is not valid JSON (or nested too deeply): {exc}") from None
        if not isinstance(body, dict):
            raise BadRequestError("request body must be a JSON object")
        return body

    def read_form_or_json(self) -> dict[str, list[Any]]:
        """Some client calls post form fields (``data=``), others JSON; normalise to lists."""
        if "json" in (self.headers.get("Content-Type") or ""):
            return {k: v if isinstance(v, list) else [v] for k, v in self.read_json().items()}
        raw = self._read_small_body().decode("utf-8", "replace")
        return {k: list(v) for k, v in parse_qs(raw, keep_blank_values=True).items()}


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: BinaryIO | None = None  # sent instead of body, then closed; opened here so a bad blob is a clean error
    offset: int = 0
    length: int = 0


def json_response(
    obj: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json; charset=utf-8",
) -> Response:
    return Response(status, {"Content-Type": content_type, **(headers or {})}, json.dumps(obj).encode())


def error_response(error: HubError, head: bool = False) -> Response:
    message = str(error)
    headers = {"X-Error-Message": _header_safe(message)}
    if error.error_code:
        headers["X-Error-Code"] = error.error_code
    response = json_response({"error": message}, error.status, headers)
    if head:
        response.body = b""
    return response


def _header_safe(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text).encode("latin-1", "replace").decode("latin-1")[:1000]


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


# -- the Hub API --------------------------------------------------------------------------------


def _item_json(item: TreeItem, last: CommitSummary | None = None) -> dict[str, Any]:
    if item.file is None:
        out: dict[str, Any] = {"type": "directory", "oid": item.oid, "path": item.path}
    else:
        e = item.file
        out = {"type": "file", "oid": e.oid, "size": e.size, "path": item.path}
        if e.lfs:
            out["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.lfs_pointer_size}
    if last is not None:
        out["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
    return out


def _sibling_json(path: str, e: FileEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"rfilename": path, "size": e.size, "blobId": e.oid}
    if e.lfs:
        out["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.lfs_pointer_size}
    return out


def _inline_too_large(what: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{what}: regular (non-LFS) files are limited to {MAX_INLINE_FILE} bytes, as on huggingface.co; "
        "upload larger ones with LFS (an 'lfsFile' commit line; huggingface_hub does so when preupload "
        "answers uploadMode 'lfs')"
    )


def _commit_lines(body: io.BufferedReader) -> Iterator[bytes]:
    """The lines of a commit body; one too long to hold an inline file is refused before it fills memory."""
    limit = 4 * -(-MAX_INLINE_FILE // 3) + 64 * 1024  # base64 of the largest inline file, plus its JSON
    n = 0
    while line := body.readline(limit + 1):
        n += 1
        if len(line) > limit:
            raise _inline_too_large(f"commit line {n} is over {limit} bytes")
        yield line


def _card_metadata(text: str) -> dict[str, Any] | None:
    """:func:`card_metadata`, reporting YAML nested too deeply to parse as invalid metadata, not a crash."""
    try:
        return card_metadata(text)
    except RecursionError:
        raise ValueError("the README metadata is nested too deeply to be read") from None


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a single ``bytes=`` range; None to serve the whole file."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or not (match.group(1) or match.group(2)):
        return None  # multiple or malformed ranges: the whole file is a valid answer
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or end < start:
        raise _RangeNotSatisfiable(f"range {header!r} is outside the {size}-byte file")
    return start, end - start + 1


Handler = Callable[..., Response]


class HubApp:
    """Maps Hub API requests onto storage and auth; knows nothing about sockets."""

    def __init__(self, storage: HubStorage, tokens: auth.TokenStore) -> None:
        self.storage = storage
        self.tokens = tokens
        # Signs LFS upload URLs (the PUT carries no token). Per process: after a restart a client
        # simply asks the batch endpoint again.
        self._upload_key = secrets.token_bytes(32)
        repo = r"/api/(?P<types>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
        web = r"/(?:(?P<types>datasets|spaces)/)?(?P<ns>[^/]+)"  # models have no prefix in web URLs
        git = web + r"/(?P<name>[^/]+?)\.git/info/lfs/objects"
        resolve = web + r"/(?P<name>[^/]+)/resolve"
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (m, re.compile(p + "$"), h)
            for m, p, h in [
                ("GET", r"/api/whoami-v2", self.whoami),
                ("GET", r"/api/embedded-hub", self.health),
                ("POST", r"/api/validate-yaml", self.validate_yaml),
                ("POST", r"/api/repos/create", self.create_repo),
                ("DELETE", r"/api/repos/delete", self.delete_repo),
                ("GET", r"/api/(?P<types>models|datasets|spaces)", self.list_repos),
                ("GET", r"/api/(?P<types>models|datasets|spaces)/(?P<name>[^/]+)", self.missing_namespace),
                ("GET", repo, self.repo_info),
                ("GET", repo + r"/revision/(?P<rev>[^/]+)", self.repo_info),
                ("PUT", repo + r"/settings", self.settings),
                ("POST", repo + r"/preupload/(?P<rev>[^/]+)", self.preupload),
                ("POST", repo + r"/commit/(?P<rev>[^/]+)", self.commit),
                ("GET", repo + r"/refs", self.refs),
                ("POST", repo + r"/branch/(?P<rev>[^/]+)", self.create_branch),
                ("DELETE", repo + r"/branch/(?P<rev>[^/]+)", self.delete_branch),
                ("POST", repo + r"/tag/(?P<rev>[^/]+)", self.create_tag),
                ("DELETE", repo + r"/tag/(?P<rev>[^/]+)", self.delete_tag),
                ("GET", repo + r"/commits/(?P<rev>[^/]+)", self.commits),
                ("GET", repo + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", self.tree),
                ("POST", repo + r"/paths-info/(?P<rev>[^/]+)", self.paths_info),
                ("GET", repo + r"/xet-(?:write|read)-token/(?P<rev>[^/]+)", self.xet_refused),
                ("POST", git + r"/batch", self.lfs_batch),
                ("POST", git + r"/verify", self.lfs_verify),
                ("PUT", git + r"/(?P<oid>[0-9a-f]{64})", self.lfs_put),
                ("GET", resolve + r"/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            ]
        ]

    def handle(self, req: Request) -> Response:
        method = "GET" if req.method == "HEAD" else req.method
        for route_method, pattern, handler in self.routes:
            match = pattern.match(req.path)
            if match and route_method == method:
                req.token = self.tokens.authenticate(_bearer(req.headers.get("Authorization")))
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    return handler(req, **args)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise InsufficientStorageError(
                            f"the embedded Hub's disk is full ({self.storage.root}): nothing was changed; "
                            "free some space, then retry"
                        ) from exc
                    raise
        return json_response({"error": f"no route for {req.method} {req.path}"}, 404)

    # -- access helpers -----------------------------------------------------------------------

    def _readable(self, req: Request, types: str | None, ns: str, name: str) -> tuple[RepoRef, RepoMeta]:
        """The repository a route names, if the caller may read it (404 as if absent otherwise)."""
        ref = RepoRef.parse(_TYPES[types or "models"], f"{ns}/{name}")
        return ref, self._check_read(req, ref)

    def _check_read(self, req: Request, ref: RepoRef) -> RepoMeta:
        meta = self.storage.repo_meta(ref)
        auth.require_read(req.token, ref, meta.private)
        return meta

    def _writable(self, req: Request, types: str | None, ns: str, name: str) -> tuple[RepoRef, auth.Token]:
        ref, _ = self._readable(req, types, ns, name)
        return ref, auth.require_write(req.token, ref.namespace)

    def _commit_at(self, ref: RepoRef, rev: str) -> Commit:
        return self.storage.commit(ref, self.storage.resolve(ref, rev))

    def _web_url(self, req: Request, ref: RepoRef) -> str:
        return f"{req.base_url}/{ref.url_prefix}{ref.id}"

    # -- account and housekeeping -------------------------------------------------------------

    def whoami(self, req: Request) -> Response:
        if req.token is None:
            raise auth.UnauthorizedError("A token is required to call whoami")
        t = req.token
        orgs = sorted({ns for ns in (*t.read, *t.write) if ns not in (auth.ALL_NAMESPACES, t.name)})
        role = "write" if t.write else "read"
        return json_response(
            {
                "type": "user",
                "id": t.name,
                "name": t.name,
                "fullname": t.name,
                "email": None,
                "canPay": False,
                "isPro": False,
                "orgs": [{"type": "org", "name": ns, "fullname": ns, "roleInOrg": role} for ns in orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": t.name, "role": role}},
            }
        )

    def health(self, req: Request) -> Response:
        return json_response({"root": str(self.storage.root.resolve()), "pid": os.getpid(), "version": __version__})

    def validate_yaml(self, req: Request) -> Response:
        content = req.read_json().get("content", "")
        try:
            _card_metadata(content if isinstance(content, str) else "")
        except (yaml.YAMLError, ValueError) as exc:
            return json_response({"errors": [{"message": _header_safe(str(exc))}]}, 400)
        return json_response({})

    def xet_refused(self, req: Request, **_: str) -> Response:
        raise NotImplementedByHubError(
            "the embedded Hub stores large files with LFS, not Xet: "
            "set HF_HUB_DISABLE_XET=1 before importing huggingface_hub"
        )

    # -- repositories -------------------------------------------------------------------------

    @staticmethod
    def _body_repo(req: Request, body: dict[str, Any], action: str) -> RepoRef:
        """The repository named by ``{"type", "organization", "name"}`` (namespace defaults to the caller)."""
        if req.token is None:
            raise auth.UnauthorizedError(f"A token with write access is required to {action}")
        if not isinstance(body.get("name"), str):
            raise BadRequestError(f"{action}: body field 'name' (a string) is required")
        return RepoRef.parse(
            str(body.get("type") or "model"), f"{body.get('organization') or req.token.name}/{body['name']}"
        )

    def create_repo(self, req: Request) -> Response:
        body = req.read_json()
        ref = self._body_repo(req, body, "create a repository")
        token = auth.require_write(req.token, ref.namespace)
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        try:
            meta = self.storage.create_repo(ref, private=private, author=token.name, sdk=body.get("sdk"))
        except ConflictError as exc:  # clients read the url from the 409 too (create_repo(exist_ok=True))
            conflict = error_response(exc)
            conflict.body = json.dumps({"error": str(exc), "url": self._web_url(req, ref)}).encode()
            return conflict
        log.info("created %s%s", ref, " (private)" if private else "")
        return json_response({"url": self._web_url(req, ref), "name": ref.id, "id": meta.uid})

    def delete_repo(self, req: Request) -> Response:
        ref = self._body_repo(req, req.read_json(), "delete a repository")
        self._check_read(req, ref)
        auth.require_write(req.token, ref.namespace)
        self.storage.delete_repo(ref)
        log.info("deleted %s", ref)
        return json_response({})

    def settings(self, req: Request, types: str, ns: str, name: str) -> Response:
        """Every field is checked before anything changes: a loose reading (``bool("false")``) flips visibility."""
        ref, _ = self._writable(req, types, ns, name)
        body = req.read_json()
        unknown = sorted(set(body) - {"visibility", "private", "gated"})
        if unknown:
            raise BadRequestError(
                f"settings: unsupported field(s) {', '.join(map(repr, unknown))}; "
                "the embedded Hub supports 'visibility', 'private' and 'gated' (false only)"
            )
        gated = body.get("gated")
        if gated is not None and gated is not False:
            raise BadRequestError(f"settings: gated {gated!r} is not supported by the embedded Hub (only false)")
        if "visibility" in body and body["visibility"] not in ("public", "private"):
            raise BadRequestError(f"settings: visibility {body['visibility']!r} must be 'public' or 'private'")
        if "private" in body and not isinstance(body["private"], bool):
            raise BadRequestError(f"settings: private {body['private']!r} must be a JSON boolean (true or false)")
        if "visibility" in body:
            self.storage.set_private(ref, body["visibility"] == "private")
        elif "private" in body:
            self.storage.set_private(ref, body["private"])
        return json_response({})

    def missing_namespace(self, req: Request, types: str, name: str) -> Response:
        raise RepoNotFoundError(f"Repository not found: {name!r} (embedded Hub repo ids are 'namespace/name')")

    def list_repos(self, req: Request, types: str) -> Response:
        author, search, wanted = req.param("author"), req.param("search"), req.query.get("filter", [])
        full = req.flag("full") or "siblings" in req.query.get("expand[]", [])
        out = []
        for ref in self.storage.list_repos(_TYPES[types]):
            if (author and ref.namespace != author) or (search and search.lower() not in ref.id.lower()):
                continue
            try:
                meta = self.storage.repo_meta(ref)
                if meta.private and (req.token is None or not req.token.can_read(ref.namespace)):
                    continue
                info = self._info_json(ref, meta, self._commit_at(ref, "main"), siblings=full)
            except RepoNotFoundError:  # deleted since it was listed
                continue
            if all(tag in info["tags"] for tag in wanted):
                out.append(info)
        return self._paginate(req, out, PAGE_SIZE)

    def repo_info(self, req: Request, types: str, ns: str, name: str, rev: str = "main") -> Response:
        ref, meta = self._readable(req, types, ns, name)
        return json_response(self._info_json(ref, meta, self._commit_at(ref, rev), siblings=True))

    def _info_json(self, ref: RepoRef, meta: RepoMeta, commit: Commit, *, siblings: bool) -> dict[str, Any]:
        info: dict[str, Any] = {
            "_id": meta.uid,
            "id": ref.id,
            "author": ref.namespace,
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": meta.created_at,
            "private": meta.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "usedStorage": sum(e.size for e in commit.tree.values()),
        }
        if siblings:
            info["siblings"] = [_sibling_json(p, e) for p, e in sorted(commit.tree.items())]
        card = self._readme_card(ref, commit)
        if card is not None:
            info["cardData"] = card
            tags = card.get("tags")
            info["tags"] = [str(t) for t in tags] if isinstance(tags, list) else []
            if ref.type == "model":
                info.update({k: card[k] for k in ("library_name", "pipeline_tag") if isinstance(card.get(k), str)})
        if ref.type == "model":
            info["modelId"] = ref.id
        if ref.type == "space":
            info["sdk"] = meta.sdk
        return info

    def _readme_card(self, ref: RepoRef, commit: Commit) -> dict[str, Any] | None:
        entry = commit.tree.get("README.md")
        if entry is None or entry.size > MAX_CARD_BYTES:
            return None
        text = self.storage.blob_path(ref, entry.sha256).read_bytes().decode("utf-8", "replace")
        try:
            return _card_metadata(text)
        except (yaml.YAMLError, ValueError) as exc:
            log.debug("README.md of %s at %s has unreadable metadata: %s", ref, commit.id, exc)
            return None

    # -- refs ---------------------------------------------------------------------------------

    def refs(self, req: Request, types: str, ns: str, name: str) -> Response:
        ref, _ = self._readable(req, types, ns, name)
        refs = self.storage.refs(ref)
        out: dict[str, Any] = {
            "branches": [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in sorted(refs.branches.items())
            ],
            "tags": [
                {"name": t, "ref": f"refs/tags/{t}", "targetCommit": v["commit"]} for t, v in sorted(refs.tags.items())
            ],
            "converts": [],
        }
        if req.flag("include_prs"):
            out["pullRequests"] = []
        return json_response(out)

    def create_branch(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        ref, _ = self._writable(req, types, ns, name)
        start = req.read_json().get("startingPoint")
        if start is not None and not isinstance(start, str):
            raise BadRequestError(f"create branch: body field 'startingPoint' must be a revision string, not {start!r}")
        self.storage.create_branch(ref, rev, start)
        return json_response({})

    def delete_branch(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        ref, _ = self._writable(req, types, ns, name)
        self.storage.delete_branch(ref, rev)
        return json_response({})

    def create_tag(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        ref, _ = self._writable(req, types, ns, name)
        body = req.read_json()
        tag = body.get("tag")
        if not isinstance(tag, str):
            raise BadRequestError("create tag: body field 'tag' (a string) is required")
        self.storage.create_tag(ref, tag, rev, body.get("message"))
        return json_response({})

    def delete_tag(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        ref, _ = self._writable(req, types, ns, name)
        self.storage.delete_tag(ref, rev)
        return json_response({})

    def commits(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        ref, _ = self._readable(req, types, ns, name)
        history = [
            {
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "date": c.date,
                "parents": list(c.parents),
                "authors": [{"user": c.author}],
            }
            for c in self.storage.history(ref, self.storage.resolve(ref, rev))
        ]
        return self._paginate(req, history, PAGE_SIZE)

    # -- trees --------------------------------------------------------------------------------

    def tree(self, req: Request, types: str, ns: str, name: str, rev: str, path: str = "") -> Response:
        ref, _ = self._readable(req, types, ns, name)
        commit = self._commit_at(ref, rev)
        items = self.storage.list_tree(commit, path.strip("/"), recursive=req.flag("recursive"))
        expand = req.flag("expand")
        page = self._page_bounds(req, len(items), EXPANDED_PAGE_SIZE if expand else PAGE_SIZE)
        changes = self.storage.last_changes(ref, commit) if expand else {}
        rows = [_item_json(item, changes.get(item.path)) for item in items[page[0] : page[1]]]
        return self._page_response(req, rows, page, len(items))

    def paths_info(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        """Capped per request, like huggingface.co: an anonymous caller cannot ask for unbounded work."""
        ref, _ = self._readable(req, types, ns, name)
        commit = self._commit_at(ref, rev)
        fields = req.read_form_or_json()
        paths = fields.get("paths", [])
        if len(paths) > MAX_PATHS_INFO:
            raise BadRequestError(
                f"paths-info accepts at most {MAX_PATHS_INFO} paths per request, not {len(paths)}: "
                "send them in batches"
            )
        expand = str((fields.get("expand") or [False])[-1]).lower() in ("1", "true")
        changes = self.storage.last_changes(ref, commit) if expand else {}
        items = (self.storage.path_item(commit, str(path).strip("/")) for path in paths)
        return json_response([_item_json(item, changes.get(item.path)) for item in items if item is not None])

    def _page_bounds(self, req: Request, total: int, default: int) -> tuple[int, int]:
        try:
            start = int(req.param("cursor") or 0)
            limit = min(int(req.param("limit") or default), default)
        except ValueError:
            raise BadRequestError("'cursor' and 'limit' must be integers") from None
        return max(start, 0), min(max(start, 0) + max(limit, 1), total)

    def _page_response(self, req: Request, rows: list[Any], page: tuple[int, int], total: int) -> Response:
        headers = {}
        if page[1] < total:
            params = {k: v[-1] for k, v in req.query.items()}
            params["cursor"] = str(page[1])
            headers["Link"] = f'<{req.base_url}{req.path}?{urlencode(params)}>; rel="next"'
        return json_response(rows, headers=headers)

    def _paginate(self, req: Request, items: list[Any], default: int) -> Response:
        page = self._page_bounds(req, len(items), default)
        return self._page_response(req, items[page[0] : page[1]], page, len(items))

    # -- uploads ------------------------------------------------------------------------------

    def preupload(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        ref, _ = self._writable(req, types, ns, name)
        if req.flag("create_pr"):
            raise BadRequestError("pull requests (create_pr) are not supported by the embedded Hub; commit to a branch")
        commit = self._commit_at(ref, rev)
        files = req.read_json().get("files")
        if not isinstance(files, list):
            raise BadRequestError("preupload: body field 'files' (a list) is required")
        out = []
        for i, f in enumerate(files):
            try:
                path, size = str(f["path"]), int(f["size"])
                sample = base64.b64decode(f.get("sample") or "")
            except (KeyError, TypeError, ValueError, binascii.Error) as exc:
                raise BadRequestError(
                    f"preupload file #{i}: needs 'path', 'size' and a base64 'sample' ({exc})"
                ) from None
            existing = commit.tree.get(path)
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if should_use_lfs(path, size, sample) else "regular",
                    "shouldIgnore": False,
                    "oid": existing.etag if existing else None,
                }
            )
        return json_response({"files": out, "commitOid": commit.id})

    def commit(self, req: Request, types: str, ns: str, name: str, rev: str) -> Response:
        ref, token = self._writable(req, types, ns, name)
        if req.flag("create_pr"):
            raise BadRequestError("pull requests (create_pr) are not supported by the embedded Hub; commit to a branch")
        # The blobs below go to this instance of the repository: the commit is refused if it is replaced meanwhile.
        repo_uid = self.storage.repo_meta(ref).uid
        lines = _commit_lines(req.body)
        header = self._commit_header(next(lines, b""))
        operations = [self._commit_line(ref, n, line) for n, line in enumerate(lines, start=2) if line.strip()]
        commit = self.storage.apply_commit(
            ref,
            rev,
            operations,
            title=str(header.get("summary") or "update"),
            message=str(header.get("description") or ""),
            author=token.name,
            parent_commit=header.get("parentCommit"),
            repo_uid=repo_uid,
        )
        log.info("commit %s on %s@%s: %d operation(s)", commit.id[:10], ref, rev, len(operations))
        return json_response(
            {
                "success": True,
                "commitOid": commit.id,
                "pullRequestUrl": None,
                "commitUrl": f"{self._web_url(req, ref)}/commit/{commit.id}",
            }
        )

    @staticmethod
    def _commit_header(line: bytes) -> dict[str, Any]:
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            item = None
        if not isinstance(item, dict) or item.get("key") != "header" or not isinstance(item.get("value"), dict):
            raise BadRequestError('commit line 1 must be {"key": "header", "value": {"summary": ...}}')
        return item["value"]

    def _commit_line(self, ref: RepoRef, n: int, line: bytes) -> Operation:
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            path = str(value["path"])
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as exc:
            raise BadRequestError(
                f"commit line {n}: expected {{'key': ..., 'value': {{'path': ...}}}} ({exc!r})"
            ) from None
        where = f"commit line {n} ({key} {path!r})"
        try:
            if key in ("file", "lfsFile"):
                validate_path(path)  # here, so the error names the line and nothing is stored for it
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise BadRequestError(f"encoding {value.get('encoding')!r} is not 'base64'")
                data = base64.b64decode(value["content"], validate=True)
                if len(data) > MAX_INLINE_FILE:
                    raise _inline_too_large(f"{where} has {len(data)} bytes")
                return AddFile(path, self.storage.store_bytes(ref, data))
            if key == "lfsFile":
                if value.get("algo", "sha256") != "sha256":
                    raise BadRequestError(f"algo {value.get('algo')!r} is not 'sha256'")
                size = value.get("size")
                return AddFile(
                    path, self.storage.lfs_entry(ref, str(value["oid"]), int(size) if size is not None else None)
                )
            if key == "deletedFile":
                return DeleteFile(path)
            if key == "deletedFolder":
                return DeleteFolder(path)
            raise BadRequestError(f"unknown operation {key!r} (expected file, lfsFile, deletedFile, deletedFolder)")
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            if isinstance(exc, HubError):
                raise type(exc)(f"{where}: {exc}") from None
            raise BadRequestError(f"{where}: malformed value ({exc!r})") from None

    # -- LFS ----------------------------------------------------------------------------------

    def _upload_signature(self, ref: RepoRef, oid: str, size: int, expires: int) -> str:
        message = f"{ref.type}\n{ref.id}\n{oid}\n{size}\n{expires}".encode()
        return hmac.new(self._upload_key, message, hashlib.sha256).hexdigest()

    def lfs_batch(self, req: Request, ns: str, name: str, types: str | None = None) -> Response:
        ref, _ = self._writable(req, types, ns, name)
        body = req.read_json()
        if body.get("operation") != "upload":
            raise BadRequestError(
                f"LFS batch operation {body.get('operation')!r} is not supported; downloads use /resolve"
            )
        objects = body.get("objects") or []
        if not isinstance(objects, list) or not all(isinstance(obj, dict) for obj in objects):
            raise BadRequestError("LFS batch: body field 'objects' must be a list of {\"oid\", \"size\"} objects")
        expires = int(time.time()) + UPLOAD_URL_TTL
        base = f"{req.base_url}/{ref.url_prefix}{ref.id}.git/info/lfs/objects"
        out = []
        for obj in objects:
            oid, size = obj.get("oid"), obj.get("size")
            if not (
                isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int) and size >= 0
            ):
                out.append(
                    {
                        "oid": str(oid),
                        "size": size if isinstance(size, int) else -1,
                        "error": {
                            "code": 422,
                            "message": "oid must be a sha256 hex digest and size a non-negative integer",
                        },
                    }
                )
            elif self.storage.has_blob(ref, oid, size):
                out.append({"oid": oid, "size": size})
            else:
                query = urlencode(
                    {"size": size, "expires": expires, "signature": self._upload_signature(ref, oid, size, expires)}
                )
                out.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{base}/{oid}?{query}", "expires_in": UPLOAD_URL_TTL},
                            "verify": {"href": f"{base}/verify"},
                        },
                    }
                )
        return json_response({"transfer": "basic", "objects": out}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, req: Request, ns: str, name: str, oid: str, types: str | None = None) -> Response:
        """Receive an LFS object; authorised by the signed URL the batch answer handed out."""
        ref = RepoRef.parse(_TYPES[types or "models"], f"{ns}/{name}")
        try:
            size, expires = int(req.param("size") or ""), int(req.param("expires") or "")
        except ValueError:
            raise auth.ForbiddenError(
                "upload URL is missing its size/expires/signature: ask the LFS batch endpoint"
            ) from None
        expected = self._upload_signature(ref, oid, size, expires)
        if not hmac.compare_digest(expected, req.param("signature") or "") or expires < time.time():
            raise auth.ForbiddenError("upload URL signature is invalid or expired: ask the LFS batch endpoint again")
        if self.storage.has_blob(ref, oid, size):
            return json_response({})
        chunks = iter(lambda: req.body.read(CHUNK_SIZE), b"")
        self.storage.write_blob(ref, chunks, sha256=oid, size=size)
        return json_response({})

    def lfs_verify(self, req: Request, ns: str, name: str, types: str | None = None) -> Response:
        ref, _ = self._writable(req, types, ns, name)
        body = req.read_json()
        if not self.storage.has_blob(ref, str(body.get("oid")), body.get("size")):
            raise UnprocessableError(
                f"LFS object sha256:{body.get('oid')} ({body.get('size')} bytes) is not stored in {ref}"
            )
        return json_response({})

    # -- downloads ----------------------------------------------------------------------------

    def resolve(self, req: Request, ns: str, name: str, rev: str, path: str, types: str | None = None) -> Response:
        ref, _ = self._readable(req, types, ns, name)
        commit = self._commit_at(ref, rev)
        entry = commit.tree.get(path)
        if entry is None:
            raise EntryNotFoundError(f"Entry not found: {path!r} at revision {rev} ({commit.id}) of {ref}")
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        span = _parse_range(req.headers.get("Range"), entry.size)
        status, (offset, length) = (200, (0, entry.size)) if span is None else (206, span)
        if span is not None:
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{entry.size}"
        try:
            blob = open(self.storage.blob_path(ref, entry.sha256), "rb")
        except FileNotFoundError:
            self._check_read(req, ref)  # a repository deleted since the commit was read is a 404
            raise HubError(f"{path!r} of {ref} at {commit.id} is damaged: its content is missing") from None
        stored = os.fstat(blob.fileno()).st_size
        if stored != entry.size:  # Content-Length would promise bytes that cannot be sent
            blob.close()
            raise HubError(f"{path!r} of {ref} at {commit.id} is damaged: {stored} bytes stored, {entry.size} recorded")
        return Response(status, headers, file=blob, offset=offset, length=length)
