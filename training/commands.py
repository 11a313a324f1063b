"""``alignsmith train ...``: fine-tuning on published datasets, each run pushing a model."""

from alignsmith.cli import Command, CommandGroup

GROUP = CommandGroup("train", "SFT, DPO, LoRA and multi-stage training", "training/", {
    "sft": Command(
        "Supervised fine-tuning (full or LoRA) on published datasets; pushes the model with its card.",
        "training.train:run",
        recipe="training.recipes:SFTRecipe",
        example="recipes/train/sft/tiny.yaml",
    ),
    "dpo": Command(
        "Direct preference optimisation on published preference data; pushes the model.",
        "training.train:run",
        recipe="training.recipes:DPORecipe",
        example="recipes/train/dpo/tiny.yaml",
    ),
    "run": Command(
        "A multi-stage run (e.g. SFT then DPO, or the U-shaped schedule), each stage reading the last.",
        "training.pipeline:run",
        recipe="training.recipes:PipelineRecipe",
        example="recipes/train/run/tiny_sft_then_dpo.yaml",
    ),
})
