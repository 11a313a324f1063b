"""The Deita recipe refuses bad values when it loads, naming the key, before any model, pool or Hub is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignsmith import cli
from alignsmith.recipes import RecipeError, load_recipe
from builders.deita.recipe import DeitaRecipe

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "build" / "deita" / "demo.yaml"


@pytest.fixture
def nothing_loads(monkeypatch):
    """Pinning or loading a model, reading the pool or reaching a Hub fails the test."""

    def refuse(*args, **kwargs):
        pytest.fail("a bad recipe must be refused before any model, pool or Hub is touched")

    for target in ("alignsmith.lineage.pin", "alignsmith.models.loading.load_pretrained",
                   "alignsmith.sources.load_source", "alignsmith.endpoint.connect"):
        monkeypatch.setattr(target, refuse)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # the cases
        (["--selection.budget", "-5"], "selection.budget: must be a non-negative integer or None (no budget), got -5"),
        (["--selection.max_similarity", "7"], "selection.max_similarity: must be a finite cosine similarity, between -1 and 1"),
        (["--selection.block_size", "0"], "selection.block_size: must be a positive integer, got 0"),
        (["--output.tag", "5"], "output.tag: expected a string, got the number 5; quote it"),
        (["--output.tag", "1.0"], "output.tag: expected a string, got the number 1.0; quote it"),
        # selection: the strategies' own checks, run at load
        (["--selection.max_similarity", "-1.5"], "selection.max_similarity: must be a finite cosine similarity"),
        (["--selection.max_similarity", ".nan"], "selection.max_similarity: must be a finite cosine similarity"),
        (["--selection.budget", "1.5"], "selection.budget: expected int, got 1.5"),
        (["--selection.score", "product"], "selection.score: unknown score combination 'product'"),
        (["--selection.strategy", "knn"], "selection.strategy: 'knn' is not one of"),
        (["--selection.strategy", "ifd"], "difficulty_model: needed by selection.strategy 'ifd'"),
        # options the chosen strategy would silently ignore
        (["--selection.strategy", "topk", "--selection.max_similarity", "0.5"],
         "selection.max_similarity: not used by strategy 'topk', which takes score, tie_order"),
        (["--selection.strategy", "topk", "--selection.invalid_embeddings", "accept"],
         "selection.invalid_embeddings: not used by strategy 'topk'"),
        (["--selection.strategy", "random", "--selection.tie_order", "reference"],
         "selection.tie_order: not used by strategy 'random', which takes no options"),
        (["--selection.strategy", "perplexity", "--difficulty_model", "org/lm", "--selection.block_size", "64"],
         "selection.block_size: not used by strategy 'perplexity'"),
        # scorers
        (["--complexity_scorer.batch_size", "0"], "complexity_scorer.batch_size: must be at least 1, got 0"),
        (["--quality_scorer.max_length", "0"], "quality_scorer.max_length: must be at least 1, got 0"),
        (["--complexity_scorer.digit_token_ids", "[1, 2, 3]"],
         "complexity_scorer.digit_token_ids: expected 6 distinct token ids, got [1, 2, 3]"),
        (["--quality_scorer.digit_token_ids", "[1, 1, 2, 3, 4, 5]"], "quality_scorer.digit_token_ids: expected 6 distinct"),
        (["--quality_scorer.digit_token_ids", "[1, 2, 3, 4, 5, -6]"],
         "quality_scorer.digit_token_ids[5]: must be at least 0, got -6"),
        (["--complexity_scorer.dtype", "int8"], "complexity_scorer.dtype: 'int8' is not one of"),
        (["--complexity_scorer.revision", "1.0"], "complexity_scorer.revision: expected a string, got the number 1.0"),
        # embedder
        (["--embedder.batch_size", "0"], "embedder.batch_size: must be at least 1, got 0"),
        (["--embedder.max_length", "-1"], "embedder.max_length: must be at least 1, got -1"),
        (["--embedder.kind", "sentence_transformers"],  # the demo sets max_length, which sentence-transformers ignores
         "embedder.max_length: not used by kind 'sentence_transformers'"),
        (["--embedder.kind", "sentence_transformers", "--embedder.max_length", "2048", "--embedder.dtype", "float16"],
         "embedder.dtype: not used by kind 'sentence_transformers'"),
        # sharding
        (["--shard_size", "0"], "shard_size: must be at least 1, got 0"),
        (["--num_shards", "2"], "num_shards: removed; spread the work over machines with `executor: {kind: slurm"),
        (["--shard_index", "1"], "shard_index: removed; spread the work over machines with `executor: {kind: slurm"),
        # executor
        (["--executor.kind", "dask"], "executor.kind: 'dask' is not one of 'none', 'local', 'slurm', 'ray'"),
        (["--executor.tasks", "4"], "executor.kind: 'none' runs in this process; set kind 'local', 'slurm' or 'ray'"),
        (["--executor.kind", "local", "--executor.tasks", "0"], "executor.tasks: must be at least 1, got 0"),
        (["--executor.kind", "slurm", "--executor.tasks", "8"], "executor.partition: needed by kind 'slurm'"),
        (["--executor.kind", "local", "--executor.partition", "gpu"], "executor.partition: not used by kind 'local'"),
        (["--executor.kind", "ray", "--executor.time", "'1:00:00'"], "executor.time: not used by kind 'ray'"),
        (["--executor.kind", "slurm", "--executor.partition", "gpu", "--executor.address", "auto"],
         "executor.address: not used by kind 'slurm'"),
        (["--executor.kind", "ray", "--executor.address", "auto", "--executor.num_cpus", "8"],
         "executor.num_cpus: sizes a Ray instance started here"),
        # pool and output
        (["--pool.format", "csv"], "pool: dataset 'data/hh_rlhf/pool.jsonl' (split 'train'): unknown format 'csv'"),
        (["--pool.split", "2024"], "pool.split: expected a string, got the number 2024; quote it"),
        (["--output.repo_id", "noslash"], "output.repo_id: expected 'namespace/name', got 'noslash'"),
        (["--hub", "ftp://x"], "hub: expected 'local', 'huggingface' or an http(s) URL"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(nothing_loads, overrides, message):
    with pytest.raises(RecipeError) as raised:
        load_recipe(DeitaRecipe, DEMO, overrides)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["--selection.budget", "0"],  # publishes the scores, selects nothing
        ["--selection.budget", "null"],
        ["--selection.max_similarity", "1"],
        ["--selection.max_similarity", "-1"],
        ["--selection.strategy", "topk", "--selection.score", "mean_product", "--selection.tie_order", "reference"],
        ["--selection.strategy", "random", "--selection.score", "first_turn_product", "--selection.seed", "3"],
        ["--selection.strategy", "ifd", "--difficulty_model", "org/lm"],
        ["--embedder.kind", "sentence_transformers", "--embedder.max_length", "2048"],
        ["--executor.kind", "local", "--executor.tasks", "4", "--executor.workers", "2"],
        ["--executor.kind", "slurm", "--executor.tasks", "64", "--executor.partition", "gpu",
         "--executor.gpus_per_task", "1", "--executor.sbatch_args", "{account: lab}"],
        ["--executor.kind", "ray", "--executor.address", "auto", "--executor.gpus_per_task", "1"],
        ["--complexity_scorer.digit_token_ids", "[0, 29906, 29941, 29946, 29945, 29953]"],
        ["--output.tag", "'5'"],
    ],
)
def test_good_values_load(nothing_loads, overrides):
    load_recipe(DeitaRecipe, DEMO, overrides)


def test_the_cli_refuses_a_bad_recipe_in_one_line_before_running_anything(nothing_loads, monkeypatch, capsys):
    resolved = []
    resolve = cli._resolve
    monkeypatch.setattr(cli, "_resolve", lambda ref: resolved.append(ref) or resolve(ref))

    assert cli.main(["build", "deita", "--config", str(DEMO), "--selection.budget", "-5"]) == 1

    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "alignsmith build deita: error: selection.budget: must be a non-negative integer or None (no budget), got -5"
    )
    assert "Traceback" not in err
    assert resolved == ["builders.deita.recipe:DeitaRecipe"]  # builders.deita.build:run never even looked up
