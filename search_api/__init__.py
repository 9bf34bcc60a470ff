"""The query module: filtered similarity search over a medindex collection."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search_api.client import Query, SearchClient

__all__ = ["Query", "SearchClient"]


def __getattr__(name: str) -> object:
    """The client, imported when first asked for: `medindex serve` and `image` load this
    package (search_api/cli.py) without needing it, and qdrant-client is slow to import."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from search_api import client

    return getattr(client, name)
