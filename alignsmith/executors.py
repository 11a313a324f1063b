"""Run a job's per-row work as tasks on a datatrove executor (local processes, a Slurm array, a Ray cluster).

A job hands over a picklable :class:`TaskWork`: ``run_task(rank, world_size)`` computes the work shards
task ``rank`` owns (:class:`alignsmith.shards.ShardPlan` with ``num_tasks=world_size``) into its
:class:`alignsmith.shards.ShardStore`\\ s; ``finish()`` is the global step (selection, publishing), run once
after every task finished. datatrove marks each finished task in ``<logging_dir>/tasks/completions`` and
skips it on a rerun; a marker whose shards are no longer all on disk (deleted, or another job's settings) is
removed first, so a rerun recomputes exactly the unfinished tasks and the shard stores stay the one record
of what is done. On Slurm the global step is a second job that depends on the task array, so ``execute``
returns once both are submitted.

Task processes talk to the Hub this process is connected to: its URL travels with the task, the token
through the environment (sbatch ``--export=ALL``, inherited by local workers, Ray's ``runtime_env``), never
into the executor files written to ``logging_dir``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol
from urllib.parse import urlsplit

from alignsmith.errors import AlignsmithError
from alignsmith.recipes import RecipeError, help_text, non_default

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HUB_VARIABLES = ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_XET", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
SLURM_KEYS = ("partition", "time", "cpus_per_task", "mem_per_cpu_gb", "gpus_per_task", "sbatch_args",
              "env_command", "job_name")
RAY_KEYS = ("address", "num_cpus", "cpus_per_task", "mem_per_cpu_gb", "gpus_per_task")


class ExecutorError(AlignsmithError):
    """Tasks that did not finish (the global step would read missing shards), or a Ray cluster not found."""


class TaskWork(Protocol):
    """What a job hands to :func:`execute`: picklable, so it reaches task processes on other machines."""

    def run_task(self, rank: int, world_size: int) -> None:
        """Compute the work shards task ``rank`` of ``world_size`` owns that are not on disk yet."""

    def task_done(self, rank: int, world_size: int) -> bool:
        """Whether every shard task ``rank`` owns is on disk."""

    def finish(self) -> Any:
        """The global step, once every task is done; its result is :func:`execute`'s."""


class ShardTasks:
    """Base of a job's :class:`TaskWork`: its settings are pickled to every task; its input (a pool, a source:
    :meth:`load`) is read once per process and never pickled, as each task reads it itself."""

    def __init__(self, loaded: Any = None) -> None:
        self._loaded = loaded

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def input(self) -> Any:
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded

    def load(self) -> Any:
        raise NotImplementedError


@dataclass(kw_only=True)
class ExecutorSpec:
    """Where the per-row work runs. ``none``: in this process (``accelerate launch`` spreads it over processes)."""

    kind: Literal["none", "local", "slurm", "ray"] = help_text(
        "'none': in this process (or under accelerate launch); 'local': datatrove's local executor (processes "
        "on this machine); 'slurm': a Slurm job array plus a dependent job that publishes; 'ray': a Ray cluster.",
        default="none")
    tasks: int = help_text("Tasks the work shards are spread over (round-robin); each task owns a share.",
                           default=1, minimum=1)
    workers: int | None = help_text("Tasks running at once (null: all).", default=None, minimum=1)
    logging_dir: str | None = help_text(
        "datatrove's logs, completion markers and job files (null: <work_dir>/executor); on a cluster, a shared "
        "filesystem like work_dir.", default=None)
    partition: str | None = help_text("slurm: the partition (needed by kind slurm).", default=None)
    time: str = help_text("slurm: time limit of each task, e.g. '12:00:00'.", default="24:00:00")
    job_name: str = help_text("slurm: job name (the publishing job is '<job_name>-finish').", default="alignsmith")
    env_command: str | None = help_text(
        "slurm: shell line that activates the environment in each job, e.g. 'source .venv/bin/activate'.",
        default=None)
    sbatch_args: dict[str, str] = help_text("slurm: extra #SBATCH options, e.g. {account: my-lab, qos: high}.",
                                            default_factory=dict)
    address: str | None = help_text(
        "ray: the cluster to join ('auto': the one running on this node); null starts a Ray instance here.",
        default=None)
    num_cpus: int | None = help_text(
        "ray: logical CPUs of the instance started here (address null; default: this machine's).", default=None,
        minimum=1)
    cpus_per_task: int = help_text("slurm, ray: CPUs reserved per task.", default=1, minimum=1)
    mem_per_cpu_gb: int = help_text("slurm, ray: memory reserved per CPU, in GB.", default=2, minimum=1)
    gpus_per_task: int = help_text("slurm, ray: GPUs reserved per task.", default=0, minimum=0)

    def __post_init__(self) -> None:
        used = {"slurm": SLURM_KEYS, "ray": RAY_KEYS}.get(self.kind, ())
        unused = [name for name in non_default(self, SLURM_KEYS + RAY_KEYS) if name not in used]
        if unused:
            raise RecipeError(f"{unused[0]}: not used by kind {self.kind!r}; remove it")
        if self.kind == "none" and non_default(self, ("tasks", "workers", "logging_dir")):
            raise RecipeError("kind: 'none' runs in this process; set kind 'local', 'slurm' or 'ray' to run tasks")
        if self.kind == "slurm" and not self.partition:
            raise RecipeError("partition: needed by kind 'slurm'")
        if self.kind == "ray" and self.address is not None and self.num_cpus is not None:
            raise RecipeError("num_cpus: sizes a Ray instance started here, not the cluster at `address`; remove it")


@dataclass
class _Step:
    """The work as a datatrove pipeline step (datatrove calls any ``step(data, rank, world_size)``);
    ``finish``: the global step, for the dependent Slurm job."""

    work: TaskWork
    endpoint: str | None  # the Hub's URL; its token stays in the environment
    finish: bool = False

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        _adopt_hub(self.endpoint)
        if self.finish:
            self.work.finish()
        else:
            self.work.run_task(rank, world_size)
        yield from data or ()

    def __repr__(self) -> str:
        return f"alignsmith: {'global step' if self.finish else 'shards'} of {type(self.work).__name__}"


def _adopt_hub(endpoint: str | None) -> None:
    """Point this task process's Hub clients at the parent's Hub (a forkserver or Slurm node may not be)."""
    if endpoint is None:
        return
    from alignsmith.hub.local import configure_client_env

    configure_client_env(endpoint, os.environ.get("HF_TOKEN"), os.environ.get("HF_HUB_DISABLE_XET", "1") != "0")


def _forget_unfinished(folder: Path, work: TaskWork, tasks: int) -> None:
    """Remove the completion marker of every task whose shards are not all on disk, so it runs again."""
    markers = folder / "completions"
    for rank in range(tasks):
        marker = markers / f"{rank:05d}"
        if marker.exists() and not work.task_done(rank, tasks):
            log.info("task %d was marked complete but some of its shards are missing: it runs again", rank)
            marker.unlink()


def execute(spec: ExecutorSpec, work: TaskWork, work_dir: str | Path) -> Any:
    """Run ``work``'s tasks on ``spec``'s executor, then its global step; None once submitted to Slurm."""
    folder = Path(spec.logging_dir or Path(work_dir) / "executor").resolve()
    _forget_unfinished(folder / "tasks", work, spec.tasks)
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint and urlsplit(endpoint).hostname in LOOPBACK and (spec.kind == "slurm" or spec.address):
        log.warning("the Hub at %s answers on this machine only: tasks on other nodes cannot reach it; on a cluster "
                    "use `hub: huggingface` or a Hub URL every node can reach", endpoint)
    tasks = _Step(work, endpoint)
    if spec.kind == "slurm":
        final = slurm_jobs(spec, tasks, _Step(work, endpoint, finish=True), folder)
        final.run()
        log.info("submitted Slurm job %s (%d tasks) and job %s, which publishes once they all finished; logs in %s",
                 final.depends_job_id, spec.tasks, final.job_id, folder)
        return None
    if spec.kind == "ray":
        with _ray(spec):
            executor = ray_executor(spec, tasks, folder)
            executor.run()
    else:
        from datatrove.executor import LocalPipelineExecutor

        executor = LocalPipelineExecutor([tasks], tasks=spec.tasks, workers=spec.workers or -1,
                                         logging_dir=str(folder / "tasks"))
        executor.run()
    unfinished = executor.get_incomplete_ranks(skip_completed=True)
    if unfinished:
        raise ExecutorError(f"{len(unfinished)} of {spec.tasks} tasks did not finish (first: {unfinished[:5]}); "
                              f"see {folder / 'tasks' / 'logs'}; a rerun resumes them")
    return work.finish()


def slurm_jobs(spec: ExecutorSpec, tasks: _Step, final: _Step, folder: Path) -> Any:
    """The global step's one-task Slurm executor, depending on the task array's: ``run()`` submits both."""
    from datatrove.executor import SlurmPipelineExecutor

    common = {"time": spec.time, "partition": spec.partition, "env_command": spec.env_command,
              "sbatch_args": dict(spec.sbatch_args), "mem_per_cpu_gb": spec.mem_per_cpu_gb}
    array = SlurmPipelineExecutor([tasks], tasks=spec.tasks, workers=spec.workers or -1, job_name=spec.job_name,
                                  cpus_per_task=spec.cpus_per_task, gpus_per_task=spec.gpus_per_task,
                                  logging_dir=str(folder / "tasks"), **common)
    # the global step always runs again: a finished marker must not skip publishing a rerun
    return SlurmPipelineExecutor([final], tasks=1, job_name=f"{spec.job_name}-finish", depends=array,
                                 logging_dir=str(folder / "finish"), skip_completed=False, **common)


def ray_executor(spec: ExecutorSpec, tasks: _Step, folder: Path) -> Any:
    from datatrove.executor.ray import RayPipelineExecutor

    return RayPipelineExecutor([tasks], tasks=spec.tasks, workers=spec.workers or -1,
                               logging_dir=str(folder / "tasks"), cpus_per_task=spec.cpus_per_task,
                               mem_per_cpu_gb=spec.mem_per_cpu_gb, gpus_per_task=spec.gpus_per_task)


@contextlib.contextmanager
def _ray(spec: ExecutorSpec) -> Iterator[None]:
    """Connect to (or start) Ray with the Hub variables in every worker's environment; a Ray started here
    is shut down after."""
    import ray

    if ray.is_initialized():
        yield
        return
    env = {name: os.environ[name] for name in HUB_VARIABLES if name in os.environ}
    try:
        ray.init(address=spec.address, num_cpus=spec.num_cpus, runtime_env={"env_vars": env},
                 include_dashboard=False, log_to_driver=False)
    except ConnectionError as err:
        raise ExecutorError(f"executor.address: no Ray cluster at {spec.address!r}: {err}") from None
    try:
        yield
    finally:
        ray.shutdown()
