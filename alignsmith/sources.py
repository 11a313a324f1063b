"""Loading a dataset's rows from a local file or folder or from the Hub, pinned for lineage.

Everything loads through ``datasets.load_dataset``: local ``.json``/``.jsonl``/``.parquet`` files
(optionally ``.gz``/``.bz2``/``.xz``/``.zst`` compressed) with the matching builder, local folders
and Hub repos as datasets lays them out. A Hub repo is first resolved to its commit sha and loaded
at that sha, so the rows are exactly those of the recorded commit even if the branch moves on; a
local source records the sha256 of every data file it read.

Kept free of heavy imports at module level: recipes import :class:`DatasetSource`, and
``--help`` must stay instant.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignsmith.errors import AlignsmithError
from alignsmith.lineage import ArtifactRef, content_sha256, pin
from alignsmith.converters import FORMATS, ConversionResult, RecordKind, OnInvalid, convert_rows
from alignsmith.recipes import RecipeError, help_text

if TYPE_CHECKING:
    import datasets

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceError(AlignsmithError):
    """A dataset source that cannot be loaded; the message names the source."""


@dataclass
class DatasetSource:
    """Where a dataset's rows come from, and how to read them."""

    path: str = help_text("Local file (.json/.jsonl/.parquet), local folder, or Hub dataset repo id 'org/name'.")
    config: str | None = help_text("Dataset config (subset) name.", default=None)
    split: str = help_text("Split to load.", default="train")
    revision: str | None = help_text("Hub revision (branch, tag or sha); resolved to a commit sha.", default=None)
    data_files: str | list[str] | None = help_text("Data files (globs) within a folder or Hub repo.", default=None)
    format: str = help_text(f"Row format: auto, {', '.join(FORMATS)}.", default="auto")
    columns: dict[str, str] | None = help_text(
        "Column renames applied before conversion: {dataset column: format column}.", default=None
    )

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise SourceError(
                f"{self.describe()}: unknown format {self.format!r} (expected auto, {', '.join(FORMATS)})"
            )

    def describe(self) -> str:
        parts = [repr(self.path)]
        parts += [
            f"{key}={value!r}"
            for key, value in (("config", self.config), ("revision", self.revision),
                               ("data_files", self.data_files), ("columns", self.columns))
            if value is not None
        ]
        return f"dataset {' '.join(parts)} (split {self.split!r})"

    def check_gives(self, kind: RecordKind, where: str) -> None:
        """Refuse a ``format`` whose rows cannot become ``kind`` records, before the rows are read.

        Preference pairs can become conversations, but conversations never become pairs.
        """
        if kind == "preference" and self.format != "auto" and FORMATS[self.format].kind != "preference":
            raise RecipeError(f"{where}.format: {self.format!r} holds conversations, not preference pairs")


@dataclass(frozen=True)
class LoadedSource:
    """A loaded dataset plus what pins it: the Hub commit sha, or the sha256 of each local file."""

    source: DatasetSource
    dataset: datasets.Dataset
    name: str  # the records' default ``source``: the repo id, or the file/folder name
    sha: str | None  # Hub commit the rows were read at (None for local sources)
    files: dict[str, str]  # local data file (relative to the source path) -> sha256
    root: Path | None  # local folder that relative image paths resolve against

    @property
    def is_hub(self) -> bool:
        return self.sha is not None

    def artifact_ref(self, role: str) -> ArtifactRef:
        """The source pinned for lineage: the Hub commit it was read at, or a local path's content hash."""
        if self.is_hub:
            return ArtifactRef(role, self.source.path, "dataset", self.source.revision, self.sha)
        return pin(role, self.source.path, "dataset")

    def to_records(
        self, kind: RecordKind, *, on_invalid: OnInvalid = "error", require_assistant: bool = True
    ) -> ConversionResult:
        """Convert the rows with the source's ``format`` (see :func:`alignsmith.converters.convert_rows`)."""
        return convert_rows(
            iter_rows(self.dataset),
            kind=kind,
            fmt=self.source.format,
            source=self.name,
            on_invalid=on_invalid,
            require_assistant=require_assistant,
            image_root=self.root,
        )


def iter_rows(dataset: datasets.Dataset, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """The dataset's rows, read from Arrow a batch at a time (several times faster than row by row).

    Images stay as stored (``{"bytes", "path"}``): decoding them to PIL and re-encoding would cost
    time and, for JPEG, quality.
    """
    import datasets

    features = datasets.Features.from_dict(_keep_images_encoded(dataset.features.to_dict()))
    for table in dataset.with_format("arrow").iter(batch_size=batch_size):
        batch = features.decode_batch(table.to_pydict())
        columns = list(batch)
        for values in zip(*batch.values(), strict=True):
            yield dict(zip(columns, values, strict=True))


def _keep_images_encoded(feature: Any) -> Any:
    """A serialised ``Features`` dict with every ``Image`` feature set to ``decode=False``."""
    if isinstance(feature, list):
        return [_keep_images_encoded(item) for item in feature]
    if not isinstance(feature, dict):
        return feature
    feature = {key: _keep_images_encoded(value) for key, value in feature.items()}
    if feature.get("_type") == "Image":
        feature["decode"] = False
    return feature


def load_source(src: DatasetSource) -> LoadedSource:
    """Load ``src``; an existing local path wins over a Hub repo id of the same spelling."""
    path = Path(src.path).expanduser()
    if path.exists():
        if src.revision is not None:
            raise SourceError(f"{src.describe()}: revision applies only to Hub repos, and this is a local path")
        loaded = _load_file(src, path) if path.is_file() else _load_folder(src, path)
    elif _REPO_ID.match(src.path) and _builder(path) is None:
        loaded = _load_hub(src)
    else:
        raise SourceError(f"{src.describe()}: no such file or folder")
    if src.columns:
        with _explained(src, "cannot rename columns"):
            loaded = replace(loaded, dataset=loaded.dataset.rename_columns(src.columns))
    return loaded


def _builder(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in _COMPRESSIONS]
    return _BUILDERS.get(suffixes[-1].lower()) if suffixes else None


def _load_file(src: DatasetSource, path: Path) -> LoadedSource:
    import datasets

    builder = _builder(path)
    if builder is None:
        raise SourceError(
            f"{src.describe()}: unsupported file type (expected {', '.join(_BUILDERS)}, optionally compressed)"
        )
    if src.config is not None or src.data_files is not None:
        raise SourceError(
            f"{src.describe()}: config and data_files apply to folders and Hub repos, not to a single file"
        )
    with _explained(src):
        # the file is the requested split, whatever its name
        dataset = datasets.load_dataset(builder, data_files={src.split: str(path)}, split=src.split)
    return LoadedSource(src, dataset, _file_name(path), None, {path.name: content_sha256(path)}, path.parent.resolve())


def _file_name(path: Path) -> str:
    """The name less its data and compression suffixes: ``pool.v2.jsonl.gz`` is ``pool.v2``.

    Only those suffixes go, so ``pool.v1.jsonl`` and ``pool.v2.jsonl`` keep distinct sources and ids.
    """
    stem = Path(path.stem) if path.suffix in _COMPRESSIONS else path
    return stem.stem


def _load_folder(src: DatasetSource, folder: Path) -> LoadedSource:
    import datasets

    with _explained(src):
        data_files = datasets.load_dataset_builder(
            str(folder), name=src.config, data_files=src.data_files
        ).config.data_files
    if src.split not in data_files:  # also a sliced split ("train[:100]"): its files could not be pinned
        splits = ", ".join(repr(str(split)) for split in data_files)
        raise SourceError(
            f"{src.describe()}: the folder has no split {src.split!r} (it has {splits}); "
            "a local folder takes a plain split name"
        )
    with _explained(src):
        dataset = datasets.load_dataset(str(folder), name=src.config, split=src.split, data_files=src.data_files)
    files = {str(Path(f).relative_to(folder.resolve())): content_sha256(Path(f)) for f in data_files[src.split]}
    return LoadedSource(src, dataset, folder.resolve().name, None, files, folder.resolve())


def _load_hub(src: DatasetSource) -> LoadedSource:
    import datasets
    from huggingface_hub import HfApi

    with _explained(src, "cannot resolve the revision"):
        sha = HfApi().dataset_info(src.path, revision=src.revision).sha
    with _explained(src, f"cannot load commit {sha}"):
        dataset = datasets.load_dataset(
            src.path, name=src.config, split=src.split, revision=sha, data_files=src.data_files
        )
    return LoadedSource(src, dataset, src.path, sha, {}, None)


@contextmanager
def _explained(src: DatasetSource, doing: str = "cannot load") -> Iterator[None]:
    """Re-raise the libraries' errors as one SourceError that names the source."""
    import httpx
    from datasets.exceptions import DatasetsError
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except RepositoryNotFoundError:
        raise SourceError(
            f"{src.describe()}: no such dataset repo on {constants.ENDPOINT} (or no access with this token)"
        ) from None
    except RevisionNotFoundError:
        raise SourceError(f"{src.describe()}: no such revision {src.revision!r}") from None
    except (OSError, ValueError, DatasetsError, httpx.HTTPError) as err:
        raise SourceError(f"{src.describe()}: {doing}: {_headline(err)}") from None


def _headline(err: BaseException) -> str:
    """The first line of a library error, and of its cause (datasets wraps parse errors)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    headline = lines[0] if lines else type(err).__name__
    return f"{headline} ({_headline(err.__cause__)})" if err.__cause__ is not None else headline
