"""``alignsmith reproduce REPO``: re-run what a card's lineage says made an artifact, and compare the two.

One mechanism for every stage: the lineage names the command (found in the CLI's registry, so the
core names no stage) and holds its full recipe. That recipe is rebuilt under the current version,
every input and model it names is pinned to the commit (or content hash) the lineage recorded, and
its output and working folders go to scratch places: the run publishes to ``<namespace>-reproduce``
on the same Hub under a fresh tag, so the reproduction is itself a release anyone can inspect, and a
published tag is never touched. The two releases are then compared: datasets row by row (a content
hash per row and per config), models tensor by tensor, and the numbers their cards report.

An evaluation run appends its rows to a shared results dataset, whose card records no lineage: its
commit adds the run's own lineage file (:mod:`alignsmith.results`), so given that commit the run is
re-run the same way, appending to a scratch results dataset, and its rows are compared metric by metric.

Bitwise equality is expected only when the run's libraries, device and CPU threads are those the
lineage recorded; otherwise floats are compared within a stated tolerance, and the report says why.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import importlib
import json
import math
import re
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from alignsmith import __version__
from alignsmith.errors import AlignsmithError
from alignsmith.lineage import (
    LINEAGE_KEY,
    ArtifactNotFoundError,
    ArtifactRef,
    Lineage,
    NoLineageError,
    content_sha256,
    environment,
    pin,
    read_lineage,
)
from alignsmith.recipes import RecipeError, build
from alignsmith.results import read_run_lineage

DIFFERS_EXIT_CODE = 3
RTOL, ATOL = 1e-4, 1e-6  # when versions, device or threads differ (float32 sums in another order)
_RESET_KEYS = ("executor", "cache", "results_repo")  # how and where a run worked, and side outputs: defaults
_OFF_KEYS = ("model_index",)  # writes into other repos' cards (a model's model-index): never from a reproduction
_RESULT_KEY = ("model", "model_sha", "benchmark", "metric")  # one measurement of a results run
_TIMING = ("runtime", "per_second")  # metrics of the machine, not of the artifact
_STATISTICS = re.compile(r"^## Statistics\n\n\| \| \|\n\|---\|---\|\n((?:\|.*\|\n?)+)", re.MULTILINE)


class ReproduceError(AlignsmithError):
    """An artifact that cannot be reproduced: no lineage, an input gone, a recipe that no longer parses."""


@dataclasses.dataclass
class Check:
    """One comparison: a dataset config, a weights file, or the metrics; ``status``: identical, close or differs."""

    what: str
    status: str
    detail: str = ""


def worst(statuses: Iterable[str]) -> str:
    """``differs`` over ``close`` over ``identical``."""
    found = set(statuses)
    return next((status for status in ("differs", "close") if status in found), "identical")


@dataclasses.dataclass
class Report:
    """What was reproduced, how it was compared, and what matched."""

    original: str
    command: str
    reproduction: str = ""
    environment: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    mode: str = "exact"
    mode_reason: str = ""
    inputs: list[str] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)

    @property
    def verdict(self) -> str:
        found = worst(check.status for check in self.checks)
        return "within tolerance" if found == "close" else found

    def header(self) -> str:
        """What is reproduced, in which environment against the recorded one, and from which pinned inputs."""
        lines = [f"reproduce {self.original}: alignsmith {self.command}", "",
                 f"  {'':<13} {'recorded':<28} this run"]
        lines += [f"  {name:<13} {old:<28} {new}{'' if old == new else '   <- differs'}"
                  for name, (old, new) in self.environment.items()]
        lines += ["", f"comparison: {self.mode} ({self.mode_reason})", "", "inputs and models, pinned:"]
        lines += [f"  {line}" for line in self.inputs] or ["  (none)"]
        return "\n".join(lines)

    def text(self) -> str:
        return f"{self.header()}\n\n{self.results()}"

    def results(self) -> str:
        """Where the reproduction went, each comparison, and the verdict."""
        lines = [f"reproduction: {self.reproduction}", ""]
        lines += [f"  {check.status:<9} {check.what}" + (f": {check.detail}" if check.detail else "")
                  for check in self.checks]
        lines += ["", f"result: {self.verdict.upper()}"]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "verdict": self.verdict}, indent=2)


@dataclasses.dataclass
class Plan:
    """The recorded run, made ready to run again here: its command and its recipe, pinned and redirected."""

    report: Report
    lineage: Lineage
    sha: str  # the commit of the artifact reproduced
    cmd: Any  # alignsmith.cli.Command
    recipe: Any
    output: tuple[str, str]  # (scratch repo id, fresh tag; none for a results run, which appends untagged)
    results_file: str | None = None  # a results run: the data file it appended, which is what is reproduced


def plan(repo_id: str, repo_type: str, revision: str | None, *, hub: str, hub_root: str | None, scratch: str | None,
         work_dir: Path) -> Plan:
    """Read the lineage at ``revision`` and rebuild its run: command, recipe, pins and scratch places."""
    from alignsmith.cli import _resolve, command_groups

    lineage, sha, results_file = _read(repo_id, repo_type, revision)
    where = f"{repo_type} {repo_id}@{revision or 'main'}"
    group, _, name = lineage.command.partition(" ")
    cmd = command_groups()[group].commands.get(name) if group in command_groups() else None
    if cmd is None or cmd.recipe is None:
        raise ReproduceError(f"{where}: its lineage names the command {lineage.command!r}, which is "
                             f"{'not a recipe command' if cmd else 'not a command'} of alignsmith {__version__}")
    run_of = f", the results run {results_file} its commit appended" if results_file else ""
    report = Report(f"{where} ({sha}){run_of}", lineage.command)
    data = copy.deepcopy(lineage.recipe)
    report.inputs = _pin_references(data, [*lineage.inputs, *lineage.models])
    recipe_cls = _resolve(cmd.recipe)
    output = _redirect(data, recipe_cls, repo_id, sha, results_file is not None, hub=hub, hub_root=hub_root,
                       scratch=scratch, work_dir=work_dir)
    try:
        recipe = build(recipe_cls, data)
    except RecipeError as err:
        raise ReproduceError(f"{where}: the recipe its lineage records (alignsmith {lineage.alignsmith_version}) no "
                             f"longer parses under alignsmith {__version__}: {err}") from None
    return Plan(report, lineage, sha, cmd, recipe, output, results_file)


def _read(repo_id: str, repo_type: str, revision: str | None) -> tuple[Lineage, str, str | None]:
    """(lineage, commit, None) from the card; else (lineage, commit, data file) of the results run the commit
    appended, whose lineage is a file of that commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_type} {repo_id}@{revision or 'main'}"
    try:
        return *read_lineage(repo_id, repo_type, revision), None  # type: ignore[arg-type]
    except NoLineageError as err:
        sha = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision).sha
        run = read_run_lineage(repo_id, sha) if repo_type == "dataset" else None
        if run is None:
            raise ReproduceError(f"{err}, and its commit {sha} appended no results run with a lineage file "
                                 "(lineage/*.json beside its data/*.parquet)") from None
        return run[0], sha, run[1]
    except RevisionNotFoundError:
        raise ReproduceError(f"{where}: no such revision (branch, tag or commit)") from None
    except RepositoryNotFoundError:
        raise ReproduceError(f"{where}: no such {repo_type} repo on this Hub") from None
    except EntryNotFoundError:
        raise ReproduceError(f"{where}: has no card (README.md), so no lineage to reproduce") from None


def _pin_references(data: Any, refs: Sequence[ArtifactRef]) -> list[str]:
    """Pin each reference of the recipe that a lineage ref names to the ref's sha; one report line per ref.

    A Hub reference is the recipe's repo id with the ``revision`` beside it (as recorded, usually a tag):
    its revision becomes the recorded commit, after checking that the commit still resolves. One named
    without a revision key cannot be pinned: it must still resolve to the recorded commit. A local path
    is checked against the recorded content sha256. Refs the recipe does not name (a base model's
    ancestors, bundled prompts) were found by the stage itself; they are listed, checked where on the Hub.
    """
    lines = []
    for ref in refs:
        named = list(_naming(data, ref))
        if ref.repo_type == "local":
            lines.append(_check_local(ref, [Path(node[key]) for node, key in named]))
            continue
        _resolved(ref, ref.sha)
        pinned = [node for node, _ in named if "revision" in node]
        for node in pinned:
            node["revision"] = ref.sha
        if pinned:
            how = "pinned"
        elif named:
            now = _resolved(ref, ref.revision)
            if now != ref.sha:
                raise ReproduceError(f"input {ref.role}: the recipe names {ref.repo_type} {ref.repo_id} without a "
                                     f"revision, and it has moved since the run (now {now}, recorded {ref.sha})")
            how = "named without a revision; unchanged since the run"
        else:
            how = "found by the stage, not named by the recipe"
        lines.append(f"{ref.role}: {ref.repo_type} {ref.repo_id} @ {ref.sha} ({how})")
    return lines


def _naming(data: Any, ref: ArtifactRef) -> Iterator[tuple[dict[str, Any], str]]:
    """(mapping, key) of every recipe value that names ``ref``: its repo id (+ revision), or its file name."""
    if isinstance(data, list):
        for item in data:
            yield from _naming(item, ref)
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if isinstance(value, (dict, list)):
            yield from _naming(value, ref)
        elif isinstance(value, str) and key != "revision" and _names(value, data.get("revision"), ref):
            yield data, key


def _names(value: str, revision: Any, ref: ArtifactRef) -> bool:
    if ref.repo_type == "local":  # cards record a local path by its last part (see Lineage.portable)
        return Path(value).name == Path(ref.repo_id).name and value not in ("", ".")
    return value == ref.repo_id and revision in (ref.revision, ref.sha)


def _resolved(ref: ArtifactRef, revision: str | None) -> str | None:
    """The commit ``revision`` of ``ref``'s repo resolves to now; an error naming the input if none."""
    try:
        return pin(ref.role, ref.repo_id, ref.repo_type, revision).sha
    except ArtifactNotFoundError as err:
        raise ReproduceError(f"input {ref.role}: {ref.repo_type} {ref.repo_id} @ {revision} (recorded in the lineage) "
                             f"no longer resolves: {err}") from None


def _check_local(ref: ArtifactRef, paths: list[Path]) -> str:
    if not paths:
        return f"{ref.role}: local {ref.repo_id} sha256 {ref.sha} (not named by the recipe; not checked)"
    path = next((p for p in paths if p.expanduser().exists()), paths[0])  # not a same-named key (a task's name)
    if not path.expanduser().exists():
        raise ReproduceError(f"input {ref.role}: local {path} (sha256 {ref.sha}) no longer resolves: not found from "
                             f"{Path.cwd()}; run reproduce from the folder the recipe ran in")
    found = content_sha256(path.expanduser())
    if found != ref.sha:
        raise ReproduceError(f"input {ref.role}: local {path} has changed since the run: sha256 {found}, the lineage "
                             f"records {ref.sha}")
    return f"{ref.role}: local {path} sha256 {ref.sha} (content matches)"


def _redirect(data: dict[str, Any], recipe_cls: type, repo_id: str, sha: str, results_run: bool, *, hub: str,
              hub_root: str | None, scratch: str | None, work_dir: Path) -> tuple[str, str]:
    """Point the recipe at this Hub, scratch folders and a scratch repo (with a fresh tag); return (repo, tag).

    Working folders (``*_dir``) go under ``work_dir`` so nothing done by the recorded run (shards,
    checkpoints) is reused; how a run was executed, caches and side outputs go back to their defaults,
    and writes into other repos' cards are turned off. A results run appends to a scratch results
    dataset instead of publishing a release: it has no tag.
    """
    fields = {f.name: f for f in dataclasses.fields(recipe_cls)}
    data.update({key: value for key, value in (("hub", hub), ("hub_root", hub_root)) if key in fields})
    data.update({key: False for key in _OFF_KEYS if key in fields})
    for key in list(data):
        if key.endswith("_dir"):
            data[key] = str(work_dir / key)
        elif key in _RESET_KEYS and key in fields and _has_default(fields[key]):
            del data[key]
    output = data.get("output")
    if results_run and "results_repo" in fields:
        data["results_repo"] = _scratch(repo_id, scratch)
        if isinstance(output, dict) and "repo_id" in output:  # a release beside the rows (a judge's judgments)
            output.update(repo_id=_scratch(output["repo_id"], scratch), tag=f"of-{sha[:12]}-{uuid.uuid4().hex[:8]}",
                          branch="main")
        return data["results_repo"], ""
    if not isinstance(output, dict) or "repo_id" not in output:
        raise ReproduceError(f"the recipe of {repo_id} has no output repo to publish the reproduction to")
    tag = f"of-{sha[:12]}-{uuid.uuid4().hex[:8]}"
    output.update(repo_id=_scratch(repo_id, scratch), tag=tag, branch="main")
    return output["repo_id"], tag


def _scratch(repo_id: str, scratch: str | None) -> str:
    """Where the reproduction of ``repo_id`` goes: the same name in the scratch namespace."""
    namespace, _, name = repo_id.partition("/")
    return f"{scratch or namespace + '-reproduce'}/{name}"


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def set_mode(report: Report, recorded: Lineage, current: dict[str, str]) -> tuple[float, float]:
    """Fill the environment table and choose the comparison; return (rtol, atol), zeros for bitwise."""
    old = recorded.environment
    report.environment = {"alignsmith": (recorded.alignsmith_version, __version__)}
    report.environment |= {key: (old.get(key, "not recorded"), now) for key, now in current.items()}
    changed = [key for key, (was, now) in report.environment.items() if key != "alignsmith" and was != now]
    if not old:
        report.mode, report.mode_reason = "tolerance", ("the card predates recorded versions, device and threads; "
                                                        f"floats within rtol {RTOL:g}, atol {ATOL:g}")
        return RTOL, ATOL
    if changed:
        report.mode, report.mode_reason = "tolerance", (f"{', '.join(changed)} differ from the recorded run; "
                                                        f"floats within rtol {RTOL:g}, atol {ATOL:g}")
        return RTOL, ATOL
    report.mode, report.mode_reason = "exact", "versions, device and threads match the recorded run: bitwise"
    return 0.0, 0.0


def compare_datasets(original: tuple[str, str], reproduced: tuple[str, str], rtol: float, atol: float) -> list[Check]:
    """Every config, split by split and row by row: row hashes first, values (the first differing column) on a
    mismatch; one check per config, with the content hash of its rows."""
    ours, theirs = _parquet_splits(*original), _parquet_splits(*reproduced)
    checks = [Check(f"dataset {name}", "differs", f"only in the {side}")
              for name, side in [*((n, "original") for n in ours if n not in theirs),
                                 *((n, "reproduction") for n in theirs if n not in ours)]]
    by_config: dict[str, list[tuple[str, tuple[str, str, list[str]]]]] = {}
    for name in (n for n in ours if n in theirs):
        config, split = name.rsplit("/", 1)
        by_config.setdefault(config, []).append((split, _compare_split(ours[name], theirs[name], rtol, atol)))
    for config, splits in by_config.items():
        content = hashlib.sha256("".join(h for _, (_, _, hashes) in splits for h in hashes).encode()).hexdigest()
        sizes = ", ".join(f"{split} {len(hashes)} rows" for split, (_, _, hashes) in splits)
        checks.append(Check(f"dataset config {config} ({sizes}; content hash {content[:12]})",
                            worst(status for _, (status, _, _) in splits),
                            "; ".join(f"{split}: {detail}" for split, (_, detail, _) in splits if detail)))
    return checks


def _parquet_splits(repo_id: str, sha: str) -> dict[str, Path]:
    """``config/split`` -> parquet file of a dataset release (alignsmith's ``{config}/{split}-*.parquet`` layout)."""
    from huggingface_hub import snapshot_download

    root = Path(snapshot_download(repo_id, repo_type="dataset", revision=sha, allow_patterns=["*.parquet"]))
    return {f"{path.parent.relative_to(root).as_posix()}/{path.name.split('-')[0]}": path
            for path in sorted(root.rglob("*.parquet"))}


def _compare_split(a_path: Path, b_path: Path, rtol: float, atol: float) -> tuple[str, str, list[str]]:
    """(status, detail, the original's row hashes) of one split."""
    import pyarrow.parquet as pq

    a, b = pq.read_table(a_path), pq.read_table(b_path)
    rows_a, rows_b = a.to_pylist(), b.to_pylist()
    hashes = [_row_hash(row) for row in rows_a]
    if a.column_names != b.column_names:
        return "differs", f"columns {a.column_names} vs {b.column_names} in the reproduction", hashes
    close = 0
    for index, (row_a, row_b, row_hash) in enumerate(zip(rows_a, rows_b, hashes)):
        if row_hash == _row_hash(row_b):
            continue
        if rtol and all(_close(row_a[c], row_b[c], rtol, atol) for c in a.column_names):
            close += 1
            continue
        column = next(c for c in a.column_names if _row_hash(row_a[c]) != _row_hash(row_b[c]))
        return "differs", (f"first differing row {index} (id {row_a.get('id', '?')!r}), column {column!r}: "
                           f"{_short(row_a[column])} vs {_short(row_b[column])} in the reproduction"), hashes
    if a.num_rows != b.num_rows:
        return "differs", (f"{a.num_rows} rows vs {b.num_rows} in the reproduction (the first "
                           f"{min(a.num_rows, b.num_rows)} agree)"), hashes
    if close:
        return "close", f"{close} row(s) differ only in floats within tolerance", hashes
    return "identical", "", hashes


def _row_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=lambda v: hashlib.sha256(v).hexdigest() if isinstance(v, bytes)
                      else str(v))
    return hashlib.sha256(text.encode()).hexdigest()


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol, atol) for k in a)
    return a == b


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare_models(original: tuple[str, str], reproduced: tuple[str, str], rtol: float, atol: float) -> list[Check]:
    """Every tensor of every ``*.safetensors`` file: bitwise, or within (rtol, atol) with the largest difference."""
    from huggingface_hub import snapshot_download
    from safetensors.torch import load_file

    roots = [Path(snapshot_download(repo, revision=sha, allow_patterns=["*.safetensors"])) for repo, sha in
             (original, reproduced)]
    files = [{p.relative_to(root).as_posix() for p in root.rglob("*.safetensors")} for root in roots]
    if files[0] != files[1] or not files[0]:
        return [Check("weights", "differs", f"weight files {sorted(files[0])} vs {sorted(files[1])} in the "
                                            "reproduction")]
    checks = []
    for name in sorted(files[0]):
        a, b = (load_file(root / name) for root in roots)
        checks.append(_compare_tensors(name, a, b, rtol, atol))
    return checks


def _compare_tensors(name: str, a: dict[str, Any], b: dict[str, Any], rtol: float, atol: float) -> Check:
    import torch

    what = f"weights {name} ({len(a)} tensors)"
    if a.keys() != b.keys():
        return Check(what, "differs", f"tensor names differ: {sorted(a.keys() ^ b.keys())[:5]}")
    worst, close = (0.0, ""), 0
    for key in sorted(a):
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            return Check(what, "differs", f"{key}: {x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)}")
        if torch.equal(x, y):
            continue
        diff = (x.double() - y.double()).abs().max().item()
        if not rtol or not torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol):
            return Check(what, "differs", f"first differing tensor {key!r}, max |difference| {diff:.3g}")
        close += 1
        worst = max(worst, (diff, key))
    if close:
        return Check(what, "close", f"{close} tensor(s) within tolerance; largest |difference| {worst[0]:.3g} "
                                    f"in {worst[1]!r}")
    return Check(what, "identical")


def compare_metrics(original: tuple[str, str], reproduced: tuple[str, str], repo_type: str, rtol: float,
                    atol: float) -> list[Check]:
    """The numbers each card reports (metadata such as training metrics or model-index, and its statistics table)."""
    ours, theirs = (_card_numbers(repo, sha, repo_type) for repo, sha in (original, reproduced))
    differing = [f"{key}: {ours[key]:g} vs {theirs.get(key, float('nan')):g}" for key in ours
                 if key not in theirs or not _close(float(ours[key]), float(theirs[key]), rtol, atol)]
    inexact = [key for key in ours if key in theirs and ours[key] != theirs[key]]
    what = f"metrics ({len(ours)} numbers in the card)"
    if differing:
        return [Check(what, "differs", "; ".join(differing[:5]) + (" ..." if len(differing) > 5 else ""))]
    return [Check(what, "close", f"{len(inexact)} within tolerance") if inexact else Check(what, "identical")]


def _card_numbers(repo_id: str, sha: str, repo_type: str) -> dict[str, float]:
    from huggingface_hub import hf_hub_download

    from alignsmith.frontmatter import card_metadata

    text = Path(hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=sha)).read_text(encoding="utf-8")
    meta = card_metadata(text) or {}
    numbers = dict(_numbers({k: v for k, v in meta.items() if k not in (LINEAGE_KEY, "dataset_info")}, ""))
    table = _STATISTICS.search(text)
    for line in table.group(1).splitlines() if table else ():
        key, _, value = line.strip("|").partition("|")
        try:
            numbers[f"statistics: {key.strip()}"] = float(value.strip().replace(",", ""))
        except ValueError:
            continue  # a word ("deita") or a ratio ("106,816 of 106,816"): not a measurement to compare
    return {key: value for key, value in numbers.items() if not any(word in key for word in _TIMING)}


def _numbers(value: Any, path: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)


def reproduce(repo_id: str, repo_type: str = "dataset", revision: str | None = None, *, hub: str = "local",
              hub_root: str | None = None, scratch: str | None = None, work_dir: str | None = None,
              planned: Callable[[Report], None] = lambda report: None) -> Report:
    """Reproduce a published artifact from its card and compare; the report says how and what matched.

    ``planned`` sees the report once versions and pins are known, before the run, which may take hours.
    """
    from huggingface_hub import HfApi

    from alignsmith.cli import run_loaded_recipe
    from alignsmith.endpoint import connect
    from alignsmith.recipes import HubRecipe

    connect(HubRecipe(hub=hub, hub_root=hub_root))
    importlib.import_module("torch")  # loaded now, so that the device this run computes on is the one reported
    with tempfile.TemporaryDirectory(prefix="alignsmith-reproduce-") as tmp:
        run = plan(repo_id, repo_type, revision, hub=hub, hub_root=hub_root, scratch=scratch,
                   work_dir=Path(work_dir or tmp).resolve())
        report = run.report
        rtol, atol = set_mode(report, run.lineage, environment())
        planned(report)
        run_loaded_recipe(run.cmd, run.recipe)
    if run.results_file:
        return _compare_results_run(report, (repo_id, run.sha, run.results_file), run.output[0], rtol, atol)
    target, tag = run.output
    new_sha = HfApi().repo_info(target, repo_type=repo_type, revision=tag).sha
    report.reproduction = f"{repo_type} {target}@{tag} ({new_sha})"
    original = (repo_id, run.sha)
    compare = compare_datasets if repo_type == "dataset" else compare_models
    report.checks = compare(original, (target, new_sha), rtol, atol)
    report.checks += compare_metrics(original, (target, new_sha), repo_type, rtol, atol)
    return report


def _compare_results_run(report: Report, original: tuple[str, str, str], scratch: str, rtol: float,
                         atol: float) -> Report:
    """The run the re-run appended to the scratch results dataset (its newest commit, found by its lineage file,
    whatever the command returns) against the recorded run's file."""
    from huggingface_hub import HfApi

    sha = HfApi().repo_info(scratch, repo_type="dataset").sha
    appended = read_run_lineage(scratch, sha)
    if appended is None:
        raise ReproduceError(f"alignsmith {report.command} appended no results run with its lineage to {scratch}, so "
                             "there is nothing to compare")
    report.reproduction = f"dataset {scratch}@{sha} ({appended[1]})"
    report.checks = compare_results(original, (scratch, sha, appended[1]), rtol, atol)
    return report


def compare_results(original: tuple[str, str, str], reproduced: tuple[str, str, str], rtol: float,
                    atol: float) -> list[Check]:
    """Each (model, model_sha, benchmark, metric) of two results runs' files: value, n and stderr; the first
    differing measurement is named."""
    ours, theirs = (_result_rows(*run) for run in (original, reproduced))
    what = f"results (metric values: {len(ours)})"
    if ours.keys() != theirs.keys():
        missing = [" ".join(map(str, key)) for key in [*ours.keys() - theirs.keys(), *theirs.keys() - ours.keys()]]
        return [Check(what, "differs", f"measured only in one run: {sorted(missing)[:3]}")]
    close = 0
    for key, row in ours.items():
        other = theirs[key]
        if row == other:
            continue
        if rtol and all(_close(row[c], other[c], rtol, atol) for c in row):
            close += 1
            continue
        column = next(c for c in row if row[c] != other[c])
        return [Check(what, "differs", f"first differing metric {key[2]}/{key[3]} of {key[0]}@{key[1][:12]}: "
                                       f"{column} {row[column]} vs {other[column]} in the reproduction")]
    return [Check(what, "close", f"{close} within tolerance") if close else Check(what, "identical")]


def _result_rows(repo_id: str, sha: str, path: str) -> dict[tuple, dict[str, Any]]:
    """(model, model_sha, benchmark, metric) -> {value, n, stderr} of one results run's file."""
    import pyarrow.parquet as pq
    from huggingface_hub import hf_hub_download

    table = pq.read_table(hf_hub_download(repo_id, path, repo_type="dataset", revision=sha))
    return {tuple(row[k] for k in _RESULT_KEY): {k: row[k] for k in ("value", "n", "stderr")}
            for row in table.to_pylist()}


def cli(argv: Sequence[str]) -> int:
    """``alignsmith reproduce REPO``: exit 0 when identical (or within tolerance), 3 when the artifact differs."""
    parser = argparse.ArgumentParser(prog="alignsmith reproduce", description=(
        "Re-run the command a published artifact's lineage records, with the same recipe, inputs and models "
        f"pinned to the recorded commits, and compare. Exit 0: identical or within tolerance; "
        f"{DIFFERS_EXIT_CODE}: it differs; 1: it cannot be reproduced (the error says why)."))
    parser.add_argument("repo_id")
    parser.add_argument("--revision", default=None, help="tag, branch or commit (default: main); for a results "
                                                           "dataset, the commit of the run to reproduce")
    parser.add_argument("--repo-type", default="dataset", choices=["dataset", "model"])
    parser.add_argument("--hub", default="local", help="'local', 'huggingface' or a Hub URL")
    parser.add_argument("--hub-root", default=None, help="storage folder of the embedded Hub")
    parser.add_argument("--scratch", default=None, help="namespace to publish the reproduction to "
                                                        "(default: <namespace>-reproduce)")
    parser.add_argument("--work-dir", default=None, help="keep the run's working folders here (default: a "
                                                         "temporary folder, removed afterwards)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    out = sys.stdout
    announce = (lambda report: None) if args.json else (lambda report: print(report.header() + "\n", file=out,
                                                                               flush=True))
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the report alone; what the stage prints goes to stderr
        report = reproduce(args.repo_id, args.repo_type, args.revision, hub=args.hub, hub_root=args.hub_root,
                           scratch=args.scratch, work_dir=args.work_dir, planned=announce)
    print(report.to_json() if args.json else report.results())
    return DIFFERS_EXIT_CODE if report.verdict == "differs" else 0
