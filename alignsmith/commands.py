"""The core's command groups: the embedded Hub, tiny models, lineage, chains and reproduction (``alignsmith/hub``,
``alignsmith/models``, ``alignsmith/lineage.py``, ``alignsmith/chain.py``, ``alignsmith/reproduce.py``)."""

from alignsmith.cli import Command, CommandGroup

HUB = CommandGroup("hub", "the embedded Hub (file-backed, Hub-compatible server)", "alignsmith/hub/", {
    "serve": Command("Run the embedded Hub server in the foreground.", "alignsmith.hub.cli:serve"),
    "start": Command("Start the embedded Hub in the background (or find the running one).", "alignsmith.hub.cli:start"),
    "stop": Command("Stop the background embedded Hub of a storage folder.", "alignsmith.hub.cli:stop"),
    "token": Command("Create an access token for the embedded Hub.", "alignsmith.hub.cli:token"),
})

MODELS = CommandGroup("models", "tiny offline models for tests, demos and benchmarks", "alignsmith/models/", {
    "tiny": Command("Build a tiny offline model (seeded) and optionally publish it.", "alignsmith.models.tiny:cli"),
})

LINEAGE = CommandGroup("lineage", "read lineage back from published artifacts", "alignsmith/lineage.py", {
    "show": Command("Print the lineage recorded in a published artifact's card.", "alignsmith.lineage:cli"),
})

CHAIN = CommandGroup("chain", "several commands in order from one recipe (the main job is one)", "alignsmith/chain.py", {
    "run": Command("Run a chain of commands, each with its recipe; skip steps already published by the same "
                   "recipe.", "alignsmith.chain:run", recipe="alignsmith.chain:ChainRecipe",
                   example="recipes/chain/demo.yaml"),
})

REPRODUCE = CommandGroup("reproduce", "re-run what made a published artifact, from its card, and compare",
                         "alignsmith/reproduce.py", {
    "reproduce": Command("REPO [--revision TAG] [--repo-type dataset|model]: re-run the recorded command with its "
                         "recipe and pinned inputs; compare rows, weights and metrics.", "alignsmith.reproduce:cli"),
})
