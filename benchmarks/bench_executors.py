"""Deita build throughput: one process vs datatrove's local executor with 2 workers, same model and rows.

Both run ``alignsmith build deita`` end to end (pool read, complexity and quality scoring, embedding,
publishing the scores to an embedded Hub; ``selection.budget: 0``) over the same synthetic pool with the
same tiny LLaMA as scorers and embedder (random weights: the scores mean nothing), each into a fresh
``work_dir``. The single process uses every core in its torch threads; the executor runs ``--tasks``
tasks, ``--workers`` at a time, each worker with ``cores / workers`` threads, so both use the same cores.
Wall time includes what each way pays to start: the executor's workers import torch and load the models
themselves. Both must publish identical scores, which is checked. Rows/s swing with the load of shared
cores: the load average read after each run is printed beside it.

    python benchmarks/bench_executors.py                  # 512 rows, hidden 256
    python benchmarks/bench_executors.py --quick          # 128 rows
    python benchmarks/bench_executors.py --rows 2048 --tasks 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hardware import load_average

WORDS = ("the of and to in is that for it as with was on be by this are from explain describe write compare list "
         "summarize why how what code python function data model energy climate history science music language "
         "health market city water light system network answer question because therefore however").split()


def write_pool(path: Path, rows: int, seed: int = 0) -> None:
    """ShareGPT conversations of 1-3 turns, 5-120 words a message."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            turns = []
            for _ in range(1 + i % 3):
                turns.append({"from": "human", "value": " ".join(rng.choice(WORDS, rng.integers(5, 40))) + "?"})
                turns.append({"from": "gpt", "value": " ".join(rng.choice(WORDS, rng.integers(10, 120))) + "."})
            fh.write(json.dumps({"id": f"row-{i}", "conversations": turns}) + "\n")


def build(args: argparse.Namespace, work: Path, name: str, model: Path, pool: Path, hub_url: str,
          executor: dict | None) -> float:
    """One ``build deita``; returns its wall time in seconds."""
    import yaml

    from alignsmith.cli import main as cli

    scorer = {"model": str(model), "batch_size": args.batch_size, "max_length": 512}
    recipe = {"hub": hub_url, "pool": {"path": str(pool), "format": "sharegpt"},
              "complexity_scorer": scorer, "quality_scorer": scorer,
              "embedder": {"model": str(model), "batch_size": args.batch_size, "max_length": 512},
              "selection": {"budget": 0}, "work_dir": str(work / name), "shard_size": args.shard_size,
              "output": {"repo_id": f"bench/{name}", "tag": "v1"}}
    if executor:
        recipe["executor"] = executor
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    start = time.perf_counter()
    if cli(["build", "deita", "--config", str(path)]) != 0:
        raise SystemExit(f"build {name} failed")
    return time.perf_counter() - start


def published_scores(name: str) -> list:
    from datasets import load_dataset

    scored = load_dataset(f"bench/{name}", "scored", revision="v1", split="train")
    return [scored["id"], scored["complexity_scores"], scored["quality_scores"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="128 rows")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)
    rows = 128 if args.quick else args.rows
    cores = len(os.sched_getaffinity(0))
    # read by torch when it is imported, here and in the executor's workers: the cores shared out
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // args.workers))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    from alignsmith.hub.local import configure_client_env, ensure_local_hub, stop_local_hub

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hub = ensure_local_hub(work / "hub-root")
        configure_client_env(hub.url, hub.token)
        try:
            import torch

            from alignsmith.models.tiny import build_causal_lm

            model = build_causal_lm(work / "tiny", hidden_size=args.hidden_size, num_layers=args.layers,
                                    max_position_embeddings=1024)
            pool = work / "pool.jsonl"
            write_pool(pool, rows)
            torch.set_num_threads(cores)
            single = build(args, work, "single", model, pool, hub.url, None)
            single_load = load_average()
            executor = {"kind": "local", "tasks": args.tasks, "workers": args.workers}
            local = build(args, work, "local", model, pool, hub.url, executor)
            local_load = load_average()
            same = published_scores("single") == published_scores("local")
        finally:
            stop_local_hub(hub.root)
    print(f"\nDeita build (score x2 + embed + publish), {rows} rows, tiny LLaMA hidden {args.hidden_size} x "
          f"{args.layers} layers, {cores} cores, shards of {args.shard_size}")
    print("| way | wall (s) | rows/s | load average after |\n| --- | --- | --- | --- |")
    print(f"| one process, {cores} torch threads | {single:.1f} | {rows / single:.1f} | {single_load} |")
    print(f"| local executor, {args.tasks} tasks, {args.workers} workers x {os.environ['OMP_NUM_THREADS']} threads "
          f"| {local:.1f} | {rows / local:.1f} | {local_load} |")
    print(f"identical published scores: {same}")
    return 0 if same else 1


if __name__ == "__main__":  # the executor's forkserver workers import this module again: nothing runs then
    sys.exit(main())
