"""Faults a hostile or unlucky client can inject: replaced repos, costly queries, bad paths and framing, a full disk."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid

import httpx
import pytest
from huggingface_hub import HfApi
from huggingface_hub._commit_api import FETCH_LFS_BATCH_SIZE
from huggingface_hub._local_folder import _validate_relative_filename
from huggingface_hub.errors import HfHubHTTPError

from alignsmith.hub import api as hub_api
from alignsmith.hub import storage as hub_storage
from alignsmith.hub.storage import AddFile, HubStorage, RepoRef

HEADER = {"key": "header", "value": {"summary": "test commit"}}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def file_line(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def post_commit(hub, repo: str, *lines: dict) -> httpx.Response:
    return httpx.post(
        f"{hub.url}/api/models/{repo}/commit/main",
        headers={"Authorization": f"Bearer {hub.token}", "Content-Type": "application/x-ndjson"},
        content=ndjson(HEADER, *lines),
        timeout=60,
    )


def read_all(conn: socket.socket) -> bytes:
    conn.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi()


# -- 1. a commit is bound to the repository instance it started on -------------------------------


def test_a_commit_to_a_repo_replaced_mid_body_is_refused(hub, api):
    repo = f"alice/{unique('ghost')}"
    api.create_repo(repo)
    contents = [os.urandom(100_000) for _ in range(8)]
    # The server reads the body 1 MB at a time: blank lines (which it skips) let it read the first file's
    # line while the others are not sent yet.
    padding = (b" " * 1023 + b"\n") * 1100
    first = ndjson(HEADER, file_line("part/0.txt", contents[0])) + padding
    rest = b"".join(ndjson(file_line(f"part/{i}.txt", c)) for i, c in enumerate(contents[1:], start=1))
    head = (
        f"POST /api/models/{repo}/commit/main HTTP/1.1\r\nHost: {hub.server.host}\r\n"
        f"Authorization: Bearer {hub.token}\r\nContent-Type: application/x-ndjson\r\n"
        f"Content-Length: {len(first) + len(rest)}\r\n\r\n"
    ).encode()
    with socket.create_connection((hub.server.host, hub.server.port), timeout=30) as conn:
        conn.sendall(head + first)
        first_blob = hashlib.sha256(contents[0]).hexdigest()
        wait_for(lambda: hub.server.storage.has_blob(RepoRef("model", repo), first_blob), what="the first blob")
        api.delete_repo(repo)
        api.create_repo(repo)
        conn.sendall(rest)
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 409"), answer[:300]
    assert b"deleted and created again" in answer
    assert api.list_repo_files(repo) == [".gitattributes"]


def test_an_upload_to_a_repo_deleted_meanwhile_is_a_404(hub, api):
    repo = f"alice/{unique('vanish')}"
    api.create_repo(repo)
    data = os.urandom(2 * hub_api.CHUNK_SIZE)
    oid = hashlib.sha256(data).hexdigest()
    batch = httpx.post(
        f"{hub.url}/{repo}.git/info/lfs/objects/batch",
        headers={"Authorization": f"Bearer {hub.token}"},
        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
    ).json()
    tmp = hub.root / "repos" / "models" / repo / "tmp"

    def body():
        yield data[: hub_api.CHUNK_SIZE]
        wait_for(lambda: tmp.exists() and any(p.stat().st_size for p in tmp.glob("*")), what="the upload")
        hub.server.storage.delete_repo(RepoRef("model", repo))
        yield data[hub_api.CHUNK_SIZE :]

    response = httpx.put(batch["objects"][0]["actions"]["upload"]["href"], content=body(), timeout=30)
    assert response.status_code == 404 and response.headers["X-Error-Code"] == "RepoNotFound"


# -- 2. paths-info and expanded listings cost the same whatever the history ---------------------


def test_paths_info_is_capped_per_request(hub, api):
    assert hub_api.MAX_PATHS_INFO >= FETCH_LFS_BATCH_SIZE  # what huggingface_hub sends in one request
    repo = f"alice/{unique('capped')}"
    api.create_repo(repo)
    url = f"{hub.url}/api/models/{repo}/paths-info/main"
    at_cap = [".gitattributes"] + [f"absent/{i}" for i in range(hub_api.MAX_PATHS_INFO - 1)]
    accepted = httpx.post(url, data={"paths": at_cap, "expand": True})  # anonymous, on a public repo
    assert accepted.status_code == 200 and [i["path"] for i in accepted.json()] == [".gitattributes"]
    refused = httpx.post(url, data={"paths": [*at_cap, "one-more"], "expand": True})
    assert refused.status_code == 400
    assert f"at most {hub_api.MAX_PATHS_INFO} paths" in refused.json()["error"]


def test_expanded_listings_do_not_walk_the_history(hub, api, monkeypatch):
    repo = f"alice/{unique('history')}"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=repo, commit_message="add a")
    api.upload_file(path_or_fileobj=b"b", path_in_repo="dir/b.txt", repo_id=repo, commit_message="add b")
    storage = hub.server.storage
    read, loaded = storage.commit, []

    def counting(ref: RepoRef, sha: str):
        loaded.append(sha)
        return read(ref, sha)

    monkeypatch.setattr(storage, "commit", counting)

    def expand() -> tuple[int, dict[str, str]]:
        loaded.clear()
        info = api.get_paths_info(repo, [".gitattributes", "a.txt", "dir", "dir/b.txt"], expand=True)
        tree = api.list_repo_tree(repo, recursive=True, expand=True)
        titles = {i.path: i.last_commit.title for i in [*info, *tree]}
        return len(loaded), titles

    short_history, titles = expand()
    assert titles == {".gitattributes": "initial commit", "a.txt": "add a", "dir": "add b", "dir/b.txt": "add b"}
    for i in range(12):
        api.upload_file(path_or_fileobj=str(i).encode(), path_in_repo="churn.txt", repo_id=repo, commit_message=f"c{i}")
    long_history, titles = expand()
    assert long_history == short_history
    assert titles["churn.txt"] == "c11" and titles["a.txt"] == "add a" and titles["dir"] == "add b"


def test_last_changes_are_derived_for_commits_stored_without_a_record(tmp_path):
    storage = HubStorage(tmp_path)
    ref = RepoRef("model", "alice/legacy")
    storage.create_repo(ref, private=False, author="alice")
    for title, path, data in [("c0", "a.txt", b"1"), ("c1", "d/b.txt", b"2"), ("c2", "a.txt", b"3")]:
        storage.apply_commit(
            ref,
            "main",
            [AddFile(path, storage.store_bytes(ref, data))],
            title=title,
            message="",
            author="alice",
            parent_commit=None,
        )

    def titles(store: HubStorage) -> dict[str, str]:
        head = store.commit(ref, store.resolve(ref, "main"))
        return {path: change.title for path, change in store.last_changes(ref, head).items()}

    expected = {".gitattributes": "initial commit", "a.txt": "c2", "d": "c1", "d/b.txt": "c1"}
    assert titles(storage) == expected
    shutil.rmtree(tmp_path / "repos" / "models" / "alice" / "legacy" / "changes")  # as stored by older versions
    assert titles(HubStorage(tmp_path)) == expected


# -- 3. paths every client refuses to download are refused when written ---------------------------


CLIENT_REFUSED = ["C:/x", "..\\..\\evil", "D:foo.txt", "dir/c:x", "\\\\server\\share\\x"]
ALSO_REFUSED = ["dir\\file.txt", f"{'x' * 252}.txt", f"dir/{'é' * 128}", "/abs.txt", "./a.txt", "a/../b.txt"]


@pytest.mark.parametrize("path", CLIENT_REFUSED + ALSO_REFUSED)
def test_paths_clients_cannot_download_are_refused(hub, api, path):
    if path in CLIENT_REFUSED:
        with pytest.raises(ValueError):
            _validate_relative_filename(path)
    repo = f"alice/{unique('paths')}"
    api.create_repo(repo)
    response = post_commit(hub, repo, file_line(path, b"x"))
    assert response.status_code == 400 and repr(path) in response.json()["error"]
    assert api.list_repo_files(repo) == [".gitattributes"]


def test_a_255_byte_file_name_is_accepted(hub, api):
    repo = f"alice/{unique('long')}"
    api.create_repo(repo)
    name = f"dir/{'x' * 251}.txt"
    assert post_commit(hub, repo, file_line(name, b"x")).status_code == 200
    assert api.list_repo_files(repo) == [".gitattributes", name]


# -- 4. bounded inputs, strict types and framing, clear errors ------------------------------------


def test_inline_files_are_capped_like_the_hub(hub, api, monkeypatch):
    assert hub_api.MAX_INLINE_FILE == 10 * 1024 * 1024
    repo = f"alice/{unique('inline')}"
    api.create_repo(repo)
    too_big = post_commit(hub, repo, file_line("big.txt", b"a" * (hub_api.MAX_INLINE_FILE + 1)))
    assert too_big.status_code == 413
    assert "'big.txt'" in too_big.json()["error"] and "LFS" in too_big.json()["error"]

    monkeypatch.setattr(hub_api, "MAX_INLINE_FILE", 1000)
    assert post_commit(hub, repo, file_line("small.txt", b"a" * 1000)).status_code == 200
    assert post_commit(hub, repo, file_line("over.txt", b"a" * 1001)).status_code == 413
    long_line = post_commit(hub, repo, file_line("huge.txt", b"a" * 200_000))  # refused before it is read whole
    assert long_line.status_code == 413 and "line 2 is over" in long_line.json()["error"]
    assert api.list_repo_files(repo) == [".gitattributes", "small.txt"]


def test_settings_fields_are_type_checked(hub, api):
    repo = f"alice/{unique('settings')}"
    api.create_repo(repo)
    url = f"{hub.url}/api/models/{repo}/settings"
    auth = {"Authorization": f"Bearer {hub.token}"}
    for body in [{"private": "false"}, {"private": 1}, {"visibility": True}, {"gated": 0}, {"gated": "auto"}, {"x": 1}]:
        response = httpx.put(url, headers=auth, json=body)
        assert response.status_code == 400, body
        assert list(body)[0] in response.json()["error"]
    assert api.repo_info(repo).private is False
    api.update_repo_settings(repo, private=True)
    assert api.repo_info(repo).private is True
    assert httpx.put(url, headers=auth, json={"private": False}).status_code == 200
    assert api.repo_info(repo).private is False


@pytest.mark.parametrize(
    "length", [b"abc", b"-1", b"+2", "\u0663".encode(), b"\xb3", b"2\r\nContent-Length: 3"], ids=repr
)
def test_a_malformed_content_length_is_a_400_not_a_second_request(hub, length):
    request = b"POST /api/validate-yaml HTTP/1.1\r\nHost: hub\r\nContent-Length: " + length + b"\r\n\r\n{}"
    smuggled = b"GET /api/embedded-hub HTTP/1.1\r\nHost: hub\r\n\r\n"
    with socket.create_connection((hub.server.host, hub.server.port), timeout=10) as conn:
        conn.sendall(request + smuggled)
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed Content-Length" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # the bytes after the headers were not served as a request


def test_deeply_nested_yaml_is_a_400_and_never_breaks_repo_info(hub, api):
    nested = "---\nlicense: " + "[" * 5000 + "]" * 5000 + "\n---\n"
    response = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": nested, "repoType": "model"})
    assert response.status_code == 400 and "nested too deeply" in response.json()["errors"][0]["message"]
    deep_json = httpx.post(f"{hub.url}/api/validate-yaml", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep_json.status_code == 400

    repo = f"alice/{unique('deep')}"
    api.create_repo(repo)
    assert post_commit(hub, repo, file_line("README.md", nested.encode())).status_code == 200
    assert api.model_info(repo).card_data is None


def test_a_full_disk_is_a_507_the_client_does_not_retry(hub, api, monkeypatch):
    repo = f"alice/{unique('full')}"
    api.create_repo(repo)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hub_storage, "atomic_write", disk_full)
    started = time.monotonic()
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert err.value.response.status_code == 507 and "disk is full" in str(err.value)
    assert time.monotonic() - started < 10
    monkeypatch.undo()
    assert api.list_repo_files(repo) == [".gitattributes"]
