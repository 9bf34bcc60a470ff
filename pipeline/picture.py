"""The picture of a row: what the embed step feeds the model, made again on demand.

The embed step, `medindex image` and the search page's thumbnails all go through `to_picture`,
so a thumbnail is exactly the picture that was embedded (the same slice, window and crop).
"""

from __future__ import annotations

from PIL import Image

from pipeline.images import ImageError, decode_rgb, to_rgb
from pipeline.schemas import ReadOptions, SourceRef
from pipeline.settings import Settings
from pipeline.sources import SourceRow, open_source


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
    ref = SourceRef(
        dataset=source["dataset"],
        split=source.get("split", "train"),
        format=source.get("format", "hf"),
        options=ReadOptions(**source.get("options", {})),
    )
    (record,) = open_source(ref).read([int(source["row"])], settings.max_image_bytes)
    if "key" in source and record.key != source["key"]:
        raise ImageError(f"row {source['row']} of {ref.dataset} is no longer {source['key']!r}")
    return to_picture(record, settings)
