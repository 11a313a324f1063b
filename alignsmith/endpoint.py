"""Point the Hugging Face clients at the Hub a recipe names.

Every stage reads and writes through ``huggingface_hub``/``datasets``/``transformers``; the only
difference between the embedded Hub and huggingface.co is the endpoint and the token, which is
all this module changes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alignsmith.errors import AlignsmithError
from alignsmith.recipes import HubRecipe

log = logging.getLogger(__name__)

HUGGINGFACE_ENDPOINT = "https://huggingface.co"


class HubUnreachableError(AlignsmithError):
    """The Hub a recipe names does not answer: said before any work starts, not deep inside a client."""


def _check_reachable(url: str) -> None:
    """Any HTTP answer will do (even 401 or 404); only a connection failure is an error."""
    import httpx

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return  # offline mode reads from the local cache only
    try:
        httpx.get(f"{url}/api/whoami-v2", timeout=10.0)
    except httpx.TransportError as err:
        raise HubUnreachableError(f"cannot reach {url}/: {err}") from None


def connect(recipe: HubRecipe) -> str:
    """Make the recipe's Hub the one every client in this process talks to; return its URL."""
    from alignsmith.hub.local import configure_client_env, ensure_local_hub

    if recipe.hub == "local":
        hub = ensure_local_hub(Path(recipe.hub_root) if recipe.hub_root else None)
        configure_client_env(hub.url, hub.token)
        if hub.started:  # said now, so that a run failing later does not leave a server nobody knows of
            log.warning("started the embedded Hub for %s at %s (pid %d); it keeps running in the background after "
                        "this command: `alignsmith hub stop --root %s` stops it", hub.root, hub.url, hub.pid, hub.root)
        else:
            log.info("using the embedded Hub at %s (storage: %s)", hub.url, hub.root)
        return hub.url
    if recipe.hub == "huggingface":
        if not os.environ.get("HF_TOKEN"):
            log.warning("hub is 'huggingface' but HF_TOKEN is not set: reads of public repos only")
        configure_client_env(HUGGINGFACE_ENDPOINT, os.environ.get("HF_TOKEN"), disable_xet=False)
        _check_reachable(HUGGINGFACE_ENDPOINT)
        return HUGGINGFACE_ENDPOINT
    _check_reachable(recipe.hub.rstrip("/"))
    configure_client_env(recipe.hub.rstrip("/"), os.environ.get("HF_TOKEN"))
    log.info("using the Hub at %s", recipe.hub)
    return recipe.hub
