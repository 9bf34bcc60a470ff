"""Issue 23, item 4: the page's counts come from the store over the whole collection (its
facet API through the store worker), not a sample: each equals the points counted by filter."""

from __future__ import annotations

from search_api import SearchClient
from search_api.facets import collection_view


def test_the_page_counts_every_point(ingested: dict) -> None:
    view = collection_view("skin")
    client = SearchClient()
    assert view.exact and view.points == ingested["indexed"]
    keywords = [f for f in view.fields if f.type == "keyword" and f.exact]
    numbers = [f for f in view.fields if f.histogram and f.exact]
    assert keywords and numbers, view.fields
    for field in keywords:  # single values here: the counts add up to the points holding one
        holding = {"must_not": [{"is_empty": {"key": field.name}}]}
        assert sum(count for _, count in field.counts) == client.count("skin", holding)
        for value, count in (*field.counts[:5], *field.counts[-5:]):  # the most and least common
            match = {"must": [{"key": field.name, "match": {"value": value}}]}
            assert client.count("skin", match) == count, (field.name, value)
    for field in numbers:
        holding = {"must_not": [{"is_empty": {"key": field.name}}]}
        assert sum(b.count for b in field.histogram) == client.count("skin", holding)
        assert field.histogram[0].low == field.low and field.histogram[-1].high == field.high
