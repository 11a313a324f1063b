"""Zero-setup use of the embedded Hub: find (or start) the server for a root, point clients at it.

Typical use::

    hub = ensure_local_hub()                 # ~/.cache/alignsmith/hub, or ALIGNSMITH_HUB_ROOT
    configure_client_env(hub.url, hub.token)
    HfApi().create_repo("alice/tiny")        # goes to the embedded Hub

The server started here is a detached background process (``python -m alignsmith.hub.server``)
that outlives the caller, so later runs reuse it; it records itself in ``<root>/server.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from alignsmith.errors import AlignsmithError
from alignsmith.files import file_lock
from alignsmith.hub.auth import admin_token
from alignsmith.hub.server import read_state
from alignsmith.hub.storage import default_root

LOG_FILE = "server.log"
START_TIMEOUT_S = 60.0


class HubStartError(AlignsmithError):
    """The background server did not come up; the message carries the end of its log."""


@dataclass(frozen=True)
class LocalHub:
    url: str
    token: str | None  # the root's admin token (None if the token file has none)
    root: Path
    pid: int
    started: bool = False  # this call started it (it keeps running in the background afterwards)


def _serves_root(url: str, root: Path) -> bool:
    """Whether an embedded Hub for ``root`` answers at ``url`` (not a stale file or another server)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(f"{url}/api/embedded-hub", timeout=2) as response:
            return json.load(response).get("root") == str(root)
    except (OSError, ValueError):
        return False


def _running(root: Path) -> LocalHub | None:
    state = read_state(root)
    if state and isinstance(state.get("url"), str) and _serves_root(state["url"], root):
        return LocalHub(state["url"], admin_token(root), root, int(state["pid"]))
    return None


def ensure_local_hub(root: Path | None = None) -> LocalHub:
    """The embedded Hub serving ``root`` (default: :func:`default_root`), started if needed."""
    root = Path(root or default_root()).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / "ensure.lock"):  # two callers racing start one server
        hub = _running(root)
        if hub is not None:
            return hub
        with open(root / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "alignsmith.hub.server", "--root", str(root), "--port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            hub = _running(root)
            if hub is not None and hub.pid == process.pid:
                return dataclasses.replace(hub, started=True)
            if process.poll() is not None:
                break
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()  # reap it: a caller that lives on must not collect zombies
        tail = (root / LOG_FILE).read_text(errors="replace")[-2000:]
        raise HubStartError(f"the embedded Hub for {root} did not start (log {root / LOG_FILE}):\n{tail}")


def stop_local_hub(root: Path | None = None, timeout: float = 10.0) -> int | None:
    """Stop the background embedded Hub serving ``root``; returns its pid, or None if none was running."""
    root = Path(root or default_root()).expanduser().resolve()
    hub = _running(root)
    if hub is None:
        return None
    os.kill(hub.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while read_state(root) is not None and time.monotonic() < deadline:  # the server removes it on exit
        time.sleep(0.05)
    return hub.pid


def configure_client_env(url: str, token: str | None, disable_xet: bool = True) -> None:
    """Point huggingface_hub, datasets and transformers in this process (and its children) at ``url``.

    Sets ``HF_ENDPOINT``, ``HF_TOKEN`` (removed when ``token`` is None, so no other Hub's token
    leaks to ``url``), ``HF_HUB_DISABLE_XET`` and ``HF_HUB_OFFLINE=0``, and patches the copies
    huggingface_hub and datasets made of them at import. Setting the variables before those
    libraries are imported remains the reliable path: a module that copied a value into its own
    namespace at import time is beyond reach here.
    """
    url = url.rstrip("/")
    os.environ.update(
        {
            "HF_ENDPOINT": url,
            "HF_HUB_DISABLE_XET": "1" if disable_xet else "0",
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
        }
    )
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(name, None)
    if token is not None:
        os.environ["HF_TOKEN"] = token

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.ENDPOINT = url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_URL_HOSTS = frozenset(constants.HF_URL_HOSTS | {urlsplit(url).hostname or ""})
        constants.HF_HUB_DISABLE_XET = disable_xet
        constants.HF_HUB_OFFLINE = False
    hf_api = sys.modules.get("huggingface_hub.hf_api")
    if hf_api is not None:
        hf_api.api.endpoint = url  # the module-level HfApi behind huggingface_hub.create_repo & co.
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_ENDPOINT = url
        datasets_config.HUB_DATASETS_URL = url + "/datasets/{repo_id}/resolve/{revision}/{path}"
        datasets_config.HF_HUB_OFFLINE = False
        datasets_config.HF_DATASETS_OFFLINE = False
