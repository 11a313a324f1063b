"""``alignsmith build ...``: the dataset builders, each publishing a versioned Hub dataset."""

from alignsmith.cli import Command, CommandGroup

GROUP = CommandGroup("build", "dataset builders: convert, Deita selection, preference sets", "builders/", {
    "convert": Command(
        "Convert a dataset (ShareGPT, Alpaca, messages, prompt/completion, preference) to alignsmith "
        "records, validate it, and publish it.",
        "builders.convert:run",
        recipe="builders.convert:ConvertRecipe",
        example="recipes/build/convert/hh_rlhf_pool.yaml",
        deprecated=("data convert",),
    ),
    "deita": Command(
        "Deita: score, embed and select a pool (resumable, sharded; local, Slurm or Ray tasks), then publish the "
        "dataset.",
        "builders.deita.build:run",
        recipe="builders.deita.recipe:DeitaRecipe",
        example="recipes/build/deita/demo.yaml",
        deprecated=("deita build",),
    ),
    "pf-pairs": Command(
        "Polite Flamingo: (distorted, original) response pairs from a conversation dataset (resumable, sharded).",
        "builders.polite_flamingo.pairs:run",
        recipe="builders.polite_flamingo.recipe:PairsRecipe",
        example="recipes/build/pf-pairs/tiny.yaml",
    ),
    "pf-rewrite": Command(
        "Polite Flamingo: raw vision-language annotations rewritten by a published rewriter, filtered as PF-1M "
        "(resumable, sharded).",
        "builders.polite_flamingo.rewrite:run",
        recipe="builders.polite_flamingo.rewrite_recipe:RewriteRecipe",
        example="recipes/build/pf-rewrite/tiny.yaml",
    ),
    "preferences": Command(
        "Mix, validate and publish a DPO preference dataset from published sets.",
        "builders.preferences:run",
        recipe="builders.preferences:PreferencesRecipe",
        example="recipes/build/preferences/tiny.yaml",
        deprecated=("train preferences",),
    ),
})
