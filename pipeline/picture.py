"""The picture of a row: what the embed step feeds the model, made again on demand.

The embed step, `medindex image` and the search page's thumbnails all go through `to_picture`,
so a thumbnail is exactly the picture that was embedded (the same slice, window and crop);
`levels_of` gives the same slice and crop before its window, for the page's viewer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from pipeline.images import ImageError, decode_rgb, to_rgb
from pipeline.schemas import ReadOptions, SourceRef
from pipeline.settings import Settings
from pipeline.sources import Source, SourceRow, open_source
from pipeline.sources.base import check_key

if TYPE_CHECKING:
    from pipeline.sources.window import Levels


def to_picture(
    record: SourceRow,
    settings: Settings,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """A row's RGB picture; raises ImageError with the row's reason when there is none.
    `draft_size`: encoded JPEGs may be decoded at reduced size, never below it."""
    if record.refusal:
        raise ImageError(record.refusal)
    if isinstance(record.image, Image.Image):
        return to_rgb(record.image)  # already made by the reader (a slice, a DICOM frame)
    return decode_rgb(record.image, settings.max_image_pixels, settings.max_image_bytes, draft_size)


def picture_of(source: dict, settings: Settings) -> Image.Image:
    """The picture of a point, from its payload's `source` reference (`Source.reference`)."""
    reader, row = _row_of(source)
    (record,) = reader.read([row], settings.max_image_bytes)
    check_key(record.key, source.get("key"), row)
    return to_picture(record, settings)


def levels_of(source: dict, settings: Settings) -> Levels:
    """The same picture before its window (DICOM, NIfTI), for a viewer to window anew."""
    reader, row = _row_of(source)
    return reader.levels(row, source.get("key"), settings.max_image_bytes)


def _row_of(source: dict) -> tuple[Source, int]:
    ref = SourceRef(
        dataset=source["dataset"],
        split=source.get("split", "train"),
        format=source.get("format", "hf"),
        options=ReadOptions(**source.get("options", {})),
    )
    return open_source(ref), int(source["row"])
