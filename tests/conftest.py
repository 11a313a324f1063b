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
