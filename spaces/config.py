"""What a results Space shows, and the recipe of the ``space`` commands.

Everything is named by Hub repo id and revision (``org/name@v1``), so the same ``space.yaml`` drives
the app on the embedded Hub, on another endpoint and as a Space on huggingface.co.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from alignsmith.recipes import HubRecipe, OutputRepo, RecipeError, build, help_text, to_dict

CONFIG_FILENAME = "space.yaml"
CONFIG_ENV = "ALIGNSMITH_SPACE_CONFIG"  # a config file path, read instead of the Space folder's own


@dataclass(frozen=True)
class RepoAt:
    """A Hub repo at a revision (tag, branch or sha; ``None`` is the default branch)."""

    repo_id: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> "RepoAt":
        repo_id, _, revision = text.partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise RecipeError(f"expected 'namespace/name[@revision]', got {text!r}")
        return cls(repo_id, revision or None)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


@dataclass(kw_only=True)
class SpaceConfig:
    """The repos a Space shows, each as ``org/name@revision``."""

    title: str = help_text("The Space's title.", default="alignsmith results")
    results: str | None = help_text("Results dataset (alignsmith.results rows).", default=None)
    models: list[str] = help_text("Chat models to show, chat with and compare.", default_factory=list)
    deita: list[str] = help_text("Deita datasets (selected/scored/rejected configs).", default_factory=list)
    pf: list[str] = help_text("Polite Flamingo PF-style datasets (a config per source + rejected).",
                              default_factory=list)
    answers: list[str] = help_text("Answers datasets (`eval answers`) compared side by side.", default_factory=list)
    judgments: list[str] = help_text("Judgments datasets (`eval judge`) whose scores go beside the answers.",
                                     default_factory=list)
    max_new_tokens: int = help_text("Longest chat reply, in tokens.", default=128, minimum=1)

    def __post_init__(self) -> None:
        for name in ("models", "deita", "pf", "answers", "judgments"):
            for text in getattr(self, name):
                RepoAt.parse(text)
        if self.results is not None:
            RepoAt.parse(self.results)

    def repos(self, name: str) -> list[RepoAt]:
        return [RepoAt.parse(text) for text in getattr(self, name)]

    def model_ids(self) -> list[str]:
        return list(dict.fromkeys(ref.repo_id for ref in self.repos("models")))

    def dataset_ids(self) -> list[str]:
        names = [self.results] if self.results else []
        names += self.deita + self.pf + self.answers + self.judgments
        return list(dict.fromkeys(RepoAt.parse(text).repo_id for text in names))


@dataclass(kw_only=True)
class SpaceRecipe(HubRecipe):
    """``space push`` / ``space serve``: what to show, where the Space folder goes, where it is published."""

    show: SpaceConfig = help_text("What the Space shows (written to the folder as space.yaml).")
    folder: str = help_text("Where the Space folder is rendered.", default="runs/space")
    output: OutputRepo | None = help_text("The Space repo `space push` publishes to (a tag is required).",
                                          default=None)
    license: str = help_text("The Space's license.", default="apache-2.0")
    host: str = help_text("`space serve`: address to listen on.", default="127.0.0.1")
    port: int = help_text("`space serve`: port (0: a free one).", default=0, minimum=0)


def load_space_config(path: str | Path | None = None) -> SpaceConfig:
    """The config at ``path``, else at $ALIGNSMITH_SPACE_CONFIG; YAML or JSON (JSON is YAML)."""
    import yaml

    path = Path(path or os.environ.get(CONFIG_ENV) or CONFIG_FILENAME)
    return build(SpaceConfig, yaml.safe_load(path.read_text(encoding="utf-8")) or {}, "space config")


def config_text(config: SpaceConfig) -> str:
    """``config`` as the Space folder stores it."""
    return json.dumps(to_dict(config), indent=2) + "\n"
