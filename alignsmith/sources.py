"""Loading a dataset's rows from a local file or folder or from the Hub, pinned for lineage.

Everything loads through ``datasets.load_dataset``: local ``.json``/``.jsonl``/``.parquet`` files
(optionally ``.gz``/``.bz2``/``.xz``/``.zst`` compressed) with the matching builder, local folders
and Hub repos as datasets lays them out. A JSON file holding one object of named dialogues
(``{"id1": {...}, "id2": {...}}``) gives one row per dialogue, its key as the id. Every source takes
sliced splits (``train[:1000]``, ``train[10%:]``); a local source pins its whole files. A Hub repo
is first resolved to its commit sha and loaded at that sha, so the rows are exactly those of the recorded commit even if the branch moves on; a
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
from alignsmith.converters import (
    FORMATS,
    ConversionResult,
    ExtraColumns,
    OnInvalid,
    RecordKind,
    UndecodableRow,
    convert_rows,
)
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
    split: str = help_text(
        "Split to load, optionally sliced: 'train', 'train[:1000]', 'train[10%:20%]'.", default="train"
    )
    revision: str | None = help_text("Hub revision (branch, tag or sha); resolved to a commit sha.", default=None)
    data_files: str | list[str] | None = help_text("Data files (globs) within a folder or Hub repo.", default=None)
    format: str = help_text(f"Row format: auto, {', '.join(FORMATS)}.", default="auto")
    columns: dict[str, str] | None = help_text(
        "Column renames applied before conversion: {dataset column: format column}.", default=None
    )
    extra_columns: ExtraColumns = help_text(
        "Columns the format does not read (besides ids, source, tools and metadata): 'carry' keeps them in each "
        "record's 'metadata' (a JSON string) and lists them in the card, 'drop' leaves them out and lists them "
        "in the card, 'error' stops the run naming them.",
        default="carry",
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
            iter_rows(self.dataset, where=self.source.describe()),
            kind=kind,
            fmt=self.source.format,
            source=self.name,
            on_invalid=on_invalid,
            require_assistant=require_assistant,
            image_root=self.root,
            extra_columns=self.source.extra_columns,
        )


def iter_rows(
    dataset: datasets.Dataset, batch_size: int = 1024, where: str = "the dataset"
) -> Iterator[dict[str, Any]]:
    """The dataset's rows, read from Arrow a batch at a time (several times faster than row by row).

    Images stay as stored (``{"bytes", "path"}``): decoding them to PIL and re-encoding would cost
    time and, for JPEG, quality. A row whose text is not valid UTF-8 (the JSON reader stores the
    bytes unchecked) comes as an :class:`UndecodableRow` naming the field and ``where``, so it is
    rejected alone.
    """
    import datasets

    features = datasets.Features.from_dict(_keep_images_encoded(dataset.features.to_dict()))
    for table in dataset.with_format("arrow").iter(batch_size=batch_size):
        try:
            yield from _decoded_rows(table, features)
        except UnicodeDecodeError:  # find the row(s) to blame, one at a time
            for i in range(table.num_rows):
                row = table.slice(i, 1)
                try:
                    yield from _decoded_rows(row, features)
                except UnicodeDecodeError:
                    yield _undecodable_row(row, where)


def _decoded_rows(table: Any, features: datasets.Features) -> list[dict[str, Any]]:
    batch = features.decode_batch(table.to_pydict())
    columns = list(batch)
    return [dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def _undecodable_row(table: Any, where: str) -> UndecodableRow:
    """One Arrow row with bad UTF-8: the text shown with U+FFFD, and the first bad field named."""
    bad: list[tuple[str, UnicodeDecodeError]] = []
    row = {
        name: _lossy_text(table.column(name).cast(_as_binary(table.schema.field(name).type))[0].as_py(),
                          table.schema.field(name).type, name, bad)
        for name in table.column_names
    }
    field, err = bad[0]
    reason = (f"not valid UTF-8 (byte 0x{err.object[err.start]:02x} at position {err.start}) in {where}; "
              "re-save the file as UTF-8")
    return UndecodableRow(row, field, reason)


def _as_binary(arrow_type: Any) -> Any:
    """``arrow_type`` with every string turned into binary, so bad bytes can be read and located."""
    import pyarrow as pa

    if pa.types.is_string(arrow_type):
        return pa.binary()
    if pa.types.is_large_string(arrow_type):
        return pa.large_binary()
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        make = pa.list_ if pa.types.is_list(arrow_type) else pa.large_list
        return make(arrow_type.value_field.with_type(_as_binary(arrow_type.value_type)))
    if pa.types.is_struct(arrow_type):
        return pa.struct([f.with_type(_as_binary(f.type)) for f in arrow_type])
    return arrow_type


def _lossy_text(value: Any, arrow_type: Any, path: str, bad: list[tuple[str, UnicodeDecodeError]]) -> Any:
    """``value`` (read as binary) with the strings of ``arrow_type`` decoded, recording undecodable ones."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as err:
            bad.append((path, err))
            return value.decode("utf-8", errors="replace")
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return [_lossy_text(v, arrow_type.value_type, f"{path}[{i}]", bad) for i, v in enumerate(value)]
    if pa.types.is_struct(arrow_type):
        return {f.name: _lossy_text(value[f.name], f.type, f"{path}.{f.name}", bad) for f in arrow_type}
    return value


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
    split = _split_name(src.split)
    with _explained(src):
        # the file is the requested split, whatever its name
        dataset = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        if builder == "json" and _is_named_dialogues(dataset):
            dataset = _named_dialogue_rows(src, dataset)
        if split != src.split:  # sliced after the rows are known (named dialogues are one row until then)
            parts = datasets.ReadInstruction.from_spec(src.split).to_absolute({split: dataset.num_rows})
            dataset = datasets.concatenate_datasets([dataset.select(range(p.from_, p.to)) for p in parts])
    return LoadedSource(src, dataset, _file_name(path), None, {path.name: content_sha256(path)}, path.parent.resolve())


def _split_name(split: str) -> str:
    """The split a (possibly sliced) split spec reads: ``train[:1000]`` reads ``train``."""
    return split.partition("[")[0]


def _is_named_dialogues(dataset: datasets.Dataset) -> bool:
    """One JSON object whose every value is an object: ``{"id1": {...}, "id2": {...}}``, read as one row.

    No format's row is all objects, so this shape cannot be a single record.
    """
    return dataset.num_rows == 1 and all(isinstance(f, dict) for f in dataset.features.values())


def _named_dialogue_rows(src: DatasetSource, dataset: datasets.Dataset) -> datasets.Dataset:
    """One row per named dialogue, its key as ``id`` (an ``id`` inside it must agree)."""
    import datasets

    (named,) = iter_rows(dataset, where=src.describe())
    for key, dialogue in named.items():
        if dialogue.get("id") not in (None, key):
            raise SourceError(
                f"{src.describe()}: dialogue {key!r} has id {dialogue['id']!r}; a file of named dialogues "
                "uses each key as the id, so an id inside must be the same or absent"
            )
    rows = [{**dialogue, "id": key} for key, dialogue in named.items()]
    columns = dict.fromkeys(column for row in rows for column in row)  # from_list would keep the first row's only
    return datasets.Dataset.from_dict({column: [row.get(column) for row in rows] for column in columns})


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
    split = _split_name(src.split)
    if split not in data_files:
        splits = ", ".join(repr(str(name)) for name in data_files)
        raise SourceError(f"{src.describe()}: the folder has no split {split!r} (it has {splits})")
    with _explained(src):
        dataset = datasets.load_dataset(str(folder), name=src.config, split=src.split, data_files=src.data_files)
    files = {str(Path(f).relative_to(folder.resolve())): content_sha256(Path(f)) for f in data_files[split]}
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
