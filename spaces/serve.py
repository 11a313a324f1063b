"""``space serve``: the Space's app run here, against the recipe's Hub (the embedded one by default)."""

from __future__ import annotations

from spaces.app import build_demo
from spaces.config import SpaceRecipe
from spaces.source import HubSource


def run(recipe: SpaceRecipe) -> None:
    """Serve until interrupted; the local URL is printed once the app answers."""
    demo = build_demo(HubSource(recipe.show))
    _, url, _ = demo.launch(server_name=recipe.host, server_port=recipe.port or None, prevent_thread_lock=True,
                            quiet=True)
    print(f"alignsmith Space running at {url}", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
