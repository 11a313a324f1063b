"""Nothing the embedded Hub acknowledged is lost: restarts, killed uploads, crashes, concurrent commits."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from alignsmith.hub.auth import admin_token
from alignsmith.hub.server import HubServer, read_state
from alignsmith.hub.storage import AddFile, HubStorage, RepoRef

# Uploads a file through the real client, reading it slowly so a test can kill someone mid-transfer.
SLOW_CLIENT = """
import io, sys, time
from huggingface_hub import HfApi

class SlowReader(io.BufferedReader):
    def read(self, size=-1):
        time.sleep(0.01)
        return super().read(size)

HfApi().upload_file(path_or_fileobj=SlowReader(io.FileIO(sys.argv[1])), path_in_repo="big.bin", repo_id=sys.argv[2])
"""
BIG_FILE_BYTES = 24 * 1024 * 1024


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def partial_upload(repo_dir: Path) -> bool:
    return any(p.stat().st_size > 0 for p in (repo_dir / "tmp").glob("*")) if (repo_dir / "tmp").exists() else False


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "big.bin"
    data = os.urandom(BIG_FILE_BYTES)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def start_slow_client(big: Path, repo: str, endpoint: str, token: str) -> subprocess.Popen:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": token}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLIENT, str(big), repo],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_restart_keeps_every_revision(tmp_path):
    root = tmp_path / "hub"
    repo = f"alice/{unique('durable')}"
    with HubServer(root) as server:
        api = HfApi(endpoint=server.url, token=admin_token(root))
        api.create_repo(repo)
        v1 = api.upload_file(path_or_fileobj=b"weights v1", path_in_repo="w.bin", repo_id=repo).oid
        api.create_tag(repo, tag="v1")
        api.create_branch(repo, branch="exp")
        v2 = api.upload_file(path_or_fileobj=b"weights v2", path_in_repo="w.bin", repo_id=repo).oid
        refs_before = api.list_repo_refs(repo)

    with HubServer(root) as server:
        api = HfApi(endpoint=server.url, token=admin_token(root))
        assert api.list_repo_refs(repo) == refs_before
        cache = tmp_path / "cache"
        for revision, expected in [
            ("v1", b"weights v1"),
            (v1, b"weights v1"),
            ("exp", b"weights v1"),
            (v2, b"weights v2"),
            ("main", b"weights v2"),
        ]:
            path = api.hf_hub_download(repo, "w.bin", revision=revision, cache_dir=cache)
            assert Path(path).read_bytes() == expected, revision
        assert [c.commit_id for c in api.list_repo_commits(repo)][:2] == [v2, v1]
        assert api.upload_file(path_or_fileobj=b"v3", path_in_repo="w.bin", repo_id=repo, parent_commit=v2).oid


def test_client_killed_mid_upload_leaves_previous_revision(hub, big_file):
    api = HfApi()
    repo = f"alice/{unique('killed-client')}"
    api.create_repo(repo)
    before = api.upload_file(path_or_fileobj=b"small v1", path_in_repo="v1.txt", repo_id=repo).oid
    repo_dir = hub.root / "repos" / "models" / repo

    client = start_slow_client(big_file[0], repo, hub.url, hub.token)
    try:
        wait_for(lambda: partial_upload(repo_dir), what="the upload to start streaming")
    finally:
        client.kill()
        client.wait()
    wait_for(lambda: not any((repo_dir / "tmp").glob("*")), 10, "the server to drop the partial upload")

    assert api.repo_info(repo).sha == before
    assert api.list_repo_files(repo) == [".gitattributes", "v1.txt"]
    assert Path(api.hf_hub_download(repo, "v1.txt")).read_bytes() == b"small v1"
    assert not HubStorage(hub.root).has_blob(RepoRef("model", repo), big_file[1])
    # The interrupted upload poisons nothing: the same file uploads cleanly afterwards.
    api.upload_file(path_or_fileobj=str(big_file[0]), path_in_repo="big.bin", repo_id=repo)
    assert api.model_info(repo, files_metadata=True).siblings[1].lfs.sha256 == big_file[1]


def test_server_killed_mid_upload_restarts_with_previous_revision(tmp_path, big_file):
    root = tmp_path / "hub"
    repo = f"alice/{unique('killed-server')}"
    server = subprocess.Popen(
        [sys.executable, "-m", "alignsmith.hub.server", "--root", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = None
    try:
        state = wait_for(lambda: read_state(root), 30, "server.json")
        token = admin_token(root)
        api = HfApi(endpoint=state["url"], token=token)
        api.create_repo(repo)
        before = api.upload_file(path_or_fileobj=b"small v1", path_in_repo="v1.txt", repo_id=repo).oid
        client = start_slow_client(big_file[0], repo, state["url"], token)
        wait_for(lambda: partial_upload(root / "repos" / "models" / repo), what="the upload to start streaming")
        server.send_signal(signal.SIGKILL)
        server.wait()
    finally:
        for process in (server, client):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    assert partial_upload(root / "repos" / "models" / repo)  # the dead server left its temp file behind
    with HubServer(root) as restarted:
        api = HfApi(endpoint=restarted.url, token=token)
        assert api.repo_info(repo).sha == before
        assert api.list_repo_files(repo) == [".gitattributes", "v1.txt"]
        assert Path(api.hf_hub_download(repo, "v1.txt", cache_dir=tmp_path / "cache")).read_bytes() == b"small v1"
        assert not any((root / "repos" / "models" / repo / "tmp").glob("*"))
        assert read_state(root)["url"] == restarted.url


def test_crash_before_ref_update_keeps_previous_head(tmp_path, monkeypatch):
    storage = HubStorage(tmp_path)
    ref = RepoRef("model", "alice/crash")
    storage.create_repo(ref, private=False, author="alice")
    head = storage.resolve(ref, "main")

    def crash(*args, **kwargs):
        raise OSError("simulated power loss")

    monkeypatch.setattr(HubStorage, "_write_refs", crash)
    with pytest.raises(OSError):
        storage.apply_commit(
            ref,
            "main",
            [AddFile("x.txt", storage.store_bytes(ref, b"x"))],
            title="lost",
            message="",
            author="alice",
            parent_commit=None,
        )
    monkeypatch.undo()
    reopened = HubStorage(tmp_path)
    assert reopened.resolve(ref, "main") == head
    assert list(reopened.commit(ref, head).tree) == [".gitattributes"]


def test_a_name_stays_usable_after_an_upload_raced_its_deletion(tmp_path, monkeypatch):
    storage = HubStorage(tmp_path)
    ref = RepoRef("model", "alice/raced")
    storage.create_repo(ref, private=False, author="alice")
    repo_meta = HubStorage.repo_meta

    def checked_then_deleted(self: HubStorage, checked: RepoRef):
        meta = repo_meta(self, checked)
        monkeypatch.setattr(HubStorage, "repo_meta", repo_meta)
        self.delete_repo(checked)  # between the upload's check and its write
        return meta

    monkeypatch.setattr(HubStorage, "repo_meta", checked_then_deleted)
    storage.store_bytes(ref, b"a late inline upload")
    assert storage.list_repos("model") == []

    storage.create_repo(ref, private=False, author="alice")
    assert list(storage.commit(ref, storage.resolve(ref, "main")).tree) == [".gitattributes"]


def test_a_commit_waits_for_the_sync_that_covers_its_blobs(tmp_path, monkeypatch):
    # Inline blobs are made durable by one os.sync per commit. A commit whose blobs a concurrent
    # sync is still flushing must wait for it, not become visible with its blobs still in flight.
    storage = HubStorage(tmp_path)
    first, second = RepoRef("model", "alice/first"), RepoRef("model", "alice/second")
    for ref in (first, second):
        storage.create_repo(ref, private=False, author="alice")
    before = storage.resolve(second, "main")
    syncing, release = threading.Event(), threading.Event()

    def slow_sync() -> None:
        syncing.set()
        release.wait(10)

    monkeypatch.setattr(os, "sync", slow_sync)
    entries = {ref: storage.store_bytes(ref, f"{ref.id} data".encode()) for ref in (first, second)}

    def commit(ref: RepoRef) -> None:
        storage.apply_commit(
            ref, "main", [AddFile("f.txt", entries[ref])], title="t", message="", author="alice", parent_commit=None
        )

    threads = [threading.Thread(target=commit, args=(ref,)) for ref in (first, second)]
    threads[0].start()
    assert syncing.wait(10)  # the first commit's sync covers both blobs and is still running
    threads[1].start()
    threads[1].join(0.5)
    try:
        assert threads[1].is_alive() and storage.resolve(second, "main") == before
    finally:
        release.set()
        for t in threads:
            t.join()
    assert storage.resolve(second, "main") != before


def test_concurrent_commits_never_lose_an_update(hub):
    api = HfApi()
    repo = f"alice/{unique('race')}"
    api.create_repo(repo)

    def writer(name: str) -> None:
        for i in range(8):
            api.upload_file(path_or_fileobj=f"{name} {i}".encode(), path_in_repo=f"{name}/{i}.txt", repo_id=repo)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = api.list_repo_files(repo)
    assert sorted(f for f in files if f != ".gitattributes") == sorted(f"{n}/{i}.txt" for n in "ab" for i in range(8))
    assert len(api.list_repo_commits(repo)) == 17  # 16 uploads in some order, plus the initial commit

    head = api.repo_info(repo).sha
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def racer(name: str) -> None:
        barrier.wait()
        try:
            outcomes.append(
                api.create_commit(
                    repo,
                    operations=[CommitOperationAdd("same.txt", name.encode())],
                    commit_message=name,
                    parent_commit=head,
                ).oid
            )
        except HfHubHTTPError as exc:
            outcomes.append(exc.response.status_code)

    racers = [threading.Thread(target=racer, args=(n,)) for n in ("x", "y")]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    assert sorted(outcomes, key=str).count(412) == 1
    winner = next(o for o in outcomes if o != 412)
    assert api.repo_info(repo).sha == winner
