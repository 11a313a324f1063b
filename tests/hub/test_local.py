"""Zero-setup helpers: finding or starting the background Hub, pointing clients at it, tokens."""

from __future__ import annotations

import json
import os
import sys

import datasets.config
import huggingface_hub.constants
import huggingface_hub.hf_api
import pytest
from huggingface_hub import HfApi

from alignsmith.hub.auth import TokenError, admin_token, create_token
from alignsmith.hub import local
from alignsmith.hub.local import HubStartError, configure_client_env, ensure_local_hub, stop_local_hub
from alignsmith.hub.storage import default_root
from alignsmith.hub.server import HubServer, HubServerError, read_state


def test_ensure_local_hub_starts_once_and_is_found_again(tmp_path):
    (tmp_path / "server.json").write_text(json.dumps({"pid": 1, "url": "http://127.0.0.1:9", "root": "elsewhere"}))
    hub = ensure_local_hub(tmp_path)
    try:
        assert hub.pid != os.getpid() and hub.url.startswith("http://127.0.0.1:")
        assert hub.token == admin_token(tmp_path) and hub.token
        again = ensure_local_hub(tmp_path)
        assert (again.pid, again.url) == (hub.pid, hub.url)
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo("alice/bg")
        assert (tmp_path / "repos" / "models" / "alice" / "bg" / "refs.json").exists()
        with pytest.raises(HubServerError, match="already using"):
            HubServer(tmp_path)  # one server per root
    finally:
        assert stop_local_hub(tmp_path) == hub.pid
    assert read_state(tmp_path) is None  # a clean stop removes server.json
    assert stop_local_hub(tmp_path) is None


def test_a_server_that_does_not_come_up_in_time_is_killed_and_reaped(tmp_path, monkeypatch):
    started = []

    def recording_popen(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    popen = local.subprocess.Popen
    monkeypatch.setattr(local.subprocess, "Popen", recording_popen)
    monkeypatch.setattr(local, "START_TIMEOUT_S", 0.0)
    with pytest.raises(HubStartError, match="did not start"):
        ensure_local_hub(tmp_path)
    assert len(started) == 1 and started[0].returncode is not None


def test_configure_client_env_repoints_imported_clients(hub, monkeypatch):
    for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_XET", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    for module, attrs in [
        (
            huggingface_hub.constants,
            ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_URL_HOSTS", "HF_HUB_DISABLE_XET", "HF_HUB_OFFLINE"),
        ),
        (datasets.config, ("HF_ENDPOINT", "HUB_DATASETS_URL", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
        (huggingface_hub.hf_api.api, ("endpoint",)),
    ]:
        for attr in attrs:
            monkeypatch.setattr(module, attr, getattr(module, attr))

    configure_client_env("http://localhost:1234/", None)
    assert os.environ["HF_ENDPOINT"] == "http://localhost:1234" and "HF_TOKEN" not in os.environ
    assert huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith("http://localhost:1234/{repo_id}")
    assert "localhost" in huggingface_hub.constants.HF_URL_HOSTS
    assert datasets.config.HUB_DATASETS_URL.startswith("http://localhost:1234/datasets/")
    assert huggingface_hub.hf_api.api.endpoint == "http://localhost:1234"

    configure_client_env(hub.url, hub.token)
    assert HfApi().whoami()["name"] == "admin"
    assert huggingface_hub.constants.HF_HUB_DISABLE_XET is True and os.environ["HF_TOKEN"] == hub.token


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNSMITH_HUB_ROOT", str(tmp_path / "hub"))
    assert default_root() == tmp_path / "hub"
    monkeypatch.delenv("ALIGNSMITH_HUB_ROOT")
    assert default_root().parts[-3:] == (".cache", "alignsmith", "hub")


def test_tokens_are_validated_and_picked_up_live(hub):
    with pytest.raises(TokenError, match="not '\\*' or a valid namespace"):
        create_token(hub.root, "dave", write=["bad namespace"])
    with pytest.raises(TokenError, match="list of namespaces, not the string 'dave'"):
        create_token(hub.root, "dave", write="dave")
    token = create_token(hub.root, "dave", write=["dave"])
    assert HfApi(token=token).whoami()["name"] == "dave"  # the running server re-reads tokens.json
    assert oct((hub.root / "tokens.json").stat().st_mode & 0o777) == "0o600"


def test_python_dash_m_server_reports_a_busy_root(hub):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "alignsmith.hub.server", "--root", str(hub.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "already using" in result.stderr
