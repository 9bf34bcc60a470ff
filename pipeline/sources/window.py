"""Grey values to 8 bits: a VOI window (the file's, a named CT preset, or the frame's own
percentiles), applied by pydicom's windowing (PS3.3 C.11.2: LINEAR, LINEAR_EXACT, SIGMOID)."""

from __future__ import annotations

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


def _first(value: object) -> float:
    """Window tags may hold several windows (VM 1-n): the first is the default view."""
    return float(as_list(value)[0])
