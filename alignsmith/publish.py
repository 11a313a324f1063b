"""Publish datasets, models and Spaces to the Hub as one commit per release, tagged and never moved.

The same calls publish to the embedded Hub and to huggingface.co: only the endpoint differs
(see :mod:`alignsmith.endpoint`). A release is identified by repo id + commit sha; the tag is the
human-readable name for it and is refused, before anything is uploaded, if it already exists.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

from alignsmith.cards import RANDOM_WEIGHTS_MARKER, RANDOM_WEIGHTS_TAG, CardContent, Figure, dataset_card
from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef, Lineage
from alignsmith.recipes import RESOLVED_RECIPE_FILENAME, OutputRepo

log = logging.getLogger(__name__)

RepoType = Literal["model", "dataset", "space"]


class TagExistsError(AlignsmithError):
    """A release tag that already exists: published tags are never moved or overwritten."""


@dataclass(frozen=True)
class Release:
    repo_id: str
    repo_type: RepoType
    commit_sha: str
    tag: str | None

    @property
    def revision(self) -> str:
        """What consumers should pin to: the tag when there is one, else the sha."""
        return self.tag or self.commit_sha


def _api():
    from huggingface_hub import HfApi

    return HfApi()


def ensure_tag_free(repo_id: str, repo_type: RepoType, tag: str | None) -> None:
    """Refuse a release whose tag exists, before any upload happens."""
    if tag is None:
        return
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = _api().list_repo_refs(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return
    if any(t.name == tag for t in refs.tags):
        raise TagExistsError(
            f"{repo_type} {repo_id} already has tag {tag!r}; published tags are never moved: choose a new tag"
        )


def release_of_same_recipe(output: OutputRepo, repo_type: RepoType, recorded_recipe: Mapping[str, Any]) -> Release | None:
    """``output``'s tagged release when an earlier run of the same recipe published it, else None.

    Multi-stage runs use it to skip finished stages on a rerun. ``recorded_recipe`` is the recipe as the
    card records it; a tag made by another recipe (or by no alignsmith run) is refused, since published
    tags are never moved.
    """
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    from alignsmith.lineage import NoLineageError, read_lineage

    if output.tag is None:
        return None
    try:
        lineage, sha = read_lineage(output.repo_id, repo_type, output.tag)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return None
    except NoLineageError:
        lineage = None
    if lineage is None or lineage.recipe != recorded_recipe:
        raise TagExistsError(f"{repo_type} {output.repo_id} already has tag {output.tag!r} from a different recipe; "
                             "published tags are never moved: choose a new tag")
    return Release(output.repo_id, repo_type, sha, output.tag)


def commit_release(
    output: OutputRepo,
    repo_type: RepoType,
    operations: list[Any],
    message: str,
) -> Release:
    """Create the repo if needed, commit ``operations`` in one commit, and tag it."""
    from huggingface_hub.errors import HfHubHTTPError

    api = _api()
    ensure_tag_free(output.repo_id, repo_type, output.tag)
    api.create_repo(output.repo_id, repo_type=repo_type, private=output.private, exist_ok=True,
                    **({"space_sdk": "gradio"} if repo_type == "space" else {}))
    if output.branch != "main":
        api.create_branch(output.repo_id, branch=output.branch, repo_type=repo_type, exist_ok=True)
    info = api.create_commit(output.repo_id, operations, commit_message=message, repo_type=repo_type, revision=output.branch)
    sha = info.oid
    if output.tag:
        try:
            api.create_tag(output.repo_id, tag=output.tag, revision=sha, repo_type=repo_type, exist_ok=False,
                           tag_message=message)
        except HfHubHTTPError as err:
            if err.response is not None and err.response.status_code == 409:
                raise TagExistsError(
                    f"{repo_type} {output.repo_id}: tag {output.tag!r} was created by someone else meanwhile; "
                    f"commit {sha} is on {output.branch} but untagged"
                ) from None
            raise
    log.info("published %s %s @ %s%s", repo_type, output.repo_id, sha[:12], f" (tag {output.tag})" if output.tag else "")
    return Release(output.repo_id, repo_type, sha, output.tag)


def _common_files(lineage: Lineage, figures: Iterable[Figure]) -> list[Any]:
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(RESOLVED_RECIPE_FILENAME, to_yaml_bytes(lineage.recipe))]
    ops += [CommitOperationAdd(fig.path_in_repo, fig.png) for fig in figures]
    return ops


def to_yaml_bytes(data: Mapping[str, Any]) -> bytes:
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True).encode()


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide datasets' per-shard map/parquet bars while writing a release (the upload keeps its own)."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def random_weight_refs(lineage: Lineage) -> list[ArtifactRef]:
    """The models and inputs of ``lineage`` that have random weights, or were made with such a model.

    A model from ``alignsmith models tiny`` carries a marker in its ``config.json`` (wherever the folder
    is uploaded, and into models trained from it); a Hub repo may also say so with its card's
    ``random-weights`` tag, which every dataset card built with such a model carries on in turn.
    """
    refs = [*lineage.inputs, *lineage.models]
    found: dict[tuple[str, str, str | None], bool] = {}  # the same pinned scorer often fills several roles
    for ref in refs:
        if (key := (ref.repo_id, ref.repo_type, ref.sha)) not in found:
            found[key] = _has_random_weights(ref)
    return [ref for ref in refs if found[(ref.repo_id, ref.repo_type, ref.sha)]]


def _has_random_weights(ref: ArtifactRef) -> bool:
    if ref.repo_type == "local":
        config = Path(ref.repo_id) / "config.json"
        return config.is_file() and _marked(config)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        info = _api().repo_info(ref.repo_id, repo_type=ref.repo_type, revision=ref.sha)
        if RANDOM_WEIGHTS_TAG in (info.tags or []):
            return True
        return ref.repo_type == "model" and _marked(Path(hf_hub_download(ref.repo_id, "config.json",
                                                                          revision=ref.sha)))
    except EntryNotFoundError:  # no config.json: not a transformers model
        return False
    except HfHubHTTPError as err:
        log.warning("%s: cannot read %s %s@%s to check for random weights (%s)", ref.role, ref.repo_type,
                    ref.repo_id, ref.sha, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return False


def _marked(config: Path) -> bool:
    return json.loads(config.read_text(encoding="utf-8")).get(RANDOM_WEIGHTS_MARKER) is True


def publish_dataset(
    output: OutputRepo,
    configs: Mapping[str, Mapping[str, Any]],
    content: CardContent,
    lineage: Lineage,
    *,
    default_config: str | None = None,
) -> Release:
    """Publish ``{config: {split: datasets.Dataset}}`` plus card, recipe and figures as one commit.

    Parquet shards embed image bytes (like ``push_to_hub``) so ``Image`` columns survive; each config
    lives under ``{config}/`` and is declared in the card's ``configs:`` block. Splits without rows
    are left out (``datasets`` cannot load an empty split), and so are configs left with none; the
    card's statistics are where such zero counts belong. Card and recipe file name local paths by
    their last part only (see :meth:`Lineage.portable`).
    """
    from datasets.table import embed_table_storage
    from huggingface_hub import CommitOperationAdd

    configs = {name: kept for name, splits in configs.items() if (kept := {s: ds for s, ds in splits.items() if len(ds)})}
    if not configs:
        raise ValueError(f"nothing to publish to {output.repo_id}: every split is empty")
    if default_config not in configs:
        default_config = None
    with tempfile.TemporaryDirectory(prefix="alignsmith-publish-") as tmp, _quiet_datasets():
        ops = []
        for config, splits in configs.items():
            for split, ds in splits.items():
                path = Path(tmp) / config / f"{split}-00000-of-00001.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                embedded = ds.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
                embedded.with_format(None).to_parquet(str(path))
                ops.append(CommitOperationAdd(f"{config}/{path.name}", str(path)))
        card = dataset_card(output.repo_id, configs, content, lineage, default_config=default_config,
                            revision_hint=output.tag or output.branch, language=output.language,
                            random_weights=random_weight_refs(lineage))
        ops.append(CommitOperationAdd("README.md", card.encode()))
        ops += _common_files(lineage.portable(), content.figures)
        return commit_release(output, "dataset", ops, f"alignsmith {lineage.command}: {content.title}")


def publish_folder(
    output: OutputRepo,
    folder: str | Path,
    card: str,
    lineage: Lineage,
    *,
    repo_type: RepoType = "model",
    figures: Iterable[Figure] = (),
    ignore: Iterable[str] = ("checkpoint-*", "*.pth", "runs/*", "README.md", RESOLVED_RECIPE_FILENAME),
) -> Release:
    """Publish a model folder (full weights or a PEFT adapter) or a Space folder as one commit."""
    from fnmatch import fnmatch

    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to publish: {folder} is not a folder")
    ignore = list(ignore)
    ops = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(fnmatch(rel, pattern) or fnmatch(rel.split("/")[0], pattern) for pattern in ignore):
            continue
        ops.append(CommitOperationAdd(rel, str(path)))
    ops.append(CommitOperationAdd("README.md", card.encode()))
    ops += _common_files(lineage, figures)
    return commit_release(output, repo_type, ops, f"alignsmith {lineage.command}: {output.repo_id}")
