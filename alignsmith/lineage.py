"""Lineage: what every published artifact records about how it was made, and how to read it back.

Lineage lives in the card metadata under the ``alignsmith`` key (inputs and models pinned to commit
shas, the full resolved recipe, the alignsmith version, and the library versions, device and CPU threads
a rerun needs to give the same bits), so it travels with the artifact and any Hub client can read it
without alignsmith.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.metadata
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from alignsmith import __version__
from alignsmith.errors import AlignsmithError
from alignsmith.frontmatter import card_metadata

RepoType = Literal["model", "dataset", "space", "local"]
LINEAGE_KEY = "alignsmith"
FRAMEWORKS = ("torch", "transformers", "trl", "datasets")  # what decides whether a rerun gives the same bits


class ArtifactNotFoundError(AlignsmithError):
    """A model or dataset a recipe names that cannot be found (locally or on the Hub)."""


class NoLineageError(AlignsmithError):
    """A published artifact whose card records no alignsmith lineage (not made by alignsmith)."""


@dataclass
class ArtifactRef:
    """One input or model a run used, pinned so it can be fetched again exactly."""

    role: str  # e.g. "pool", "complexity_scorer", "base_model"
    repo_id: str  # Hub repo id, or a local path when repo_type == "local"
    repo_type: RepoType
    revision: str | None = None  # what the recipe asked for (tag, branch, sha)
    sha: str | None = None  # the commit it resolved to (content sha256 for local paths)

    def portable(self) -> "ArtifactRef":
        """This ref as a published card records it: a local path by its file or folder name.

        The in-memory ref keeps the absolute path (models are loaded from it); the name plus the
        content sha256 is what reproduces the run elsewhere, the builder's directory layout is not.
        """
        return replace(self, repo_id=Path(self.repo_id).name) if self.repo_type == "local" else self


@dataclass
class Lineage:
    command: str  # e.g. "build deita"
    recipe: dict[str, Any]
    inputs: list[ArtifactRef] = field(default_factory=list)
    models: list[ArtifactRef] = field(default_factory=list)
    alignsmith_version: str = __version__
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    environment: dict[str, str] = field(default_factory=lambda: environment())  # empty in cards made before it

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    def portable(self) -> "Lineage":
        """This lineage without the paths of the machine it ran on: local refs and recipe paths by name."""
        return replace(self, recipe=portable_paths(self.recipe), inputs=[r.portable() for r in self.inputs],
                       models=[r.portable() for r in self.models])

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "Lineage":
        data = dict(data)
        data["inputs"] = [ArtifactRef(**ref) for ref in data.get("inputs", [])]
        data["models"] = [ArtifactRef(**ref) for ref in data.get("models", [])]
        data.setdefault("environment", {})  # an older card: unknown, not this machine's
        return cls(**data)

    def source_datasets(self) -> list[str]:
        """Hub dataset ids for the card's ``source_datasets`` field (the Hub links ids; the shas are in the lineage)."""
        return list(dict.fromkeys(r.repo_id for r in self.inputs if r.repo_type == "dataset"))


def environment() -> dict[str, str]:
    """The library versions, device and CPU threads of this run: with others a rerun may give other floats.

    The device is the accelerator torch sees; the thread count matters on CPU, where it changes the order
    of float reductions. A process that never imported torch computed nothing with it.
    """
    versions = {}
    for package in FRAMEWORKS:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    torch = sys.modules.get("torch")
    threads = str(torch.get_num_threads()) if torch is not None else "torch not loaded"
    return versions | {"device": _device(torch), "cpu_threads": threads}


def _device(torch: Any) -> str:
    if torch is not None and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    if torch is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def portable_paths(value: Any) -> Any:
    """``value`` with each absolute (or ``~``) local path, through dicts and lists, reduced to its last part.

    Recipes hold whatever paths the user typed (``pool.path: /home/me/data/pool.jsonl``); relative ones
    are kept as typed, absolute ones only say where one machine kept its files.
    """
    if isinstance(value, dict):
        return {key: portable_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [portable_paths(item) for item in value]
    if isinstance(value, str) and "\n" not in value and Path(value).expanduser().is_absolute():
        return Path(value).name
    return value


def pin(role: str, repo_id_or_path: str, repo_type: RepoType = "model", revision: str | None = None) -> ArtifactRef:
    """Pin a model or dataset to what exactly will be read: its Hub commit sha, or a local path's content hash.

    This is the one place a stage turns a recipe's reference into lineage; loading by the returned
    sha (see :func:`load_revision`) gives exactly the recorded files, even if a branch moves later.
    """
    path = Path(repo_id_or_path).expanduser()
    if path.exists():
        if revision is not None:
            raise ArtifactNotFoundError(f"{role}: {str(path)!r} (revision {revision!r}): a revision applies only to "
                                        "Hub repos, and this is a local path")
        return ArtifactRef(role, str(path.resolve()), "local", None, content_sha256(path))
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    try:
        info = HfApi().repo_info(repo_id_or_path, repo_type=repo_type, revision=revision)
    except RevisionNotFoundError:
        raise ArtifactNotFoundError(
            f"{role}: {repo_type} {repo_id_or_path!r} has no revision {revision!r} (no such branch, tag or commit)"
        ) from None
    except (HfHubHTTPError, httpx.HTTPError, ValueError) as err:  # ValueError: not a valid repo id
        raise ArtifactNotFoundError(
            f"{role}: {repo_type} {repo_id_or_path!r} is neither a local path nor a repo reachable on the Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    return ArtifactRef(role, repo_id_or_path, repo_type, revision, info.sha)


def load_revision(ref: ArtifactRef) -> str | None:
    """The revision to load a pinned artifact at: its commit sha on the Hub, nothing for a local path."""
    return ref.sha if ref.repo_type != "local" else None


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
    metadata = card_metadata(readme) or {}
    if LINEAGE_KEY not in metadata:
        raise NoLineageError(f"{repo_type} {repo_id}@{revision or 'main'} has no alignsmith lineage in its card")
    return Lineage.from_metadata(metadata[LINEAGE_KEY]), sha


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
