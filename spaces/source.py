"""Where the Space's data comes from: the configured repos, read from whichever Hub the clients point at.

Reads are cached per repo and resolved sha: a tag never moves, so a revision's files never change.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import Lineage, NoLineageError, read_lineage
from spaces.config import RepoAt, SpaceConfig

if TYPE_CHECKING:
    from alignsmith.models.generation import ChatModel


class HubSource:
    """The Hub behind one :class:`SpaceConfig`: results, model cards and lineage, datasets, chat models."""

    def __init__(self, config: SpaceConfig) -> None:
        self.config = config

    def results(self) -> pd.DataFrame:
        """Every row of the results dataset at its configured revision (empty when none is configured)."""
        if self.config.results is None:
            return pd.DataFrame(columns=["model", "model_sha", "benchmark", "metric", "value", "date"])
        ref = RepoAt.parse(self.config.results)
        return _table(ref.repo_id, _sha(ref.repo_id, "dataset", ref.revision), None)

    def dataset(self, text: str, config: str) -> pd.DataFrame:
        """One config's ``train`` split of a dataset named ``org/name@revision``."""
        ref = RepoAt.parse(text)
        return _table(ref.repo_id, _sha(ref.repo_id, "dataset", ref.revision), config)

    def configs(self, text: str) -> list[str]:
        from datasets import get_dataset_config_names

        ref = RepoAt.parse(text)
        return list(get_dataset_config_names(ref.repo_id, revision=_sha(ref.repo_id, "dataset", ref.revision)))

    def sha(self, text: str, repo_type: str = "model") -> str:
        ref = RepoAt.parse(text)
        return _sha(ref.repo_id, repo_type, ref.revision)

    def card(self, text: str) -> dict[str, Any]:
        """A model's card metadata at its revision."""
        ref = RepoAt.parse(text)
        readme = _file(ref.repo_id, "model", _sha(ref.repo_id, "model", ref.revision), "README.md")
        return (card_metadata(Path(readme).read_text(encoding="utf-8")) or {}) if readme else {}

    def figure(self, text: str, path: str) -> str | None:
        """A file of the model repo (e.g. the card's ``assets/loss.png``), or None if it has none."""
        ref = RepoAt.parse(text)
        return _file(ref.repo_id, "model", _sha(ref.repo_id, "model", ref.revision), path)

    def readme(self, repo_id: str, repo_type: str, sha: str) -> str:
        """The card text (front matter and body) of a model or dataset at ``sha``; empty when it has none."""
        readme = _file(repo_id, repo_type, sha, "README.md")
        return Path(readme).read_text(encoding="utf-8") if readme else ""

    def lineage(self, repo_id: str, repo_type: str, revision: str | None) -> tuple[Lineage, str] | None:
        """The artifact's lineage and sha; None when it records none (not made by alignsmith)."""
        return _lineage(repo_id, repo_type, revision)

    def chat_model(self, text: str) -> "ChatModel":
        ref = RepoAt.parse(text)
        return _chat_model(ref.repo_id, _sha(ref.repo_id, "model", ref.revision))


@cache
def _sha(repo_id: str, repo_type: str, revision: str | None) -> str:
    from huggingface_hub import HfApi

    return HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha


@cache
def _table(repo_id: str, sha: str, config: str | None) -> pd.DataFrame:
    from datasets import load_dataset

    return load_dataset(repo_id, config, revision=sha, split="train").to_pandas()


@cache
def _file(repo_id: str, repo_type: str, sha: str, path: str) -> str | None:
    from huggingface_hub import HfApi, hf_hub_download

    if not HfApi().file_exists(repo_id, path, repo_type=repo_type, revision=sha):
        return None
    return hf_hub_download(repo_id, path, repo_type=repo_type, revision=sha)


@cache
def _lineage(repo_id: str, repo_type: str, revision: str | None) -> tuple[Lineage, str] | None:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return read_lineage(repo_id, repo_type, revision)  # type: ignore[arg-type]
    except (NoLineageError, EntryNotFoundError):
        return None


@cache
def _chat_model(repo_id: str, sha: str) -> "ChatModel":
    from alignsmith.models.chat import load_chat_model
    from alignsmith.models.generation import ChatModelSpec

    return load_chat_model(ChatModelSpec(model=repo_id, revision=sha, batch_size=1))
