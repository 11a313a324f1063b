"""Point the Hugging Face clients at the Hub a recipe names.

Every stage reads and writes through ``huggingface_hub``/``datasets``/``transformers``; the only
difference between the embedded Hub and huggingface.co is the endpoint and the token, which is
all this module changes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alignsmith.recipes import HubRecipe

log = logging.getLogger(__name__)

HUGGINGFACE_ENDPOINT = "https://huggingface.co"


def connect(recipe: HubRecipe) -> str:
    """Make the recipe's Hub the one every client in this process talks to; return its URL."""
    from alignsmith.hub.local import configure_client_env, ensure_local_hub

    if recipe.hub == "local":
        hub = ensure_local_hub(Path(recipe.hub_root) if recipe.hub_root else None)
        configure_client_env(hub.url, hub.token)
        log.info("using the embedded Hub at %s (storage: %s)", hub.url, hub.root)
        return hub.url
    if recipe.hub == "huggingface":
        if not os.environ.get("HF_TOKEN"):
            log.warning("hub is 'huggingface' but HF_TOKEN is not set: reads of public repos only")
        configure_client_env(HUGGINGFACE_ENDPOINT, os.environ.get("HF_TOKEN"), disable_xet=False)
        return HUGGINGFACE_ENDPOINT
    configure_client_env(recipe.hub.rstrip("/"), os.environ.get("HF_TOKEN"))
    log.info("using the Hub at %s", recipe.hub)
    return recipe.hub
