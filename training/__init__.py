"""Training stages (SFT, DPO, LoRA, multi-stage): read datasets from the Hub, push models to it."""
