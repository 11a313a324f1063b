"""Build the app from a Space config and serve it: the entry point of the Space folder's ``app.py``."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from spaces.app import build_demo
from spaces.config import CONFIG_ENV, CONFIG_FILENAME, load_space_config
from spaces.source import HubSource


def demo_from_config(path: str | Path | None = None) -> gr.Blocks:
    """The app over the repos the config at ``path`` names ($ALIGNSMITH_SPACE_CONFIG, else ./space.yaml)."""
    return build_demo(HubSource(load_space_config(path)))


def main() -> None:
    """Launch as a Space does: host and port from GRADIO_SERVER_NAME/PORT, which Spaces set."""
    folder = Path(__file__).resolve().parents[1]  # the Space folder holds this package
    demo_from_config(os.environ.get(CONFIG_ENV) or folder / CONFIG_FILENAME).launch()
