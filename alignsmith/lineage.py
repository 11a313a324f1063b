"""Lineage: what every published artifact records about how it was made, and how to read it back.

Lineage lives in the card metadata under the ``alignsmith`` key (inputs and models pinned to commit
shas, the full resolved recipe, the alignsmith version), so it travels with the artifact and any
Hub client can read it without alignsmith.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from alignsmith import __version__

RepoType = Literal["model", "dataset", "space", "local"]
LINEAGE_KEY = "alignsmith"


class ArtifactNotFoundError(ValueError):
    """A model or dataset a recipe names that cannot be found (locally or on the Hub)."""


@dataclass
class ArtifactRef:
    """One input or model a run used, pinned so it can be fetched again exactly."""

    role: str  # e.g. "pool", "complexity_scorer", "base_model"
    repo_id: str  # Hub repo id, or a local path when repo_type == "local"
    repo_type: RepoType
    revision: str | None = None  # what the recipe asked for (tag, branch, sha)
    sha: str | None = None  # the commit it resolved to (content sha256 for local paths)


@dataclass
class Lineage:
    command: str  # e.g. "deita build"
    recipe: dict[str, Any]
    inputs: list[ArtifactRef] = field(default_factory=list)
    models: list[ArtifactRef] = field(default_factory=list)
    alignsmith_version: str = __version__
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "Lineage":
        data = dict(data)
        data["inputs"] = [ArtifactRef(**ref) for ref in data.get("inputs", [])]
        data["models"] = [ArtifactRef(**ref) for ref in data.get("models", [])]
        return cls(**data)

    def source_datasets(self) -> list[str]:
        """Hub dataset ids for the card's ``source_datasets`` field (the Hub links ids; the shas are in the lineage)."""
        return list(dict.fromkeys(r.repo_id for r in self.inputs if r.repo_type == "dataset"))


def resolve(role: str, repo_id_or_path: str, repo_type: RepoType = "model", revision: str | None = None) -> ArtifactRef:
    """Pin a model or dataset reference to a commit sha (or a content hash for a local path)."""
    path = Path(repo_id_or_path)
    if path.exists():
        return ArtifactRef(role, str(path.resolve()), "local", revision, content_sha256(path))
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    try:
        info = HfApi().repo_info(repo_id_or_path, repo_type=repo_type, revision=revision)
    except RevisionNotFoundError:
        raise ArtifactNotFoundError(
            f"{role}: {repo_type} {repo_id_or_path!r} has no revision {revision!r} (no such branch, tag or commit)"
        ) from None
    except (HfHubHTTPError, ValueError) as err:
        raise ArtifactNotFoundError(
            f"{role}: {repo_type} {repo_id_or_path!r} is neither a local path nor a repo reachable on the Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    return ArtifactRef(role, repo_id_or_path, repo_type, revision, info.sha)


def content_sha256(path: Path) -> str:
    """sha256 over a file, or over a folder's relative paths and file contents (sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_lineage(repo_id: str, repo_type: RepoType = "dataset", revision: str | None = None) -> tuple[Lineage, str]:
    """Read the lineage recorded in a published artifact's card; returns (lineage, commit sha)."""
    from huggingface_hub import HfApi, hf_hub_download

    sha = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    readme = Path(hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=sha)).read_text(encoding="utf-8")
    metadata = card_metadata(readme)
    if LINEAGE_KEY not in metadata:
        raise ValueError(f"{repo_type} {repo_id}@{revision or 'main'} has no alignsmith lineage in its card")
    return Lineage.from_metadata(metadata[LINEAGE_KEY]), sha


def card_metadata(readme: str) -> dict[str, Any]:
    """The YAML front matter of a card (empty when there is none)."""
    if not readme.startswith("---"):
        return {}
    _, _, rest = readme.partition("---")
    front, sep, _ = rest.partition("\n---")
    return (yaml.safe_load(front) or {}) if sep else {}


def cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignsmith lineage show", description="Print a published artifact's lineage.")
    parser.add_argument("repo_id")
    parser.add_argument("--repo-type", default="dataset", choices=["dataset", "model", "space"])
    parser.add_argument("--revision", default=None)
    parser.add_argument("--hub", default="local", help="'local', 'huggingface' or a Hub URL")
    args = parser.parse_args(argv)
    from alignsmith.endpoint import connect
    from alignsmith.recipes import HubRecipe

    connect(HubRecipe(hub=args.hub))
    lineage, sha = read_lineage(args.repo_id, args.repo_type, args.revision)
    print(json.dumps({"repo_id": args.repo_id, "sha": sha, **lineage.to_metadata()}, indent=2))
    return 0
