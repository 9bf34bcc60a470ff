"""Grey values to 8 bits: a VOI window (the file's, a named CT preset, or the frame's own
percentiles), applied by pydicom's windowing (PS3.3 C.11.2: LINEAR, LINEAR_EXACT, SIGMOID).

`Levels` is a picture before its window, as a reader gives it again for a viewer: the same
values, slice and crop that were embedded, to be shown through any other window (`render`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_voi, apply_windowing

from pipeline.sources.deid import as_list

# CT windows in Hounsfield units, (center, width): the usual radiology presets.
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
# Without a window in the file: these percentiles of the frame, so one hot pixel (metal, a
# burnt-in marker) cannot squeeze the rest of the picture into a few grey levels.
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class NamedWindow:
    name: str  # what a viewer calls it: the file's own explanation, or a preset's name
    window: Window


@dataclass(frozen=True)
class Levels:
    """A picture's grey values before its window, oriented and cropped as it was embedded:
    modality-LUT values for DICOM (Hounsfield units for CT), voxel values for NIfTI."""

    values: np.ndarray  # 2-D, float: rows top to bottom, columns left to right
    embedded: Window | None  # the window of the embedded picture (None: a VOI LUT table)
    own: tuple[NamedWindow, ...]  # the windows the data itself names (DICOM's WindowCenter)
    hounsfield: bool  # values in Hounsfield units (CT): the named presets apply
    inverted: bool = False  # MONOCHROME1: low values are white
    spacing_mm: tuple[float, float] | None = None  # between rows, between columns

    def windows(self) -> tuple[NamedWindow, ...]:
        """What a viewer offers: the data's own windows, then the CT presets where they apply."""
        presets = [NamedWindow(name.replace("_", " "), Window(*cw)) for name, cw in PRESETS.items()]
        return (*self.own, *(presets if self.hounsfield else ()))


def render(levels: Levels, window: Window) -> np.ndarray:
    """The picture through `window`, 8 bits, as its reader makes the embedded one."""
    grey = apply(levels.values, window)
    return 255 - grey if levels.inverted else grey


def choose(ds: Dataset, values: np.ndarray, preset: str) -> Window | None:
    """The window for a frame of modality-LUT values: a named preset (CT only), else the
    file's first window, else None when the file has a VOI LUT table, else percentiles."""
    if preset in PRESETS and ds.get("Modality") == "CT":
        return Window(*PRESETS[preset])
    if "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
        return Window(_first(ds.WindowCenter), _first(ds.WindowWidth), function)
    if ds.get("VOILUTSequence"):
        return None
    low, high = np.percentile(values, PERCENTILES)
    return Window((low + high) / 2, max(high - low, 1e-6), "LINEAR_EXACT")


def to_8bit(ds: Dataset, values: np.ndarray, preset: str) -> np.ndarray:
    """A frame of modality-LUT values (Hounsfield units for CT) as uint8, 0 black."""
    window = choose(ds, values, preset)
    if window is None:  # the file's VOI LUT table: its output spans the LUT's bit depth
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return _byte(apply_voi(values, ds) * (255.0 / (2**bits - 1)))
    return apply(values, window)


def apply(values: np.ndarray, window: Window) -> np.ndarray:
    """pydicom's windowing, onto 0..255: pydicom maps a window onto the range of the stored
    bits, so the window is described as one of 8-bit stored values."""
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored = 8
    voi.PixelRepresentation = 0
    voi.WindowCenter = float(window.center)
    voi.WindowWidth = float(window.width)
    voi.VOILUTFunction = window.function
    return _byte(apply_windowing(np.asarray(values, dtype=np.float64), voi))


def scale_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Stored values of `bits` bits (colour pictures: no window applies) onto 0..255."""
    return _byte(values * (255.0 / (2**bits - 1)))


def _byte(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def own_windows(ds: Dataset, clean: Callable[[str], str]) -> tuple[NamedWindow, ...]:
    """Every window the file names (WindowCenter and WindowWidth hold one or several, VM 1-n),
    with its explanation cleaned by `clean` (free text), else its number."""
    centers, widths = as_list(ds.get("WindowCenter")), as_list(ds.get("WindowWidth"))
    explained = as_list(ds.get("WindowCenterWidthExplanation"))
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    found = []
    for i, (center, width) in enumerate(zip(centers, widths, strict=False)):
        text = clean(str(explained[i])).strip() if i < len(explained) else ""
        name = f"file: {text}" if text else f"file window {i + 1}"
        found.append(NamedWindow(name, Window(float(center), float(width), function)))
    return tuple(found)


def _first(value: object) -> float:
    """Window tags may hold several windows (VM 1-n): the first is the default view."""
    return float(as_list(value)[0])
