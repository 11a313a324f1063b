"""The embedded Hub through the real huggingface_hub client: repos, commits, refs, downloads, errors, auth."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from alignsmith.hub import api as hub_api
from alignsmith.hub import server as hub_server
from alignsmith.hub.storage import RepoRef


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def make_folder(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi()


def test_model_repo_lifecycle_with_tags_branches_and_downloads(hub, api, tmp_path):
    repo = f"alice/{unique('tiny')}"
    api.create_repo(repo)
    weights_v1 = os.urandom(5000)
    folder = make_folder(
        tmp_path / "v1",
        {
            "config.json": b'{"hidden_size": 8}',
            "model.safetensors": weights_v1,
            "nested/notes.txt": b"first",
        },
    )
    v1 = api.upload_folder(folder_path=folder, repo_id=repo, commit_message="v1 weights")
    api.create_tag(repo, tag="v1", tag_message="first release")
    api.create_branch(repo, branch="exp/lr-1e-4", revision="v1")
    weights_v2 = os.urandom(6000)
    v2 = api.upload_file(
        path_or_fileobj=weights_v2, path_in_repo="model.safetensors", repo_id=repo, commit_message="v2 weights"
    )

    refs = api.list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": v2.oid, "exp/lr-1e-4": v1.oid}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", v1.oid)]
    assert api.list_repo_files(repo) == [".gitattributes", "config.json", "model.safetensors", "nested/notes.txt"]
    commits = api.list_repo_commits(repo)
    assert [c.title for c in commits] == ["v2 weights", "v1 weights", "initial commit"]
    assert [c.commit_id for c in commits[:2]] == [v2.oid, v1.oid]

    # Every revision form resolves to its own content.
    for revision, expected in [
        ("v1", weights_v1),
        (v1.oid, weights_v1),
        ("exp/lr-1e-4", weights_v1),
        ("main", weights_v2),
        (None, weights_v2),
    ]:
        path = hf_hub_download(repo, "model.safetensors", revision=revision)
        assert Path(path).read_bytes() == expected, revision
    snapshot = Path(snapshot_download(repo, revision="v1"))
    assert (snapshot / "model.safetensors").read_bytes() == weights_v1
    assert (snapshot / "nested" / "notes.txt").read_bytes() == b"first"

    info = api.model_info(repo, revision="v1", files_metadata=True)
    assert info.sha == v1.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights_v1).hexdigest()
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == len(b'{"hidden_size": 8}')

    fs = HfFileSystem()
    assert sorted(fs.ls(repo, detail=False)) == sorted(
        f"{repo}/{p}" for p in [".gitattributes", "config.json", "model.safetensors", "nested"]
    )
    with fs.open(f"{repo}@v1/model.safetensors", "rb") as f:
        f.seek(1000)
        assert f.read(100) == weights_v1[1000:1100]  # a ranged GET
    assert fs.read_bytes(f"{repo}/nested/notes.txt") == b"first"


def test_tree_listing_paginates_and_expands(hub, api, tmp_path):
    repo = f"alice/{unique('many')}"
    api.create_repo(repo)
    files = {f"shard/{i:03d}.txt": f"row {i}".encode() for i in range(60)}
    api.upload_folder(folder_path=make_folder(tmp_path, files), repo_id=repo, commit_message="add shards")
    api.upload_file(path_or_fileobj=b"changed", path_in_repo="shard/007.txt", repo_id=repo, commit_message="edit 7")

    # expand=True pages by 50, so this follows a Link header.
    entries = list(api.list_repo_tree(repo, path_in_repo="shard", expand=True))
    assert len(entries) == 60
    titles = {e.path: e.last_commit.title for e in entries}
    assert titles["shard/007.txt"] == "edit 7" and titles["shard/008.txt"] == "add shards"
    top = list(api.list_repo_tree(repo))
    assert sorted((e.path, type(e).__name__) for e in top) == [(".gitattributes", "RepoFile"), ("shard", "RepoFolder")]
    info = api.get_paths_info(repo, ["shard/001.txt", "shard", "absent.txt"])
    assert [(type(i).__name__, i.path) for i in info] == [("RepoFile", "shard/001.txt"), ("RepoFolder", "shard")]


def test_ranged_download_headers(hub, api):
    repo = f"alice/{unique('range')}"
    api.create_repo(repo)
    data = bytes(range(256)) * 4
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=repo)
    url = f"{hub.url}/{repo}/resolve/main/w.bin"
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["X-Repo-Commit"] == commit.oid
    assert head.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert int(head.headers["Content-Length"]) == len(data)
    partial = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.content == data[10:20]
    assert partial.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert httpx.get(url, headers={"Range": "bytes=-4"}).content == data[-4:]
    assert httpx.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


def test_deletes_commit_and_refs(hub, api):
    repo = f"alice/{unique('del')}"
    api.create_repo(repo)
    api.create_commit(
        repo,
        operations=[
            CommitOperationAdd("a/x.txt", b"x"),
            CommitOperationAdd("a/y.txt", b"y"),
            CommitOperationAdd("b.txt", b"b"),
        ],
        commit_message="three files",
    )
    api.create_commit(repo, operations=[CommitOperationDelete("a/")], commit_message="drop a/")
    assert api.list_repo_files(repo) == [".gitattributes", "b.txt"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", repo_id=repo)

    api.create_branch(repo, branch="scratch")
    api.create_tag(repo, tag="t1")
    api.delete_branch(repo, branch="scratch")
    api.delete_tag(repo, tag="t1")
    refs = api.list_repo_refs(repo)
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(repo, tag="t1")

    api.delete_repo(repo)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(repo)
    api.create_repo(repo)  # the name is free again, with a fresh history
    assert [c.title for c in api.list_repo_commits(repo)] == ["initial commit"]


def test_tags_are_immutable(hub, api):
    repo = f"alice/{unique('tags')}"
    api.create_repo(repo)
    api.create_tag(repo, tag="v1")
    first = api.list_repo_refs(repo).tags[0].target_commit
    api.upload_file(path_or_fileobj=b"new", path_in_repo="f.txt", repo_id=repo)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(repo, tag="v1")
    assert err.value.response.status_code == 409
    assert api.list_repo_refs(repo).tags[0].target_commit == first
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(repo, branch="exp")
        api.create_branch(repo, branch="exp")
    assert err.value.response.status_code == 409


def test_stale_parent_commit_is_refused(hub, api):
    repo = f"alice/{unique('stale')}"
    api.create_repo(repo)
    old = api.upload_file(path_or_fileobj=b"1", path_in_repo="f.txt", repo_id=repo).oid
    head = api.upload_file(path_or_fileobj=b"2", path_in_repo="f.txt", repo_id=repo).oid
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            repo, operations=[CommitOperationAdd("f.txt", b"3")], commit_message="late", parent_commit=old
        )
    assert err.value.response.status_code == 412
    assert api.repo_info(repo).sha == head
    assert (
        api.create_commit(
            repo, operations=[CommitOperationAdd("f.txt", b"3")], commit_message="fresh", parent_commit=head
        ).oid
        != head
    )


def test_missing_repo_revision_and_file_raise_hub_errors(hub, api):
    repo = f"alice/{unique('errs')}"
    api.create_repo(repo, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(f"alice/{unique('absent')}")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(repo)  # it is a dataset, not a model
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(repo, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(repo, repo_type="dataset", revision="refs/convert/parquet")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "README.md", repo_type="dataset", revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "README.md", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"alice/{unique('absent')}", "config.json")


def test_writes_need_a_token_with_write_scope(hub, api):
    repo = f"bob/{unique('scoped')}"
    api.create_repo(repo)
    bob = hub.make_token(write=["bob"], name="bob")
    reader = hub.make_token(read=["*"])
    for token, status in [(False, 401), ("hf_not_a_real_token", 401), (reader, 403)]:
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token=token).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
        assert err.value.response.status_code == status, token
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token=token).create_repo(f"bob/{unique('new')}")
        assert err.value.response.status_code == status, token
    assert api.list_repo_files(repo) == [".gitattributes"]

    bob_api = HfApi(token=bob)
    assert bob_api.whoami()["name"] == "bob"
    bob_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    assert bob_api.create_repo(unique("mine")).repo_id.startswith("bob/")  # defaults to the token's namespace
    with pytest.raises(HfHubHTTPError) as err:
        bob_api.create_repo(f"alice/{unique('theirs')}")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_a_real_token").whoami()
    assert err.value.response.status_code == 401


def test_private_repos_are_invisible_without_read_scope(hub, api):
    repo = f"carol/{unique('secret')}"
    api.create_repo(repo, private=True, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"hidden", path_in_repo="data.txt", repo_id=repo, repo_type="dataset")
    outsider = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError):
        outsider.dataset_info(repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, "data.txt", repo_type="dataset", token=False)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=hub.make_token(read=["someone-else"])).dataset_info(repo)
    carol_reader = HfApi(token=hub.make_token(read=["carol"]))
    assert carol_reader.dataset_info(repo).private is True
    assert Path(carol_reader.hf_hub_download(repo, "data.txt", repo_type="dataset")).read_bytes() == b"hidden"

    api.update_repo_settings(repo, private=False, repo_type="dataset")
    assert outsider.dataset_info(repo).private is False


def test_commit_payload_errors_name_the_line_and_path(hub, api):
    repo = f"alice/{unique('bad')}"
    api.create_repo(repo)
    url = f"{hub.url}/api/models/{repo}/commit/main"
    headers = {"Authorization": f"Bearer {hub.token}", "Content-Type": "application/x-ndjson"}

    def post(*lines: dict) -> httpx.Response:
        return httpx.post(url, headers=headers, content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))

    header = {"key": "header", "value": {"summary": "bad"}}
    missing = post(header, {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "a" * 64, "size": 3}})
    assert missing.status_code == 400
    assert "line 2" in missing.json()["error"] and "'w.bin'" in missing.json()["error"]
    escape = post(header, {"key": "file", "value": {"path": "../x", "content": base64.b64encode(b"x").decode()}})
    assert escape.status_code == 400 and "line 2 (file '../x')" in escape.json()["error"]
    assert post({"key": "file", "value": {}}).status_code == 400
    assert post(header, {"key": "file", "value": {"path": "x", "content": "!!not base64"}}).status_code == 400
    assert api.list_repo_files(repo) == [".gitattributes"]  # nothing half-applied


def test_lfs_upload_is_verified_against_its_oid(hub, api):
    repo = f"alice/{unique('lfs')}"
    api.create_repo(repo)
    data = os.urandom(1000)
    oid = hashlib.sha256(data).hexdigest()
    batch = httpx.post(
        f"{hub.url}/{repo}.git/info/lfs/objects/batch",
        headers={"Authorization": f"Bearer {hub.token}"},
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]},
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    assert httpx.put(href, content=os.urandom(1000)).status_code == 400  # wrong bytes
    assert httpx.put(href.replace("signature=", "signature=0"), content=data).status_code == 403
    assert httpx.put(href, content=data).status_code == 200
    again = httpx.post(
        f"{hub.url}/{repo}.git/info/lfs/objects/batch",
        headers={"Authorization": f"Bearer {hub.token}"},
        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
    ).json()
    assert "actions" not in again["objects"][0]  # already stored


def test_invalid_repo_ids_get_a_clear_400(hub):
    response = httpx.post(
        f"{hub.url}/api/repos/create",
        headers={"Authorization": f"Bearer {hub.token}"},
        json={"name": "bad name!", "organization": "alice"},
    )
    assert response.status_code == 400
    assert "bad name!" in response.json()["error"]


def test_card_metadata_is_validated_and_reported(hub, api, tmp_path):
    repo = f"alice/{unique('card')}"
    api.create_repo(repo, repo_type="dataset")
    card = b"---\nlicense: apache-2.0\ntags: [alignsmith]\n---\n# Card\n"
    api.upload_folder(
        folder_path=make_folder(tmp_path / "good", {"README.md": card}), repo_id=repo, repo_type="dataset"
    )
    info = api.dataset_info(repo)
    assert info.card_data.license == "apache-2.0" and info.tags == ["alignsmith"]
    broken = make_folder(tmp_path / "bad", {"README.md": b"---\nlicense: [unclosed\n---\n"})
    with pytest.raises(ValueError, match="Invalid metadata"):  # upload_folder asks /api/validate-yaml first
        api.upload_folder(folder_path=broken, repo_id=repo, repo_type="dataset")
    assert api.dataset_info(repo).sha == info.sha


def test_spaces_listing_and_filesystem_writes(hub, api):
    space = f"alice/{unique('demo')}"
    api.create_repo(space, repo_type="space", space_sdk="gradio")
    api.upload_file(path_or_fileobj=b"import gradio", path_in_repo="app.py", repo_id=space, repo_type="space")
    assert api.space_info(space).sdk == "gradio"
    assert Path(hf_hub_download(space, "app.py", repo_type="space")).read_bytes() == b"import gradio"

    repo = f"listed/{unique('model')}"
    api.create_repo(repo)
    api.create_repo(f"listed/{unique('hidden')}", private=True)
    assert [m.id for m in HfApi(token=False).list_models(author="listed")] == [repo]
    assert len(list(api.list_models(author="listed"))) == 2

    fs = HfFileSystem()
    with fs.open(f"{repo}/notes/new.txt", "wb") as f:  # commits on close
        f.write(b"written through fsspec")
    assert fs.cat(f"{repo}/notes/new.txt") == b"written through fsspec"
    assert fs.glob(f"{repo}/**/*.txt") == [f"{repo}/notes/new.txt"]
    assert fs.isdir(f"{repo}/notes") and not fs.exists(f"{repo}/nope")
    fs.rm(f"{repo}/notes/new.txt")
    assert api.list_repo_files(repo) == [".gitattributes"]


def test_pull_requests_are_refused_clearly(hub, api):
    repo = f"alice/{unique('nopr')}"
    api.create_repo(repo)
    with pytest.raises(HfHubHTTPError, match="create_pr"):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, create_pr=True)
    assert api.list_repo_files(repo) == [".gitattributes"]


def test_a_path_cannot_be_both_file_and_directory(hub, api):
    repo = f"alice/{unique('clash')}"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a", repo_id=repo)
    with pytest.raises(HfHubHTTPError, match="'a/b' would sit inside 'a'"):
        api.upload_file(path_or_fileobj=b"y", path_in_repo="a/b", repo_id=repo)
    assert api.list_repo_files(repo) == [".gitattributes", "a"]


def test_preupload_picks_lfs_for_binary_and_large_files(hub, api):
    repo = f"alice/{unique('modes')}"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo)
    files = [
        ("config.json", 2, b"{}"),
        ("notes.txt", 100, b"plain text"),
        ("big.txt", 11 * 1024 * 1024, b"text"),
        ("data/train.parquet", 10, b"PAR1"),
        ("img.PNG", 10, b"\x89PNG"),
        ("blob.dat", 10, b"a\0b"),
    ]
    response = httpx.post(
        f"{hub.url}/api/models/{repo}/preupload/main",
        headers={"Authorization": f"Bearer {hub.token}"},
        json={"files": [{"path": p, "size": n, "sample": base64.b64encode(s).decode()} for p, n, s in files]},
    )
    modes = {f["path"]: (f["uploadMode"], f["oid"]) for f in response.json()["files"]}
    assert modes == {
        "config.json": (
            "regular",
            api.get_paths_info(repo, "config.json")[0].blob_id,
        ),  # lets clients skip unchanged files
        "notes.txt": ("regular", None),
        "big.txt": ("lfs", None),
        "data/train.parquet": ("lfs", None),
        "img.PNG": ("lfs", None),
        "blob.dat": ("lfs", None),
    }


def test_a_damaged_blob_is_a_clear_error_not_a_hung_download(hub, api):
    repo = f"alice/{unique('damaged')}"
    api.create_repo(repo)
    data = os.urandom(4096)
    api.upload_file(path_or_fileobj=data, path_in_repo="w.bin", repo_id=repo)
    blob = hub.server.storage.blob_path(RepoRef("model", repo), hashlib.sha256(data).hexdigest())
    blob.write_bytes(data[:1000])  # cut short on disk, behind the server's back
    response = httpx.get(f"{hub.url}/{repo}/resolve/main/w.bin", timeout=10)
    assert response.status_code == 500
    assert "'w.bin'" in response.json()["error"] and "1000 bytes stored, 4096 recorded" in response.json()["error"]


def test_a_download_whose_client_is_gone_closes_its_file(hub, api, monkeypatch):
    repo = f"alice/{unique('gone')}"
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"weights", path_in_repo="w.bin", repo_id=repo)
    app = hub.server._httpd.app
    handle, responses = app.handle, []

    def recording_handle(req):
        responses.append(handle(req))
        return responses[-1]

    def client_gone(self):
        raise ConnectionResetError("the client hung up")

    monkeypatch.setattr(app, "handle", recording_handle)
    monkeypatch.setattr(hub_server._HubRequestHandler, "end_headers", client_gone)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{hub.url}/{repo}/resolve/main/w.bin", timeout=10)
    assert responses[0].file is not None and responses[0].file.closed


def test_an_oversized_form_body_is_refused_not_truncated(hub, api, monkeypatch):
    repo = f"alice/{unique('form')}"
    api.create_repo(repo)
    monkeypatch.setattr(hub_api, "MAX_JSON_BODY", 64)
    response = httpx.post(
        f"{hub.url}/api/models/{repo}/paths-info/main",
        headers={"Authorization": f"Bearer {hub.token}"},
        data={"paths": [".gitattributes", "x" * 100]},
    )
    assert response.status_code == 413


def test_a_repo_deleted_while_listing_is_left_out(hub, api, monkeypatch):
    kept, doomed = f"listing/{unique('kept')}", f"listing/{unique('doomed')}"
    api.create_repo(kept)
    api.create_repo(doomed)
    storage = hub.server.storage
    list_repos = storage.list_repos

    def list_then_delete(repo_type):
        refs = list_repos(repo_type)
        storage.delete_repo(RepoRef("model", doomed))
        return refs

    monkeypatch.setattr(storage, "list_repos", list_then_delete)
    assert [m.id for m in api.list_models(author="listing")] == [kept]


def test_malformed_branch_and_lfs_bodies_get_a_clear_400(hub, api):
    repo = f"alice/{unique('bodies')}"
    api.create_repo(repo)
    auth_header = {"Authorization": f"Bearer {hub.token}"}
    branch = httpx.post(f"{hub.url}/api/models/{repo}/branch/exp", headers=auth_header, json={"startingPoint": 5})
    assert branch.status_code == 400 and "startingPoint" in branch.json()["error"]
    batch = httpx.post(
        f"{hub.url}/{repo}.git/info/lfs/objects/batch",
        headers=auth_header,
        json={"operation": "upload", "objects": ["not an object"]},
    )
    assert batch.status_code == 400 and "'objects'" in batch.json()["error"]
    assert [b.name for b in api.list_repo_refs(repo).branches] == ["main"]


def send_raw(hub, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection, close the sending side, and return all the server answers."""
    with socket.create_connection((hub.server.host, hub.server.port), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_a_commit_body_cut_short_is_not_applied_in_part(hub, api):
    repo = f"alice/{unique('cut')}"
    api.create_repo(repo)
    lines = [
        {"key": "header", "value": {"summary": "two files"}},
        {"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(b"a").decode(), "encoding": "base64"}},
        {"key": "file", "value": {"path": "b.txt", "content": base64.b64encode(b"b").decode(), "encoding": "base64"}},
    ]
    encoded = [json.dumps(line).encode() + b"\n" for line in lines]
    head = (
        f"POST /api/models/{repo}/commit/main HTTP/1.1\r\nHost: {hub.server.host}\r\n"
        f"Authorization: Bearer {hub.token}\r\nContent-Type: application/x-ndjson\r\n"
        f"Content-Length: {sum(map(len, encoded))}\r\n\r\n"
    ).encode()
    # the client dies right after the first file's line: the body ends on a line boundary
    assert send_raw(hub, head + b"".join(encoded[:2])) == b""
    assert api.list_repo_files(repo) == [".gitattributes"]


def test_a_malformed_chunked_body_is_a_clear_400(hub):
    head = b"POST /api/validate-yaml HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = send_raw(hub, head + b"-5\r\n{}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed chunk size" in answer
