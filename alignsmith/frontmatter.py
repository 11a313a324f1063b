"""A card's YAML front matter, read exactly as huggingface.co reads it.

A leaf module (huggingface_hub only): the embedded Hub's server, lineage and tests all read cards
through it, and none of them should pull in the card-building code to do so.
"""

from __future__ import annotations

from typing import Any


def card_metadata(text: str) -> dict[str, Any] | None:
    """A README's front matter as the Hub reads it; ``None`` when it has no metadata block.

    huggingface_hub finds the block with huggingface.co's own regex, so alignsmith, the embedded Hub
    and huggingface.co agree on what a card's metadata is. Raises ``yaml.YAMLError`` or ``ValueError``
    when the block is not a YAML mapping with string keys.
    """
    from huggingface_hub.repocard import REGEX_YAML_BLOCK, RepoCard

    if not REGEX_YAML_BLOCK.search(text):
        return None  # checked first: RepoCard would log a warning for every README without metadata
    try:
        return RepoCard(text).data.to_dict()
    except TypeError as err:  # a non-string key, or one clashing with CardData's own arguments
        raise ValueError(f"the README metadata cannot be card data: {err}") from None
