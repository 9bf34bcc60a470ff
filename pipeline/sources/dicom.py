"""The `dicom` reader: a folder of DICOM files (recursive), one point per instance or per series.

The picture follows the display pipeline of PS3.3 C.11: modality LUT (rescale slope and
intercept: Hounsfield units for CT), then a VOI window (the file's, a named CT preset, or the
frame's percentiles), MONOCHROME1 inverted; a multi-frame file gives its middle frame.

De-identification is on by default (pipeline/sources/deid.py): payloads come from an
allow-list of tags, identities and keys are keyed hashes, free text and failure reasons are
scrubbed of the file's identifying values.
"""

from __future__ import annotations

import io
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import MediaStorageDirectoryStorage
from pydicom.valuerep import DA

from pipeline.errors import first_line
from pipeline.images import ImageError
from pipeline.schemas import ReadOptions, SourceRef
from pipeline.settings import get_settings
from pipeline.sources import window
from pipeline.sources.base import (
    Field,
    Schema,
    Source,
    SourceError,
    SourceRow,
    inside,
    key_census,
    read_file,
)
from pipeline.sources.deid import (
    IDENTIFYING_TAGS,
    REMOVED,
    Deidentifier,
    as_list,
    quiet_pydicom,
    scrub,
)

log = logging.getLogger(__name__)

DETECT_SAMPLE = 64  # files `detect` looks at before giving up on a folder
CODECS_HINT = "install the dicom-codecs extra: pip install 'medindex[dicom-codecs]'"

# payload field -> tag, for plain text values.
TEXT_TAGS = {
    "modality": "Modality",
    "body_part_examined": "BodyPartExamined",
    "series_description": "SeriesDescription",
    "manufacturer": "Manufacturer",
    "patient_sex": "PatientSex",
}
# payload field -> (tag, type), for numbers.
NUMBER_TAGS = {
    "rows": ("Rows", int),
    "columns": ("Columns", int),
    "slice_thickness": ("SliceThickness", float),
}
# payload field -> tag of the identity it keeps (clear, or a keyed hash when de-identifying).
IDENTITY_TAGS = {
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
}
FIELDS = (
    *(Field(name, "keyword") for name in TEXT_TAGS),
    Field("study_date", "datetime"),
    Field("patient_age", "float"),
    Field("rows", "integer"),
    Field("columns", "integer"),
    Field("pixel_spacing", "float"),
    Field("slice_thickness", "float"),
    *(Field(name, "keyword") for name in IDENTITY_TAGS),
)
# Read when the source opens (headers only): the payload, the order within a series, and the
# identifying values de-identification scrubs from free text.
HEADER_TAGS = sorted(
    {
        *TEXT_TAGS.values(),
        *(tag for tag, _ in NUMBER_TAGS.values()),
        *IDENTITY_TAGS.values(),
        *IDENTIFYING_TAGS,
        "StudyDate",
        "PatientAge",
        "PixelSpacing",
        "InstanceNumber",
        "ImagePositionPatient",
        "ImageOrientationPatient",
    }
)
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class Instance:
    """One DICOM file as listed: what its row needs without reading the file again."""

    path: str  # relative to the dataset folder, POSIX
    payload: dict
    series: str  # SeriesInstanceUID (or the folder): in memory only, never written
    order: tuple  # its place in its series


def sniff(data: bytes) -> bool:
    """Whether bytes are a DICOM file (Part 10: 128 bytes of preamble, then `DICM`)."""
    return data[128:132] == b"DICM"


def query_picture(data: bytes, options: ReadOptions) -> Image.Image:
    """An uploaded DICOM file's picture, made as ingest makes it."""
    if not sniff(data):
        raise ImageError("not a DICOM file (no DICM marker after the 128-byte preamble)")
    return make_picture(data, options, get_settings().query_max_image_pixels)


class DicomSource(Source):
    """A folder of DICOM files; `options.dicom_unit`: a row per instance or per series."""

    format = "dicom"

    def __init__(self, ref: SourceRef) -> None:
        super().__init__(ref)
        self.root = Path(ref.dataset)
        self.deid = _deidentifier(ref.options)
        self.max_pixels = get_settings().max_image_pixels
        instances = self._list()
        if ref.options.dicom_unit == "series":
            instances = _middle_of_each_series(instances)
        self.instances = instances
        self.keys = key_census([self._key_of(i) for i in instances])

    @classmethod
    def detect(cls, path: Path) -> bool:
        if not path.is_dir():
            return False
        files = islice((p for p in path.rglob("*") if p.is_file()), DETECT_SAMPLE)
        return any(p.suffix.lower() == ".dcm" or _has_preamble(p) for p in files)

    # An uploaded query file (the search API's), read by the functions above.
    sniff = staticmethod(sniff)
    query_picture = staticmethod(query_picture)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def schema(self) -> Schema:
        return Schema(fields=FIELDS, key_field=None, label_field="modality")

    def read(self, rows: list[int], max_image_bytes: int) -> list[SourceRow]:
        return [self._read_row(row, max_image_bytes) for row in rows]

    def _read_row(self, row: int, max_bytes: int) -> SourceRow:
        instance = self.instances[row]
        key = self.keys.key(self._key_of(instance), row)
        payload = {**instance.payload, "source": self.reference(row, key)}
        try:
            image = self._picture(instance.path, max_bytes)
        except ImageError as exc:
            return SourceRow(row, key, payload, None, refusal=str(exc))
        return SourceRow(row, key, payload, image)

    def _picture(self, relative: str, max_bytes: int) -> Image.Image:
        try:
            data = read_file(inside(self.root, relative), max_bytes)
        except ImageError as exc:  # its message names the file: paths may hold names, UIDs
            raise ImageError(self.deid.scrub(_unnamed(str(exc), self.root, relative))) from exc
        return make_picture(data, self.ref.options, self.max_pixels)

    def _key_of(self, instance: Instance) -> str:
        """A file's path (paths often hold names and UIDs: hashed when de-identifying); in
        series mode the series' identity, which stays when instances come and go."""
        if self.ref.options.dicom_unit == "series":
            return self.deid.identity("series", instance.series)
        return self.deid.identity("path", instance.path)

    def _list(self) -> list[Instance]:
        """Every DICOM file's header, read once; other files are skipped and counted."""
        files = sorted(p for p in self.root.rglob("*") if p.is_file())
        instances = [i for p in files if (i := self._instance(p)) is not None]
        if not instances:
            raise SourceError(f"{self.root}: no readable DICOM file ({len(files)} files looked at)")
        if skipped := len(files) - len(instances):
            log.info("dicom: %d of %d files skipped (not DICOM images)", skipped, len(files))
        return instances

    def _instance(self, path: Path) -> Instance | None:
        with quiet_pydicom():  # values are converted as they are used: all of it is quiet
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            except Exception:  # any file that does not parse as DICOM is skipped
                return None
            if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
                return None  # a DICOMDIR: an index of the folder, not an image
            relative = path.relative_to(self.root).as_posix()
            series = str(ds.get("SeriesInstanceUID") or Path(relative).parent)
            return Instance(relative, payload_of(ds, self.deid), series, _order(ds, relative))


def payload_of(ds: Dataset, deid: Deidentifier) -> dict:
    """The payload fields a file's tags give (absent tags stay absent)."""
    payload: dict = {}
    for name, tag in TEXT_TAGS.items():
        if value := str(ds.get(tag) or "").strip():
            payload[name] = deid.scrub(value, ds)
    for name, (tag, kind) in NUMBER_TAGS.items():
        if (value := _number(ds.get(tag), kind)) is not None:
            payload[name] = value
    if spacing := [v for v in map(_number, as_list(ds.get("PixelSpacing"))) if v is not None]:
        payload["pixel_spacing"] = spacing
    if (date := _iso_date(ds.get("StudyDate"))) is not None:
        payload["study_date"] = date
    if (age := age_in_years(ds.get("PatientAge"))) is not None:
        payload["patient_age"] = age
    for name, tag in IDENTITY_TAGS.items():
        if value := str(ds.get(tag) or "").strip():
            payload[name] = deid.identity(name, value)
    return payload


def age_in_years(value: object) -> float | None:
    """PatientAge (AS: `045Y`, `006M`, `010W`, `003D`) in years; None when absent or odd."""
    match = _AGE.match(str(value or "").strip().upper())
    if not match:
        return None
    return round(int(match[1]) * _DAYS_PER[match[2]] / _DAYS_PER["Y"], 3)


def make_picture(data: bytes, options: ReadOptions, max_pixels: int) -> Image.Image:
    """One DICOM file's picture, 8-bit "L" (or "RGB" for colour); ImageError with a reason
    that quotes no identifying value."""
    with quiet_pydicom():
        ds = _parse(data)
        try:
            return _picture(ds, options.dicom_window, max_pixels)
        except ImageError as exc:
            raise ImageError(scrub(str(exc), ds)) from exc
        except Exception as exc:  # decoders raise many kinds on corrupt data
            reason = f"cannot decode the pixel data: {first_line(exc)}"
            raise ImageError(scrub(reason, ds)) from exc


def _picture(ds: Dataset, preset: str, max_pixels: int) -> Image.Image:
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = ds.get("SOPClassUID")
        raise ImageError(f"no pixel data (a {kind.name if kind else 'file'} without an image)")
    _check_decoder(ds)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows * columns > max_pixels:
        raise ImageError(f"image is {columns}x{rows} pixels (limit {max_pixels} pixels)")
    frames = int(ds.get("NumberOfFrames") or 1)
    frame = pixel_array(ds, index=frames // 2)  # decodes that frame only
    if frame.ndim == 3:  # colour, already converted to RGB by pydicom
        bits = int(ds.get("BitsStored") or 8)
        return Image.fromarray(window.scale_bits(frame, bits), "RGB")
    grey = window.to_8bit(ds, apply_modality_lut(frame, ds), preset)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # low values are white
        grey = 255 - grey
    return Image.fromarray(grey, "L")


def _check_decoder(ds: Dataset) -> None:
    """A compressed file with no decoder fails alone, naming its transfer syntax."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ImageError("no transfer syntax in the file meta information")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ImageError(f"transfer syntax {syntax.name}: pydicom has no decoder for it") from exc
    if not decoder.is_available:
        raise ImageError(f"transfer syntax {syntax.name}: no decoder installed ({CODECS_HINT})")


def _parse(data: bytes) -> Dataset:
    try:
        return dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise ImageError("not a DICOM file") from exc
    except Exception as exc:  # a truncated or corrupt header, in any form
        raise ImageError(scrub(f"unreadable DICOM file: {first_line(exc)}")) from exc


def _deidentifier(options: ReadOptions) -> Deidentifier:
    if not options.deidentify:
        return Deidentifier(None)
    key = get_settings().deid_key
    if key is None or not key.get_secret_value():
        raise SourceError(
            "de-identifying DICOM needs a secret key: set MEDINDEX_DEID_KEY "
            "(or turn de-identification off: MEDINDEX_DEIDENTIFY=false)"
        )
    return Deidentifier(key.get_secret_value().encode())


def _middle_of_each_series(instances: list[Instance]) -> list[Instance]:
    """One instance per series: the middle one in the series' own order; rows by path."""
    series: dict[str, list[Instance]] = defaultdict(list)
    for instance in instances:
        series[instance.series].append(instance)
    middles = [sorted(group, key=lambda i: i.order)[len(group) // 2] for group in series.values()]
    return sorted(middles, key=lambda i: i.path)


def _order(ds: Dataset, relative: str) -> tuple:
    """InstanceNumber, then the position along the slice normal, then the path."""
    number = _number(ds.get("InstanceNumber"), int)
    return (number is None, number or 0, _position_along_normal(ds), relative)


def _position_along_normal(ds: Dataset) -> float:
    position = [_number(v) for v in as_list(ds.get("ImagePositionPatient"))]
    orientation = [_number(v) for v in as_list(ds.get("ImageOrientationPatient"))]
    if len(position) != 3 or len(orientation) != 6 or None in position + orientation:
        return 0.0
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot(normal, position))


def _number(value: object, kind: type = float) -> float | int | None:
    try:
        return kind(float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _iso_date(value: object) -> str | None:
    try:
        return DA(str(value)).isoformat() if value else None
    except ValueError:
        return None


def _unnamed(text: str, root: Path, relative: str) -> str:
    """`text` without the file's path, however it was spelled."""
    for spelling in (str((root / relative).resolve()), str(root / relative), relative):
        text = text.replace(spelling, REMOVED)
    return text


def _has_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return sniff(file.read(132))
    except OSError:
        return False
