"""The query module: filtered similarity search over a medindex collection."""

from search_api.client import Query, SearchClient

__all__ = ["Query", "SearchClient"]
