"""Evaluation results on the Hub: an append-only results dataset, and ``model-index`` in the model's card.

Every evaluator (lighteval benchmarks, LLM judges, win rates) reports the same rows: one per model x
revision sha x benchmark x metric, with the judge and prompt set pinned like the model. A run appends
one new parquet file in one new commit, so earlier runs' files are never rewritten and any past
state of the table is a revision of the repo. The same commit adds the run's lineage beside its file
(``lineage/<file stem>.json``): the shared card cannot hold every run's, so a run's commit is what
``alignsmith reproduce`` is given, and it reads the lineage file that commit added. The evaluated
model's card gets the numbers too, as the ``model-index`` the Hub and leaderboards read, by a new
commit on its main branch (its tags stay on the commits they name).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import math
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from alignsmith import __version__
from alignsmith.cards import card_text
from alignsmith.errors import AlignsmithError
from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import Lineage
from alignsmith.publish import commit_release
from alignsmith.recipes import OutputRepo

if TYPE_CHECKING:
    import datasets
    from huggingface_hub import EvalResult

log = logging.getLogger(__name__)

DATA_GLOB = "data/*.parquet"
LINEAGE_DIR = "lineage"
_CARD_COMMIT_ATTEMPTS = 3  # a card edited by someone else between our read and our commit is re-read


class ResultsError(AlignsmithError):
    """A result row that cannot be published, or a results or model repo that cannot take it."""


@dataclass(frozen=True)
class ResultRow:
    """One number an evaluator measured: ``metric`` of ``model``@``model_sha`` on ``benchmark``.

    ``judge``/``prompt_set`` (with their shas) say what produced and what was asked, so rows from
    different judges or prompt versions never average together by accident.
    """

    model: str
    model_sha: str
    benchmark: str
    metric: str
    value: float
    n: int
    stderr: float | None = None
    judge: str | None = None
    judge_sha: str | None = None
    prompt_set: str | None = None
    prompt_set_sha: str | None = None
    lighteval_version: str | None = None

    def __post_init__(self) -> None:
        where = f"result {self.model}@{self.model_sha} {self.benchmark}/{self.metric}"
        if not _finite(self.value):
            raise ResultsError(f"{where}: value must be a finite number, got {self.value!r}")
        if self.stderr is not None and not _finite(self.stderr):
            raise ResultsError(f"{where}: stderr must be a finite number or null, got {self.stderr!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ResultsError(f"{where}: n must be a count of samples, got {self.n!r}")
        if not self.model_sha:
            raise ResultsError(f"{where}: model_sha is empty; pin the model first (alignsmith.lineage.pin)")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ResultsRun:
    """Where one run's rows went: the commit and the file that holds exactly them."""

    repo_id: str
    commit_sha: str
    path_in_repo: str
    run_id: str
    date: str
    rows: int

    def summary(self) -> str:
        """One line naming the run's commit: the revision ``alignsmith reproduce`` takes to re-run it."""
        return f"{self.rows} result row(s) appended to dataset {self.repo_id} @ {self.commit_sha} ({self.path_in_repo})"


def results_features() -> "datasets.Features":
    """The results table's schema, fixed so every run's file concatenates with the others."""
    from datasets import Features, Value

    string = Value("string")
    return Features({
        "model": string, "model_sha": string, "benchmark": string, "metric": string,
        "value": Value("float64"), "stderr": Value("float64"), "n": Value("int64"),
        "judge": string, "judge_sha": string, "prompt_set": string, "prompt_set_sha": string,
        "alignsmith_version": string, "lighteval_version": string, "date": string, "run_id": string,
    })


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def append_results(
    repo_id: str,
    rows: Iterable[ResultRow],
    *,
    run_id: str | None = None,
    date: str | None = None,
    private: bool = False,
    lineage: Lineage | None = None,
) -> ResultsRun:
    """Append one run's rows to the results dataset ``repo_id`` (created if missing) as a new commit.

    The rows go to a new file ``data/results-<date>-<run_id>.parquet``; a file of that name already
    in the repo is refused, never replaced. ``load_dataset(repo_id, split="train")`` reads every run.
    ``lineage`` goes to ``lineage/results-<date>-<run_id>.json`` in the same commit.
    """
    import datasets
    from huggingface_hub import CommitOperationAdd, HfApi

    rows = list(rows)
    if not rows:
        raise ResultsError(f"results dataset {repo_id}: a run with no result rows is not appended")
    run_id, date = run_id or new_run_id(), date or utc_now()
    path = f"data/results-{_file_stamp(date, repo_id)}-{run_id}.parquet"
    output = OutputRepo(repo_id=repo_id, private=private)
    if HfApi().repo_exists(repo_id, repo_type="dataset") and HfApi().file_exists(repo_id, path, repo_type="dataset"):
        raise ResultsError(f"results dataset {repo_id} already has {path}: use another run_id")
    stamp = {"alignsmith_version": __version__, "date": date, "run_id": run_id}
    table = datasets.Dataset.from_list([asdict(row) | stamp for row in rows], features=results_features())
    buffer = io.BytesIO()
    table.to_parquet(buffer)
    ops = [CommitOperationAdd(path, buffer.getvalue()), CommitOperationAdd("README.md", results_card(repo_id).encode())]
    if lineage is not None:
        metadata = json.dumps(lineage.portable().to_metadata(), indent=2, sort_keys=True)
        ops.append(CommitOperationAdd(lineage_path(path), metadata.encode()))
    made_by = f"{lineage.command} " if lineage is not None else ""  # which evaluator, to find its runs by
    release = commit_release(output, "dataset", ops, f"alignsmith results: {made_by}run {run_id} ({len(rows)} rows)")
    return ResultsRun(repo_id, release.commit_sha, path, run_id, date, len(rows))


def lineage_path(data_path: str) -> str:
    """Where the lineage of the run whose rows are ``data_path`` lies: ``lineage/<its stem>.json``."""
    return f"{LINEAGE_DIR}/{data_path.rsplit('/', 1)[-1].removesuffix('.parquet')}.json"


def read_run_lineage(repo_id: str, sha: str) -> tuple[Lineage, str] | None:
    """(lineage, data file) of the run that commit ``sha`` of a results dataset appended; None without lineage.

    The run's own lineage file is the one present at ``sha`` and absent from its parent commit.
    """
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    commits = api.list_repo_commits(repo_id, repo_type="dataset", revision=sha)
    before = set(api.list_repo_files(repo_id, repo_type="dataset", revision=commits[1].commit_id)
                 if len(commits) > 1 else ())
    added = set(api.list_repo_files(repo_id, repo_type="dataset", revision=sha)) - before
    runs = [path for path in sorted(added) if path.startswith("data/") and lineage_path(path) in added]
    if len(runs) != 1:
        return None
    text = open(hf_hub_download(repo_id, lineage_path(runs[0]), repo_type="dataset", revision=sha),
                encoding="utf-8").read()
    return Lineage.from_metadata(json.loads(text)), runs[0]


def _file_stamp(date: str, repo_id: str) -> str:
    """``date`` (ISO 8601 with a time zone) as a UTC stamp for a file name: sorts by time, no colons."""
    try:
        parsed = _dt.datetime.fromisoformat(date)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ResultsError(f"results dataset {repo_id}: date {date!r} is not an ISO 8601 time with a time zone")
    return parsed.astimezone(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def results_card(repo_id: str) -> str:
    """The results dataset's card: one ``default`` config over every run's file, and what a row means."""
    from huggingface_hub import DatasetCard

    metadata = {
        "pretty_name": f"Evaluation results ({repo_id})",
        "tags": ["alignsmith", "evaluation-results"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_GLOB}]}],
        "dataset_info": [{"config_name": "default", "features": results_features()._to_yaml_list()}],
    }
    body = (
        f"# Evaluation results\n\nOne row per model x revision sha x benchmark x metric, written by alignsmith's "
        f"evaluators. Each run adds one file under `data/` in its own commit; earlier files are never rewritten, so "
        f"an earlier revision of this repo is the table as it was then.\n\n## Usage\n\n```python\n"
        f'from datasets import load_dataset\n\nresults = load_dataset("{repo_id}", split="train")\n```\n\n'
        "`judge` and `prompt_set` (each with its commit sha) say who graded and what was asked: compare rows only "
        "when they match. `value` is the metric, `stderr` its standard error where the evaluator gives one, `n` "
        "the number of samples."
    )
    return card_text(DatasetCard, metadata, body)


def eval_result(row: ResultRow) -> "EvalResult":
    """``row`` as a ``model-index`` entry; the model sha and sample count go in the metric's ``args``."""
    from huggingface_hub import EvalResult

    args = {"model_sha": row.model_sha, "n": row.n, **({"stderr": row.stderr} if row.stderr is not None else {})}
    args |= {key: value for key in ("judge", "judge_sha") if (value := getattr(row, key)) is not None}
    return EvalResult(task_type="text-generation", task_name=row.benchmark,
                      dataset_type=row.prompt_set or row.benchmark,
                      dataset_name=row.benchmark, dataset_revision=row.prompt_set_sha, metric_type=row.metric,
                      metric_name=row.metric, metric_value=float(row.value), metric_args=args)


def _index_key(result: "EvalResult") -> tuple:
    """Results with the same key describe the same measurement: a newer value replaces the older one."""
    sha = (result.metric_args or {}).get("model_sha")
    return (*result.unique_identifier, result.dataset_name, result.metric_type, sha)


def write_model_index(model_repo: str, model_sha: str, rows: Sequence[ResultRow]) -> str:
    """Merge ``rows`` into ``model_repo``'s card ``model-index`` by a new commit on main; return its sha.

    Results already in the card stay, except those the new rows measure again (same benchmark,
    metric and model sha). The commit names the head it read as its parent, so an edit made
    meanwhile is never overwritten: the card is read again and the merge redone.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    others = {(row.model, row.model_sha) for row in rows} - {(model_repo, model_sha)}
    if others:
        raise ResultsError(f"model {model_repo}@{model_sha}: rows of other models or revisions given: {sorted(others)}")
    api = HfApi()
    try:
        api.repo_info(model_repo, revision=model_sha)
    except (RevisionNotFoundError, HfHubHTTPError) as err:
        raise ResultsError(
            f"model {model_repo} has no commit {model_sha} to report results for ({type(err).__name__})") from None
    new = [eval_result(row) for row in rows]
    new_keys = {_index_key(result) for result in new}
    attempt = 1
    while True:
        head = api.repo_info(model_repo, revision="main").sha
        text = _readme(model_repo, head)
        metadata = card_metadata(text)
        body = ModelCard(text).text if metadata is not None else text
        data = ModelCardData(**(metadata or {}))
        data.eval_results = [r for r in data.eval_results or [] if _index_key(r) not in new_keys] + new
        data.model_name = data.model_name or model_repo
        card = card_text(ModelCard, data.to_dict(), body)
        try:
            info = api.create_commit(model_repo, [CommitOperationAdd("README.md", card.encode())], revision="main",
                                     parent_commit=head,
                                     commit_message=f"alignsmith results: model-index for {model_sha[:12]}")
        except HfHubHTTPError as err:
            if err.response is not None and err.response.status_code == 412 and attempt < _CARD_COMMIT_ATTEMPTS:
                log.info("model %s: its card changed while results were merged in; merging again", model_repo)
                attempt += 1
                continue
            raise
        log.info("model %s: model-index updated for %s (%d results) @ %s", model_repo, model_sha[:12], len(new),
                 info.oid[:12])
        return info.oid


def _readme(repo_id: str, revision: str) -> str:
    """The model card's text at ``revision``; empty when the repo has none yet."""
    from huggingface_hub import HfApi, hf_hub_download

    if not HfApi().file_exists(repo_id, "README.md", revision=revision):
        return ""
    return open(hf_hub_download(repo_id, "README.md", revision=revision), encoding="utf-8").read()
