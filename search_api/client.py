"""Query by image, point id or vector, with Qdrant's JSON filters; batches; count, scroll,
groups and recommendations. Callers get plain dicts: {"id", "score", "payload"}."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from pipeline.catalog import SOURCE_FIELD
from pipeline.images import ImageError, check_header, decode_rgb, to_rgb
from pipeline.model_info import TRIVIAL_MODEL, default_pooling, model_file
from pipeline.schemas import ReadOptions
from pipeline.settings import PREPROCESSINGS, Settings, get_settings
from pipeline.sources import source_class, upload_format
from pipeline.store import Hit, RecommendRequest, SearchRequest, open_reader
from pipeline.store.filters import condition_key, conditions, parse_filter
from search_api.query import Query, QueryError, read_query_file

if TYPE_CHECKING:
    from pipeline.embedder import Embedder

MAX_LIMIT = 1000


# What a query image may be: the formats scanners and viewers export, nothing exotic.
QUERY_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")


class SearchClient:
    def __init__(self, settings: Settings | None = None, model: str | None = None) -> None:
        """`model`: the model the caller means to query with; refused where a collection
        records another. Without it, image queries use the model each collection records."""
        self.settings = settings or get_settings()
        self.model = model
        self._decoding = threading.BoundedSemaphore(self.settings.query_decode_concurrency)
        self.store = open_reader(self.settings)

    def embedder_for(self, collection: str) -> Embedder:
        """The model and pooling that made the collection's vectors, loaded on the first image
        query: searches by point id or vector never import torch."""
        recorded = self.store.metadata(collection)
        model = recorded.get("model") or self.model or self.settings.model
        if self.model and self.model != model:
            raise QueryError(
                f"collection {collection!r} was made with model {model!r}, not {self.model!r}"
            )
        if model != TRIVIAL_MODEL:
            model_file(model, "config.json")  # a hub not reachable: refused now, not retried

        from pipeline.embedder import get_embedder  # torch: slow to import

        pooling = recorded.get("pooling", default_pooling(model))
        # Queries are preprocessed the way the collection's images were. A collection from
        # before the setting recorded its processor's class here: it was made the exact way.
        preprocessing = recorded.get("preprocessing")
        if preprocessing not in PREPROCESSINGS:
            preprocessing = "exact"
        return get_embedder(model, self.settings.device, pooling, preprocessing)

    def search(self, collection: str, query: Query) -> list[Hit]:
        return self.store.search(collection, self._request(collection, query))

    def search_batch(self, collection: str, queries: list[Query]) -> list[list[Hit]]:
        """Many queries in one store call, each with its own filter, limit and payload."""
        metadata = self.store.metadata(collection)
        requests = [self._request(collection, q, metadata) for q in queries]
        return self.store.search_batch(collection, requests)

    def id_of_key(self, collection: str, key: str) -> str:
        """The point id of the case a collection names `key` (its `source.key`: the image id,
        file name or series the reader keyed it by)."""
        self.store.metadata(collection)  # an unknown collection: said as such
        by_key = {"must": [{"key": "source.key", "match": {"value": key}}]}
        found = self.store.scroll(collection, filter=by_key, limit=2)["points"]
        if not found:
            raise QueryError(f"no point with key {key!r} in collection {collection!r}")
        if len(found) > 1:
            ids = ", ".join(point["id"] for point in found)
            raise QueryError(f"key {key!r} names several points ({ids}, ...): use --id")
        return found[0]["id"]

    def groups(
        self, collection: str, query: Query, group_by: str, groups: int = 10, per_group: int = 1
    ) -> list[dict]:
        """The closest cases per value of `group_by` (e.g. the most similar case per dx)."""
        asked = self._request(collection, query)
        # Its vector and filter only: a query's threshold and payload choice are not applied.
        request = SearchRequest(vector=asked.vector, filter=asked.filter, limit=_bounded(groups))
        return self.store.groups(collection, request, group_by, _bounded(per_group))

    def recommend(
        self,
        collection: str,
        positive: list[str],
        negative: list[str] | None = None,
        filter: dict | None = None,
        limit: int = 10,
    ) -> list[Hit]:
        if not positive:
            raise QueryError("recommend needs at least one positive example")
        request = RecommendRequest(
            positive=positive,
            negative=negative or [],
            filter=self._filter(collection, filter),
            limit=_bounded(limit),
        )
        return self.store.recommend(collection, request)

    def count(self, collection: str, filter: dict | None = None) -> int:
        return self.store.count(collection, filter=self._filter(collection, filter))

    def scroll(
        self,
        collection: str,
        filter: dict | None = None,
        limit: int = 10,
        offset: str | None = None,
    ) -> dict:
        return self.store.scroll(
            collection, filter=self._filter(collection, filter), limit=_bounded(limit),
            offset=offset,
        )  # fmt: skip

    def vector_of(self, collection: str, point_id: str) -> list[float]:
        found = self.store.retrieve(collection, [point_id], with_vectors=True)
        if not found:
            raise QueryError(f"no point {point_id!r} in collection {collection!r}")
        return found[0]["vector"]

    def embed_image(self, collection: str, image: Path | bytes) -> list[float]:
        return self.embed_query_picture(collection, image)[1]

    def embed_query_picture(
        self, collection: str, image: Path | bytes
    ) -> tuple[Image.Image, list[float]]:
        """A query image's picture, as decoded for the model, and its vector."""
        limits = (self.settings.query_max_image_pixels, self.settings.max_image_bytes)
        data = image if isinstance(image, bytes) else read_query_file(image, limits[1])
        try:
            medical = upload_format(data) is not None
            if not medical:  # a file that is no picture is refused before the model loads
                check_header(data, *limits, formats=QUERY_FORMATS)
            embedder = self.embedder_for(collection)
            with self._decoding:  # bounded: each decode may hold a large picture
                picture = self.medical_picture(collection, data) if medical else None
                picture = picture or decode_rgb(
                    data, *limits, embedder.draft_size, formats=QUERY_FORMATS
                )
                return picture, embedder.embed([picture])[0].tolist()
        except ImageError as exc:
            raise QueryError(f"query image refused: {exc}") from exc

    def medical_picture(self, collection: str, data: bytes) -> Image.Image | None:
        """An uploaded DICOM or NIfTI file's picture, made by its reader's own code with the
        read options the collection's points record (the same window, slice choice and crop
        as at ingest); None: neither format, an ordinary image."""
        fmt = upload_format(data)
        if fmt is None:
            return None
        options = self.read_options(collection, fmt)
        return to_rgb(source_class(fmt).query_picture(data, options))

    def read_options(self, collection: str, fmt: str) -> ReadOptions:
        """How the collection's points of format `fmt` were read: the options their `source`
        records (the first such point's, in id order); the settings' where it holds none."""
        of_format = {"must": [{"key": "source.format", "match": {"value": fmt}}]}
        found = self.store.scroll(collection, filter=of_format, limit=1)["points"]
        if not found:
            return self.settings.read_options()
        return ReadOptions(**found[0]["payload"]["source"].get("options", {}))

    def _request(
        self, collection: str, query: Query, metadata: dict | None = None
    ) -> SearchRequest:
        """The store's request; the cheap checks (the collection, the filter, the limit) come
        before an image query loads its model."""
        given = [x is not None for x in (query.image, query.point_id, query.vector)]
        if sum(given) != 1:
            raise QueryError("give exactly one of: an image, a point id, a vector")
        metadata = metadata or self.store.metadata(collection)  # an unknown collection: first
        filter = self._filter(collection, query.filter, metadata)
        limit = _bounded(query.limit)
        if query.image is not None:
            vector = self.embed_image(collection, query.image)
        elif query.point_id is not None:
            vector = self.vector_of(collection, query.point_id)
        else:
            vector = _vector(query.vector)
        return SearchRequest(
            vector=vector,
            filter=filter,
            limit=limit,
            score_threshold=query.score_threshold,
            with_payload=query.with_payload,
        )

    def _filter(
        self, collection: str, value: dict | None, metadata: dict | None = None
    ) -> dict | None:
        """Validate here, with a readable error, and send plain JSON on. A field the
        collection's schema lacks is refused with the fields it has: it would match nothing
        (or, under must_not, everything) without a word."""
        parsed = parse_filter(value)
        if parsed is None:
            return None
        schema = (metadata or self.store.metadata(collection)).get("schema")
        if schema:
            known = set(schema["fields"]) | {SOURCE_FIELD}
            for condition in conditions(parsed):
                key = condition_key(condition)
                if key is not None and _top_field(key) not in known:
                    raise QueryError(
                        f"collection {collection!r} has no field {key!r}; its fields: "
                        + ", ".join(sorted(known))
                    )
        return parsed.model_dump(mode="json", by_alias=True, exclude_none=True)


def _top_field(key: str) -> str:
    """The payload field a filter key starts at: `findings[]` and `source.format` read
    `findings` and `source`."""
    return key.split(".", 1)[0].split("[", 1)[0]


def _vector(value: object) -> list[float]:
    numbers = isinstance(value, list | tuple) and value
    if not numbers or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        raise QueryError("a vector must be a non-empty list of numbers")
    return [float(x) for x in value]


def _bounded(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit
