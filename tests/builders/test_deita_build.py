"""End to end: `alignsmith build deita` on the embedded Hub with a tiny published scorer."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import hf_hub_download

from alignsmith.cli import main
from alignsmith.frontmatter import card_metadata
from alignsmith.lineage import ArtifactRef, read_lineage
from alignsmith.recipes import build
from alignsmith.shards import ShardMismatchError
from builders.deita.build import Models, Pool, Work
from builders.deita.recipe import DeitaRecipe
from builders.deita.selection import select_diverse

POOL_ROWS = 40


@pytest.fixture(scope="module")
def scorer(hub, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "scorer"
    assert main(["models", "tiny", "--out", str(folder), "--hidden-size", "128", "--seed", "3",
                 "--publish", "deita-test/tiny-scorer", "--tag", "v1", "--hub", hub.url]) == 0
    return "deita-test/tiny-scorer"


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta river mountain python garden violin orbit copper lantern".split()
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with open(path, "w") as fh:
        for i in range(POOL_ROWS):
            turns = []
            for _ in range(1 + i % 3):
                turns.append({"from": "human", "value": " ".join(rng.choice(words, 3 + i % 7)) + "?"})
                turns.append({"from": "gpt", "value": " ".join(rng.choice(words, 5 + (i * 7) % 23)) + "."})
            fh.write(json.dumps({"id": f"row-{i}", "conversations": turns}) + "\n")
        fh.write(json.dumps({"id": "broken", "conversations": [{"from": "human", "value": ""}]}) + "\n")
    return path


def write_recipe(tmp_path, pool, scorer, hub, repo, **overrides):
    recipe = {
        "hub": hub.url,
        "pool": {"path": str(pool), "format": "sharegpt"},
        "complexity_scorer": {"model": scorer, "revision": "v1", "batch_size": 4},
        "quality_scorer": {"model": scorer, "revision": "v1", "batch_size": 4},
        "embedder": {"model": scorer, "revision": "v1", "max_length": 256},
        # random tiny embedders put every pair near cosine 1; 0.999 makes the filter bite sometimes
        "selection": {"budget": 12, "max_similarity": 0.999},
        "work_dir": str(tmp_path / "work"),
        "shard_size": 8,
        "publish_embeddings": True,
        "output": {"repo_id": repo, "tag": "v1.0.0"},
    }
    for key, value in overrides.items():
        recipe[key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def load(repo, config, split="train", tag="v1.0.0"):
    return load_dataset(repo, config, revision=tag, split=split)


def readme(repo) -> str:
    return open(hf_hub_download(repo, "README.md", repo_type="dataset", revision="v1.0.0"), encoding="utf-8").read()


def listed_configs(card: str) -> list[str]:
    section = card.split("## Configs\n\n")[1].split("\n\n")[0]
    return [line.split("`")[1] for line in section.splitlines()]


def test_build_publishes_scored_selected_and_lineage(tmp_path, pool, scorer, hub):
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/full")
    assert main(["build", "deita", "--config", str(recipe)]) == 0

    scored, rejected = load("deita-test/full", "scored"), load("deita-test/full", "rejected")
    selected, embeddings = load("deita-test/full", "selected"), load("deita-test/full", "embeddings")
    assert scored.num_rows == POOL_ROWS and rejected.num_rows == 1
    assert rejected[0]["id"] == "broken" and rejected[0]["row_index"] == POOL_ROWS and "empty" in rejected[0]["reason"]
    assert 1 <= selected.num_rows <= 12 and selected["rank"] == list(range(selected.num_rows))

    # per-turn scores: one per (user, assistant) pair, each an expectation over 1..6
    for row in scored:
        n_turns = sum(m["role"] == "user" for m in row["messages"])
        assert len(row["complexity_scores"]) == len(row["quality_scores"]) == n_turns
        assert all(1.0 <= s <= 6.0 for s in row["complexity_scores"] + row["quality_scores"])
        assert row["final_score"] == pytest.approx(sum(c * q for c, q in zip(row["complexity_scores"], row["quality_scores"])))

    # the published selection is exactly the greedy definition applied to the published scores
    vectors = np.array(embeddings["embedding"], dtype=np.float32)
    expected = select_diverse(scored["final_score"], vectors, budget=12, max_similarity=0.999)
    assert [scored[int(i)]["id"] for i in expected.selected] == selected["id"]
    decisions = dict(zip(scored["id"], scored["selection_decision"]))
    assert all(decisions[i] == "selected" for i in selected["id"])
    nearest = expected.row_report()["nearest_selected_row"]
    assert scored["nearest_selected_id"] == [scored[int(j)]["id"] if j >= 0 else None for j in nearest]

    lineage, sha = read_lineage("deita-test/full", "dataset", "v1.0.0")
    scorer_sha = read_lineage(scorer, "model", "v1")[1]
    assert {m.role: m.sha for m in lineage.models} == {
        "complexity_scorer": scorer_sha, "quality_scorer": scorer_sha, "embedder": scorer_sha}
    assert lineage.inputs[0].repo_type == "local" and len(lineage.inputs[0].sha) == 64
    assert lineage.recipe["selection"]["budget"] == 12 and lineage.command == "build deita"

    # the card: what a researcher looks for, a warning about the tiny scorer's random weights, no local path
    card = readme("deita-test/full")
    meta = card_metadata(card)
    assert meta["pretty_name"] == "Deita selection: deita-test/full" and meta["size_categories"] == ["n<1K"]
    assert "language" not in meta and "random-weights" in meta["tags"]
    assert "> [!WARNING]" in card and "> - complexity_scorer: `deita-test/tiny-scorer`" in card
    assert "```bibtex\n@article{liu2023what," in card and "arXiv:2312.15685" in card
    assert listed_configs(card) == ["selected", "scored", "rejected", "embeddings"]
    assert str(pool.parent) not in card and str(tmp_path) not in card and "pool.jsonl" in card

    # a published tag is never moved
    assert main(["build", "deita", "--config", str(recipe)]) == 1


def _published(repo, tag="v1.0.0"):
    scored = load(repo, "scored", tag=tag)
    return scored["id"], scored["complexity_scores"], scored["quality_scores"], load(repo, "selected", tag=tag)["id"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pool, scorer, hub):
    """What one uninterrupted single-process build publishes; every other way must publish the same."""
    recipe = write_recipe(tmp_path_factory.mktemp("reference"), pool, scorer, hub, "deita-test/reference")
    assert main(["build", "deita", "--config", str(recipe)]) == 0
    return _published("deita-test/reference")


def test_killed_build_resumes_without_recomputing(tmp_path, pool, scorer, hub, reference):
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/resumed")
    scores_dir = tmp_path / "work" / "scores"
    process = subprocess.Popen([sys.executable, "-m", "alignsmith.cli", "build", "deita", "--config", str(recipe)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(scores_dir.glob("shard-*.npz"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in scores_dir.glob("shard-*.npz")}
    assert 2 <= len(finished) < 5, "the build should have been killed midway"

    assert main(["build", "deita", "--config", str(recipe)]) == 0
    for name, mtime in finished.items():
        assert (scores_dir / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"

    assert _published("deita-test/resumed") == reference


def _shard_files(work_dir):
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in work_dir.glob("*/shard-*.npz")}


def test_local_executor_tasks_publish_the_same_and_a_rerun_redoes_only_unfinished_tasks(tmp_path, pool, scorer, hub,
                                                                                        reference):
    # 40 rows in 5 shards of 8 over 4 tasks, 2 at a time: task 0 owns shards 0 and 4, task 1 shard 1, ...
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/local",
                          executor={"kind": "local", "tasks": 4, "workers": 2})
    assert main(["build", "deita", "--config", str(recipe)]) == 0
    assert _published("deita-test/local") == reference
    markers = tmp_path / "work" / "executor" / "tasks" / "completions"
    assert sorted(p.name for p in markers.iterdir()) == ["00000", "00001", "00002", "00003"]

    # task 1 killed before it finished (no marker, no shard); task 2 marked done, but a shard of it is gone
    (markers / "00001").unlink()
    redo = [p for p in _shard_files(tmp_path / "work") if p.name.startswith(("shard-00001-", "shard-00002-"))]
    for path in redo:
        path.unlink()
    kept = _shard_files(tmp_path / "work")
    assert len(redo) == 4 and len(kept) == 2 * 5 - 4  # shards 1 and 2 of the scores and the embeddings
    assert main(["build", "deita", "--config", str(recipe), "--output.tag", "v2"]) == 0
    after = _shard_files(tmp_path / "work")
    assert {p: after[p] for p in kept} == kept  # the other tasks' shards were not touched
    assert sorted(set(after) - set(kept)) == sorted(redo)
    assert _published("deita-test/local", "v2") == reference


def test_slurm_executor_submits_a_task_array_and_a_dependent_publishing_job(tmp_path, pool, scorer, hub, reference,
                                                                            monkeypatch):
    """No Slurm here: what would go to sbatch is captured, then each job runs as Slurm would run it."""
    import dill
    from datatrove.executor import slurm

    submitted = []

    def sbatch(script, retrieve_id, *args):
        submitted.append((script, args))
        return str(100 + len(submitted))

    monkeypatch.setattr(slurm, "launch_slurm_job", sbatch)
    executor = {"kind": "slurm", "tasks": 3, "workers": 2, "partition": "gpu", "time": "02:00:00", "gpus_per_task": 1,
                "env_command": "source /shared/alignsmith/.venv/bin/activate", "sbatch_args": {"account": "my-lab"}}
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/slurm", executor=executor)
    assert main(["build", "deita", "--config", str(recipe)]) == 0
    folder = tmp_path / "work" / "executor"
    (tasks, tasks_args), (stats, _), (final, final_args), _ = submitted
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --time=02:00:00", "#SBATCH --gpus=1",
                 "#SBATCH --account=my-lab", "#SBATCH --job-name=alignsmith\n",
                 "source /shared/alignsmith/.venv/bin/activate",
                 f"launch_pickled_pipeline {folder / 'tasks' / 'executor.pik'}"):
        assert line in tasks, line
    assert "--export=ALL,RUN_OFFSET=0" in tasks_args and "afterok:101" in stats
    assert "#SBATCH --array=0-0\n" in final and "#SBATCH --job-name=alignsmith-finish" in final
    assert "--gpus" not in final and f"launch_pickled_pipeline {folder / 'finish' / 'executor.pik'}" in final
    assert "--dependency=afterok:101" in final_args  # publishing waits for every task
    assert not list((tmp_path / "work" / "scores").glob("shard-*"))  # nothing ran here

    # each job as Slurm runs it: `launch_pickled_pipeline` loads the executor and runs its array index
    monkeypatch.setattr(slurm, "expand_slurm_nodelist", lambda nodes: [nodes])
    for name in ("NODE_RANK", "EXECUTOR", "NODE_IPS", "CPUS_PER_TASK", "MEM_PER_CPU", "GPUS_ON_NODE"):
        monkeypatch.setenv(f"DATATROVE_{name}", "")  # set by datatrove in the job; restored after the test
    monkeypatch.setenv("SLURM_NODELIST", "node-1")
    requeue = signal.getsignal(signal.SIGUSR1)
    try:
        for job, indexes in (("tasks", range(3)), ("finish", [0])):
            for index in indexes:
                monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(index))
                with open(folder / job / "executor.pik", "rb") as fh:
                    dill.load(fh).run()
    finally:
        signal.signal(signal.SIGUSR1, requeue)
    assert _published("deita-test/slurm") == reference


def test_ray_executor_runs_the_tasks_on_a_ray_instance_it_starts_and_stops(tmp_path, pool, scorer, hub, reference):
    import psutil
    import ray

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/ray",
                          executor={"kind": "ray", "tasks": 2, "num_cpus": 4})
    assert main(["build", "deita", "--config", str(recipe)]) == 0
    assert _published("deita-test/ray") == reference
    assert not ray.is_initialized()
    deadline = time.monotonic() + 30
    while (left := {p.pid for p in psutil.Process().children(recursive=True)} - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray left processes behind: {left}"


def test_old_multi_machine_keys_name_their_replacement(tmp_path, pool, scorer, hub, capsys):
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/old-keys", num_shards=2, shard_index=0)
    assert main(["build", "deita", "--config", str(recipe)]) == 1
    assert "num_shards: removed; spread the work over machines with `executor: {kind: slurm, tasks: N}`" in (
        capsys.readouterr().err)


def test_two_processes_give_the_same_result_as_one(tmp_path, pool, scorer, hub, reference):
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/two-proc")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "alignsmith.cli", "build", "deita", "--config", str(recipe)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _published("deita-test/two-proc") == reference


def test_foreign_work_dir_is_refused(tmp_path, pool, scorer, hub):
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/foreign")
    assert main(["build", "deita", "--config", str(recipe), "--selection.budget", "0"]) == 0
    # same work_dir, different scorer settings: the finished shards are not this job's
    assert main(["build", "deita", "--config", str(recipe), "--context", "history"]) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        (["--quality_scorer.model", "nobody/missing"], "quality_scorer: model 'nobody/missing' is neither"),
        (["--embedder.revision", "v404"], "embedder: model 'deita-test/tiny-scorer' has no revision 'v404'"),
        (["--pool.path", "nobody/no-pool"], "no such dataset repo"),
    ],
)
def test_missing_models_and_pools_are_named_not_traced(tmp_path, pool, scorer, hub, capsys, override, message):
    recipe = write_recipe(tmp_path, pool, scorer, hub, "deita-test/missing")
    assert main(["build", "deita", "--config", str(recipe), *override]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("strategy", ["ifd", "random", "response_length"])
def test_baseline_strategies_publish_their_selection(tmp_path, pool, scorer, hub, strategy):
    repo = f"deita-test/{strategy.replace('_', '-')}"
    recipe = write_recipe(tmp_path, pool, scorer, hub, repo, difficulty_model=scorer, publish_embeddings=False,
                          selection={"strategy": strategy, "budget": 5, "seed": 1})
    assert main(["build", "deita", "--config", str(recipe)]) == 0
    scored, selected = load(repo, "scored"), load(repo, "selected")
    assert selected.num_rows == 5 and all(v is not None and v > 0 for v in scored["perplexity"])
    by_id = {row["id"]: row for row in scored}
    chosen = [by_id[i] for i in selected["id"]]
    assert all(row["selection_decision"] == "selected" for row in chosen)
    if strategy == "ifd":
        ifd = [row["ifd"] for row in chosen]
        assert ifd == sorted(ifd, reverse=True) and ifd[0] == max(scored["ifd"])
    if strategy == "response_length":
        lengths = [sum(len(m["content"]) for m in row["messages"] if m["role"] == "assistant") for row in chosen]
        assert lengths == sorted(lengths, reverse=True)
    lineage, _ = read_lineage(repo, "dataset", "v1.0.0")
    assert "difficulty_model" in {m.role for m in lineage.models}
    assert listed_configs(readme(repo)) == ["selected", "scored", "rejected"]  # only what was published


def test_other_conversations_under_the_same_ids_and_pool_sha_do_not_reuse_shards(tmp_path):
    # e.g. another split or `columns` mapping of the same Hub commit, with ids generated from row numbers
    recipe = build(DeitaRecipe, {"pool": {"path": "org/pool"}, "complexity_scorer": {"model": "org/c"},
                                 "quality_scorer": {"model": "org/q"}, "embedder": {"model": "org/e"},
                                 "work_dir": str(tmp_path), "shard_size": 2, "output": {"repo_id": "org/out"}})
    models = Models(*(ArtifactRef(role, f"org/{role}", "model", None, "b" * 40)
                      for role in ("complexity_scorer", "quality_scorer", "embedder")), difficulty=None)

    def pool(answer: str) -> Pool:
        records = [{"id": f"org/pool-{i}", "messages": [{"role": "user", "content": f"question {i}"},
                                                         {"role": "assistant", "content": f"{answer} {i}"}]}
                   for i in range(3)]
        return Pool(None, records, [], ArtifactRef("pool", "org/pool", "dataset", None, "a" * 40))

    Work(recipe, pool("yes"), models)
    Work(recipe, pool("yes"), models)  # the same job resumes
    with pytest.raises(ShardMismatchError, match="different job"):
        Work(recipe, pool("no"), models)


def test_a_pool_without_one_valid_row_is_a_clear_error(tmp_path, scorer, hub, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"id": "only", "conversations": [{"from": "human", "value": "hi"}]}) + "\n")
    recipe = write_recipe(tmp_path, broken, scorer, hub, "deita-test/empty")
    assert main(["build", "deita", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "none of its 1 rows is a valid conversation" in err and "no_assistant" in err and "Traceback" not in err
    # the first reasons in full, not only their codes
    assert "first: record 'only' (row 0), field 'conversations': no assistant message" in err


def test_the_pool_log_line_names_the_pool_once(tmp_path, pool, scorer, hub, caplog):
    from builders.deita.build import load_pool

    recipe = build(DeitaRecipe, yaml.safe_load(write_recipe(tmp_path, pool, scorer, hub, "deita-test/log").read_text()))
    with caplog.at_level("INFO", logger="builders.deita.build"):
        load_pool(recipe)
    (line,) = [r.getMessage() for r in caplog.records if "rows" in r.getMessage()]
    assert line.startswith(f"read the pool, dataset {str(pool)!r} (split 'train'): {POOL_ROWS + 1} rows")
