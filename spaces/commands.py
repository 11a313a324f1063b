"""``alignsmith space ...``: the results Space, served here or published to the Hub."""

from alignsmith.cli import Command, CommandGroup

GROUP = CommandGroup("space", "a Gradio Space of models next to their results, read from the Hub", "spaces/", {
    "push": Command(
        "Render the Space folder (app, space.yaml, card) and publish it as one tagged commit of a Space repo.",
        "spaces.push:run",
        recipe="spaces.config:SpaceRecipe",
        example="recipes/space/push/demo.yaml",
    ),
    "serve": Command(
        "Run the Space's app here against the recipe's Hub (embedded by default) and print its local URL.",
        "spaces.serve:run",
        recipe="spaces.config:SpaceRecipe",
        example="recipes/space/serve/demo.yaml",
    ),
})
