"""Access tokens for the embedded Hub, kept in ``<root>/tokens.json``.

The file looks like::

    {"tokens": [{"token": "hf_...", "name": "alice", "read": ["*"], "write": ["alice", "org"]}]}

Scopes are namespaces (``*`` for all); write implies read. The token's ``name`` is the user it
stands for: ``whoami`` reports it and a repository created without a namespace goes there.
Public repositories are readable without a token; private ones answer "not found" to anyone
who cannot read them, as huggingface.co does, so their existence does not leak.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alignsmith.errors import AlignsmithError
from alignsmith.files import atomic_write_json, file_lock
from alignsmith.hub.storage import HubError, RepoNotFoundError, RepoRef

TOKEN_FILE = "tokens.json"
ADMIN_NAME = "admin"
ALL_NAMESPACES = "*"


class TokenError(AlignsmithError):
    """A token request that cannot be honoured (bad name or scope)."""


class UnauthorizedError(HubError):
    status = 401


class ForbiddenError(HubError):
    status = 403


@dataclass(frozen=True)
class Token:
    token: str
    name: str
    read: tuple[str, ...]
    write: tuple[str, ...]

    def can_read(self, namespace: str) -> bool:
        return self.can_write(namespace) or ALL_NAMESPACES in self.read or namespace in self.read

    def can_write(self, namespace: str) -> bool:
        return ALL_NAMESPACES in self.write or namespace in self.write


def token_file(root: Path) -> Path:
    return Path(root) / TOKEN_FILE


def _check_scopes(field: str, scopes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):  # iterating it would grant its letters as namespaces
        raise TokenError(f"token {field} scopes must be a list of namespaces, not the string {scopes!r}")
    for scope in scopes:
        if scope != ALL_NAMESPACES:
            try:
                RepoRef.parse("model", f"{scope}/x")
            except ValueError:
                raise TokenError(f"token {field} scope {scope!r} is not '*' or a valid namespace") from None
    return tuple(scopes)


def _load(root: Path) -> list[dict]:
    path = token_file(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as exc:
        raise TokenError(f"{path} is not valid JSON: {exc}") from exc
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list):
        raise TokenError(f"{path} must hold an object with a 'tokens' list")
    for i, item in enumerate(tokens):
        for key in ("token", "name"):
            if not isinstance(item, dict) or not isinstance(item.get(key), str):
                raise TokenError(f"{path}: token #{i} has no string field {key!r}")
        for key in ("read", "write"):
            if not isinstance(item.get(key, []), list):
                raise TokenError(f"{path}: token #{i} ({item['name']!r}) field {key!r} must be a list of namespaces")
    return tokens


def _save(root: Path, tokens: list[dict]) -> None:
    path = token_file(root)
    atomic_write_json(path, {"tokens": tokens})
    os.chmod(path, 0o600)


def _new_secret() -> str:
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


def create_token(root: Path, name: str, read: Sequence[str] = (), write: Sequence[str] = ()) -> str:
    """Add a token to ``root``'s token file and return its secret.

    ``read``/``write`` are namespaces (``"*"`` for all). A running server picks the new
    token up on its next request.
    """
    try:
        RepoRef.parse("model", f"{name}/x")
    except ValueError:
        raise TokenError(f"token name {name!r} must be a valid namespace (letters, digits, '-', '_', '.')") from None
    entry = {
        "token": _new_secret(),
        "name": name,
        "read": list(_check_scopes("read", read)),
        "write": list(_check_scopes("write", write)),
    }
    with file_lock(Path(root) / "tokens.lock"):
        tokens = _load(root)
        tokens.append(entry)
        _save(root, tokens)
    return entry["token"]


def ensure_admin_token(root: Path) -> str | None:
    """On a root without a token file, create one holding a single admin token (write ``*``).

    Returns the new token, or None when the file already existed (it is never rewritten).
    """
    with file_lock(Path(root) / "tokens.lock"):
        if token_file(root).exists():
            return None
        secret = _new_secret()
        _save(root, [{"token": secret, "name": ADMIN_NAME, "read": [ALL_NAMESPACES], "write": [ALL_NAMESPACES]}])
        return secret


def admin_token(root: Path) -> str | None:
    """The first token that can write everywhere, if the token file has one."""
    for item in _load(root):
        if ALL_NAMESPACES in item.get("write", []):
            return item["token"]
    return None


class TokenStore:
    """Looks tokens up for the server, re-reading the file when it changes on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: list[Token] = []

    def _current(self) -> list[Token]:
        try:
            st = token_file(self.root).stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._tokens = [
                    Token(t["token"], t["name"], tuple(t.get("read", [])), tuple(t.get("write", [])))
                    for t in _load(self.root)
                ]
                self._stamp = stamp
            return self._tokens

    def authenticate(self, secret: str | None) -> Token | None:
        """The token for ``secret``; None for anonymous requests; 401 for an unknown secret."""
        if not secret:
            return None
        for token in self._current():
            if hmac.compare_digest(token.token.encode(), secret.encode()):
                return token
        raise UnauthorizedError("Invalid credentials in Authorization header")


def require_read(token: Token | None, ref: RepoRef, private: bool) -> None:
    if private and (token is None or not token.can_read(ref.namespace)):
        raise RepoNotFoundError(f"Repository not found: {ref}")


def require_write(token: Token | None, namespace: str) -> Token:
    if token is None:
        raise UnauthorizedError(f"A token with write access to namespace {namespace!r} is required")
    if not token.can_write(namespace):
        raise ForbiddenError(f"token {token.name!r} has no write access to namespace {namespace!r}")
    return token
