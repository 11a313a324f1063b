"""The Space folder: the template's app, this package and the core it imports, ``space.yaml`` and the card.

The app imports ``spaces`` and ``alignsmith``, which are not on PyPI, so the folder carries their
sources; ``requirements.txt`` pins the libraries they need to the versions installed here.
"""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path
from string import Template
from typing import Any

import alignsmith
import spaces
from alignsmith.cards import card_text
from alignsmith.lineage import Lineage
from spaces.config import CONFIG_FILENAME, SpaceConfig, config_text

TEMPLATE = Path(__file__).with_name("template")
PACKAGES = (Path(alignsmith.__file__).parent, Path(spaces.__file__).parent)
PACKAGE_FILES = ("*.py", "*.yaml", "*.jinja", "*.jsonl", "*.json", "*.md")  # pyproject's package data
SKIPPED = {"__pycache__", "template"}  # the template is rendered, not shipped
REQUIREMENTS = ("torch", "transformers", "datasets", "huggingface_hub", "peft", "accelerate", "pandas", "numpy",
                "pyyaml", "pillow", "jinja2")


def space_metadata(config: SpaceConfig, license: str, lineage: Lineage | None = None) -> dict[str, Any]:
    """The Space card's YAML: the SDK pinned to the gradio installed here, and the repos it shows."""
    import gradio

    metadata: dict[str, Any] = {
        "title": config.title, "emoji": "📊", "colorFrom": "indigo", "colorTo": "green",
        "sdk": "gradio", "sdk_version": gradio.__version__, "python_version": "3.11", "app_file": "app.py",
        "pinned": False, "license": license, "short_description": "Models next to their evaluation results",
        "models": config.model_ids(), "datasets": config.dataset_ids(),
        "tags": ["alignsmith", "leaderboard", "evaluation"],
    }
    if lineage is not None:
        metadata["alignsmith"] = lineage.portable().to_metadata()
    return metadata


def space_card(config: SpaceConfig, license: str, lineage: Lineage | None = None) -> str:
    from huggingface_hub import SpaceCard

    body = Template((TEMPLATE / "README.md").read_text(encoding="utf-8"))
    return card_text(SpaceCard, space_metadata(config, license, lineage),
                     body.substitute(title=config.title, config=config_text(config).strip()))


def requirements() -> str:
    """What the vendored packages import, each pinned to the version tested here (gradio: the card's sdk_version)."""
    return "".join(f"{name}=={version(name).split('+')[0]}\n" for name in REQUIREMENTS)  # no +cpu tag


def render_space(config: SpaceConfig, folder: str | Path, license: str, lineage: Lineage | None = None) -> Path:
    """Write the Space folder afresh (anything already in ``folder`` is removed) and return it."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy(TEMPLATE / "app.py", folder / "app.py")
    (folder / "requirements.txt").write_text(requirements(), encoding="utf-8")
    (folder / CONFIG_FILENAME).write_text(config_text(config), encoding="utf-8")
    (folder / "README.md").write_text(space_card(config, license, lineage), encoding="utf-8")
    for package in PACKAGES:
        for pattern in PACKAGE_FILES:
            for path in package.rglob(pattern):
                rel = path.relative_to(package)
                if SKIPPED.isdisjoint(rel.parts):
                    target = folder / package.name / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target)
    return folder
