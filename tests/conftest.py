"""Test-wide environment: offline, quiet, single-threaded, and every Hub call on the embedded Hub.

The variables must be set before huggingface_hub is imported anywhere, which is why they live at
the top of conftest (pytest imports it before any test module).
"""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="alignsmith-test-hf-home-")
os.environ.update(
    {
        "HF_HOME": _HF_HOME,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # The embedded Hub is on loopback, so the clients must not be in offline mode.
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }
)

# --- embedded Hub fixture (HF_ENDPOINT / HF_TOKEN and the `hub` fixture) goes below ---

import atexit  # noqa: E402
import secrets  # noqa: E402
import socket  # noqa: E402
import shutil  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator, Sequence  # noqa: E402

import pytest  # noqa: E402

from alignsmith.hub.auth import admin_token, create_token  # noqa: E402
from alignsmith.hub.server import HubServer  # noqa: E402

# The server binds its port now (so HF_ENDPOINT is known before any client is imported) but only
# accepts connections once a test asks for the `hub` fixture; until then connections are refused.
_HUB_ROOT = Path(tempfile.mkdtemp(prefix="alignsmith-test-hub-"))
_HUB_SERVER = HubServer(_HUB_ROOT)
atexit.register(shutil.rmtree, _HUB_ROOT, ignore_errors=True)
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_ENDPOINT"] = _HUB_SERVER.url
_HUB_TOKEN = admin_token(_HUB_ROOT) or ""
os.environ["HF_TOKEN"] = _HUB_TOKEN


@dataclass(frozen=True)
class HubHandle:
    """The test session's embedded Hub: ``url``, storage ``root`` and an admin (write ``*``) ``token``."""

    url: str
    root: Path
    token: str
    server: HubServer

    def make_token(self, read: Sequence[str] = (), write: Sequence[str] = (), name: str | None = None) -> str:
        """A new token with the given namespace scopes (``"*"`` for all)."""
        return create_token(self.root, name or f"user-{secrets.token_hex(4)}", read=read, write=write)


@pytest.fixture(scope="session")
def hub() -> Iterator[HubHandle]:
    """The embedded Hub every client in the test session already points at (HF_ENDPOINT/HF_TOKEN)."""
    _HUB_SERVER.start()
    yield HubHandle(_HUB_SERVER.url, _HUB_ROOT, _HUB_TOKEN, _HUB_SERVER)
    _HUB_SERVER.stop()


@pytest.fixture(scope="session")
def serve(hub, tmp_path_factory) -> Iterator:
    """``serve(model)``: the base URL of a real OpenAI-compatible server, ``transformers serve`` on loopback, pinned
    to ``model`` (``repo@sha`` on the embedded Hub); one server per model, stopped at the end of the session."""
    import subprocess
    import sys
    import time

    import httpx

    for module in ("fastapi", "uvicorn", "openai"):
        pytest.importorskip(module, reason="transformers serve needs transformers[serving]")
    servers: dict[str, tuple[subprocess.Popen, str]] = {}

    def start(model: str) -> str:
        if model in servers:
            return servers[model][1]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = tmp_path_factory.mktemp("serve") / "serve.log"
        command = [str(Path(sys.executable).with_name("transformers")), "serve", model, "--host", "127.0.0.1",
                   "--port", str(port), "--device", "cpu", "--dtype", "float32"]
        with open(log, "wb") as out:  # the child inherits HF_ENDPOINT / HF_TOKEN: it reads the embedded Hub
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        servers[model] = server, f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not come up (exit {server.poll()}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return servers[model][1]
            except httpx.TransportError:
                pass
            time.sleep(0.5)

    yield start
    for server, _ in servers.values():
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
