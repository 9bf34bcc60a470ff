"""The page's viewer: a DICOM or NIfTI point's picture through any window (`…/picture?window=
CENTER/WIDTH`), rendered from the original data (its reader reads the row again:
`pipeline.picture.levels_of`), and what the viewer offers for it (`…/view`): the data's own
windows, the CT presets where its values are Hounsfield units, the window it was embedded
with, the range of its values and the physical spacing of its pixels. The embedded picture
itself stays `…/picture` without a window."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter, HTTPException
from PIL import Image

from pipeline.images import ImageError
from pipeline.picture import levels_of
from pipeline.settings import get_settings
from pipeline.sources import SourceError
from pipeline.sources.window import Levels, Window, render
from search_api.deps import made_of, recorded_source
from search_api.facets import version_of

router = APIRouter()


def parse_window(text: str) -> Window:
    """`CENTER/WIDTH` (e.g. `-600/1500`), a width above zero."""
    try:
        center, width = (float(part) for part in text.split("/"))
    except ValueError:
        raise HTTPException(400, f"window {text!r}: give CENTER/WIDTH, e.g. 40/400") from None
    if not width > 0:
        raise HTTPException(400, f"window {text!r}: its width must be above zero")
    return Window(center, width)


@router.get("/collections/{collection}/points/{point}/view")
def view(collection: str, point: str) -> dict:
    version = version_of(collection)
    try:
        levels = _levels(version, made_of(version), point)
    except SourceError as exc:  # 8-bit formats: the embedded picture is all there is
        nothing = {"windows": [], "embedded": None, "range": None, "spacing_mm": None}
        return nothing | {"note": str(exc)}
    values = levels.values
    return {
        "windows": [{"name": w.name, **_numbers(w.window)} for w in levels.windows()],
        "embedded": _numbers(levels.embedded) if levels.embedded else None,
        "range": [float(values.min()), float(values.max())],
        "spacing_mm": list(levels.spacing_mm) if levels.spacing_mm else None,
    }


def windowed(version: str, made: float | None, point: str, window: Window) -> Image.Image:
    try:
        levels = _levels(version, made, point)
    except SourceError as exc:
        raise HTTPException(400, f"point {point}: {exc}") from exc
    return Image.fromarray(render(levels, window), "L")


@lru_cache(maxsize=16)  # a viewer's drag asks for the same point's levels again and again
def _levels(version: str, made: float | None, point: str) -> Levels:
    try:
        return levels_of(recorded_source(version, point), get_settings())
    except ImageError as exc:
        raise HTTPException(404, f"picture of point {point}: {exc}") from exc


def _numbers(window: Window) -> dict:
    return {"center": window.center, "width": window.width}
