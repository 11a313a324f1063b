"""alignsmith.executors on datatrove's local executor with a job of plain shard files (no models): every task
computes the shards it owns, the global step runs once after all of them, and a rerun redoes only what is missing.
The builders' own runs on the local, Slurm and Ray executors are in test_deita_build.py and test_pf_rewrite.py."""

import numpy as np
import pytest

from alignsmith.executors import ExecutorSpec, ShardTasks, execute
from alignsmith.recipes import RecipeError, build
from alignsmith.shards import ShardPlan, ShardStore, all_done

ROWS, SHARD_SIZE = 10, 2  # 5 shards


class Squares(ShardTasks):
    """Squares of 0..ROWS-1, shard by shard; ``fail_rank`` raises instead, as a task killed midway."""

    def __init__(self, root, fail_rank=None):
        super().__init__()
        self.root, self.fail_rank = root, fail_rank

    def load(self):
        return np.arange(ROWS)

    def store(self):
        return ShardStore(self.root, "squares", "job", -(-ROWS // SHARD_SIZE))

    def run_task(self, rank, world_size):
        plan, store = ShardPlan(ROWS, SHARD_SIZE, world_size, rank), self.store()
        for shard in plan.mine():
            if rank == self.fail_rank:
                raise RuntimeError(f"task {rank} killed")
            if not store.done(shard):
                rows = self.input()[plan.rows(shard).start : plan.rows(shard).stop]
                store.write(shard, squares=rows**2)

    def task_done(self, rank, world_size):
        return all_done([self.store()], ShardPlan(ROWS, SHARD_SIZE, world_size, rank).mine())

    def finish(self):
        return np.concatenate([s["squares"] for s in self.store().read_all()]).tolist()


def spec(**values):
    return build(ExecutorSpec, {"kind": "local", "tasks": 3, "workers": 1, **values})


def mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in (root / "squares").glob("shard-*")}


def test_tasks_then_the_global_step_and_a_rerun_redoes_only_the_unfinished_task(tmp_path):
    with pytest.raises(RuntimeError, match="task 1 killed"):
        execute(spec(), Squares(tmp_path, fail_rank=1), tmp_path)
    markers = tmp_path / "executor" / "tasks" / "completions"
    assert sorted(p.name for p in markers.iterdir()) == ["00000"]  # task 0 finished before task 1 died
    first = mtimes(tmp_path)
    assert sorted(first) == ["shard-00000-of-00005.npz", "shard-00003-of-00005.npz"]  # task 0 owns shards 0, 3

    assert execute(spec(), Squares(tmp_path), tmp_path) == [i * i for i in range(ROWS)]
    again = mtimes(tmp_path)
    assert {name: again[name] for name in first} == first and len(again) == 5
    assert sorted(p.name for p in markers.iterdir()) == ["00000", "00001", "00002"]

    # a task marked done whose shard is gone runs again; the others are skipped
    (tmp_path / "squares" / "shard-00002-of-00005.npz").unlink()
    assert execute(spec(), Squares(tmp_path), tmp_path) == [i * i for i in range(ROWS)]
    assert {k: v for k, v in mtimes(tmp_path).items() if k != "shard-00002-of-00005.npz"} == {
        k: v for k, v in again.items() if k != "shard-00002-of-00005.npz"}


def test_the_loaded_input_is_not_pickled_to_the_tasks(tmp_path):
    import pickle

    work = Squares(tmp_path)
    work.input()
    assert pickle.loads(pickle.dumps(work))._loaded is None and work._loaded is not None


@pytest.mark.parametrize("values, message", [
    ({"kind": "none", "tasks": 2}, "kind: 'none' runs in this process"),
    ({"kind": "slurm"}, "partition: needed by kind 'slurm'"),
    ({"kind": "local", "gpus_per_task": 1}, "gpus_per_task: not used by kind 'local'"),
    ({"kind": "ray", "sbatch_args": {"account": "lab"}}, "sbatch_args: not used by kind 'ray'"),
])
def test_settings_of_another_executor_are_refused_at_load(values, message):
    with pytest.raises(RecipeError, match=message):
        build(ExecutorSpec, values)
