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
