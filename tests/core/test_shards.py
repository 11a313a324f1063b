import numpy as np
import pytest

from alignsmith.shards import ShardMismatchError, ShardPlan, ShardStore, fingerprint


def test_plan_covers_every_row_once_across_tasks_and_processes():
    seen = []
    for task in range(3):
        for process in range(2):
            plan = ShardPlan(num_rows=103, shard_size=10, num_tasks=3, task_index=task,
                             num_processes=2, process_index=process)
            for shard in plan.mine():
                seen.extend(plan.rows(shard))
    assert sorted(seen) == list(range(103))
    assert ShardPlan(num_rows=103, shard_size=10).num_shards == 11


def test_bad_plan_is_refused():
    with pytest.raises(ValueError, match="outside"):
        ShardPlan(num_rows=5, shard_size=2, num_tasks=2, task_index=2)


def test_store_resumes_and_refuses_foreign_or_incomplete_work(tmp_path):
    fp = fingerprint({"model": "m", "rows": 3})
    store = ShardStore(tmp_path, "scores", fp, num_shards=2)
    store.write(0, scores=np.array([1.0, 2.0]))
    assert store.done(0) and not store.done(1) and store.missing() == [1]
    with pytest.raises(ShardMismatchError, match="1 of 2 shards are missing"):
        list(store.read_all())
    # a restarted job sees the finished shard
    again = ShardStore(tmp_path, "scores", fp, num_shards=2)
    assert again.missing() == [1]
    again.write(1, scores=np.array([3.0]))
    merged = np.concatenate([s["scores"] for s in again.read_all()])
    assert merged.tolist() == [1.0, 2.0, 3.0]
    assert not list((tmp_path / "scores").glob("*.tmp*"))
    with pytest.raises(ShardMismatchError, match="different job"):
        ShardStore(tmp_path, "scores", fingerprint({"model": "other"}), num_shards=2)
