"""The `dicom` reader: a folder of DICOM files (recursive), one point per instance or per series.

The picture follows the display pipeline of PS3.3 C.11: modality LUT (rescale slope and
intercept: Hounsfield units for CT), then a VOI window (the file's, a named CT preset, or the
frame's percentiles), MONOCHROME1 inverted; a multi-frame file gives its middle frame.

Every file of the folder is a row but a DICOMDIR (an index of the folder): one that is no DICOM
image fails with its reason, so indexed + failed = files looked at. Files without the File Meta
header (older exports) are read when they hold an image; a deflated dataset is inflated to at
most the bytes a plain file may have (pydicom would inflate all of it).

De-identification is on by default (pipeline/sources/deid.py): payloads come from an
allow-list of tags, identities and keys are keyed hashes, kept text is cleaned as DICOM PS3.15's
Basic Profile asks, failure reasons and errors name a file by its key, never its path.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)
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
    check_key,
    inside,
    key_census,
    read_file,
    renamed,
    unreadable,
)
from pipeline.sources.deid import Deidentifier, as_list, quiet_pydicom, scrub

log = logging.getLogger(__name__)

T = TypeVar("T")
DETECT_SAMPLE = 64  # files `detect` looks at before giving up on a folder
CODECS_HINT = "install the dicom-codecs extra: pip install 'medindex[dicom-codecs]'"

# payload field -> tag, for free text (cleaned when de-identifying).
TEXT_TAGS = {
    "series_description": "SeriesDescription",
    "manufacturer": "Manufacturer",
}
# payload field -> (tag, its defined terms; None: any code), for coded values (VR CS).
CODE_TAGS = {
    "modality": ("Modality", None),
    "body_part_examined": ("BodyPartExamined", None),
    "patient_sex": ("PatientSex", frozenset({"M", "F", "O"})),
}
# payload field -> (tag, type), for numbers.
NUMBER_TAGS = {
    "rows": ("Rows", int),
    "columns": ("Columns", int),
    "slice_thickness": ("SliceThickness", float),
    "instance_number": ("InstanceNumber", int),  # its place in its series
    "slice_location": ("SliceLocation", float),  # mm along the slices' normal
}
# payload field -> tag of the identity it keeps (clear, or a keyed hash when de-identifying).
IDENTITY_TAGS = {
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
}
FIELDS = (
    Field("modality", "keyword"),
    Field("body_part_examined", "keyword"),
    Field("series_description", "keyword"),
    Field("manufacturer", "keyword"),
    Field("patient_sex", "keyword"),
    Field("study_date", "datetime"),
    Field("patient_age", "float"),
    Field("rows", "integer"),
    Field("columns", "integer"),
    Field("pixel_spacing", "float"),
    Field("slice_thickness", "float"),
    Field("instance_number", "integer"),
    Field("slice_location", "float"),
    *(Field(name, "keyword") for name in IDENTITY_TAGS),
)
# A dataset without the File Meta header starts with its group 0008 (SOP class, modality...).
LEGACY_STARTS = (b"\x08\x00", b"\x00\x08")  # little endian, big endian
# Its transfer syntax, by how pydicom found it encoded: (implicit VR, little endian).
NATIVE_SYNTAXES = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class Instance:
    """One file as listed: what its row needs without reading the file again."""

    path: str  # relative to the dataset folder, POSIX
    payload: dict
    series: str  # SeriesInstanceUID (or the folder): in memory only, never written
    order: tuple  # its place in its series
    refusal: str | None = None  # why the file is no DICOM image (then its series is itself)

    @classmethod
    def refused(cls, path: str, reason: str) -> Instance:
        return cls(path, {}, path, (True, 0, 0.0, path), scrub(reason))


def sniff(data: bytes) -> bool:
    """Whether bytes are a DICOM file (Part 10: 128 bytes of preamble, then `DICM`), or a
    dataset without that header (older exports: it starts with its group 0008)."""
    return data[128:132] == b"DICM" or data[:2] in LEGACY_STARTS


def query_picture(data: bytes, options: ReadOptions) -> Image.Image:
    """An uploaded DICOM file's picture, made as ingest makes it."""
    if not sniff(data):
        raise ImageError("not a DICOM file (no DICM marker after the 128-byte preamble)")
    settings = get_settings()
    return make_picture(data, options, settings.query_max_image_pixels, settings.max_image_bytes)


class DicomSource(Source):
    """A folder of DICOM files; `options.dicom_unit`: a row per instance or per series."""

    format = "dicom"

    def __init__(self, ref: SourceRef) -> None:
        super().__init__(ref)
        self.root = Path(ref.dataset)
        self.deid = _deidentifier(ref.options)
        settings = get_settings()
        self.max_pixels = settings.max_image_pixels
        self.max_bytes = settings.max_image_bytes  # a header is read from files of this size
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
            if instance.refusal:
                raise ImageError(instance.refusal)
            data = self._bytes(instance.path, key, max_bytes)
            image, frame = make_picture_and_frame(
                data, self.ref.options, self.max_pixels, max_bytes
            )
        except ImageError as exc:
            return SourceRow(row, key, payload, None, refusal=str(exc))
        sha = hashlib.sha256(data).hexdigest()
        volume = self.deid.identity("series", instance.series)
        return SourceRow(row, key, payload, image, file_sha256=sha, pixels=frame, volume=volume)

    def levels(self, row: int, key: str | None, max_image_bytes: int) -> window.Levels:
        instance = self.instances[row]
        found = self.keys.key(self._key_of(instance), row)
        check_key(found, key, row)
        if instance.refusal:
            raise ImageError(instance.refusal)
        data = self._bytes(instance.path, found, max_image_bytes)
        return make_levels(data, self.ref.options, self.max_pixels, max_image_bytes, self.deid)

    def _bytes(self, relative: str, key: str, max_bytes: int) -> bytes:
        """Errors name the file by its key: paths often hold patients' names and UIDs."""
        return read_file(inside(self.root, relative, key), max_bytes, key)

    def _key_of(self, instance: Instance) -> str:
        """A file's path (paths often hold names and UIDs: hashed when de-identifying); in
        series mode the series' identity, which stays when instances come and go."""
        if self.ref.options.dicom_unit == "series":
            return self.deid.identity("series", instance.series)
        return self.deid.identity("path", instance.path)

    def _list(self) -> list[Instance]:
        """Every file's header, read once: a row for each but a DICOMDIR."""
        files = self._files()
        instances = [i for path in files if (i := self._instance(path)) is not None]
        refused = sum(i.refusal is not None for i in instances)
        if refused == len(instances):
            raise SourceError(f"{self.root}: no readable DICOM file ({len(files)} files looked at)")
        indexes = len(files) - len(instances)
        log.log(
            logging.WARNING if refused or indexes else logging.INFO,
            "dicom: %d files looked at: %d rows (%d no DICOM image: failed with the reason), "
            "%d DICOMDIR set aside (an index of the folder)",
            len(files), len(instances), refused, indexes,
        )  # fmt: skip
        return instances

    def _files(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.rglob("*") if p.is_file())
        except OSError as exc:  # a folder that cannot be listed: its name may hold a patient's
            raise renamed(exc, self._name(exc.filename)) from None

    def _instance(self, path: Path) -> Instance | None:
        """A file's row, from its header; None for a DICOMDIR (an index, not an image)."""
        relative = path.relative_to(self.root).as_posix()
        name = self._name(path)
        try:
            with _reading(), _opened(inside(self.root, relative, name), name, self.max_bytes) as f:
                ds = _dataset(f, self.max_bytes, stop_before_pixels=True)
                if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
                    return None
                series = str(ds.get("SeriesInstanceUID") or Path(relative).parent)
                return Instance(relative, payload_of(ds, self.deid), series, _order(ds, relative))
        except ImageError as exc:
            return Instance.refused(relative, str(exc))

    def _name(self, path: object) -> str:
        """What errors call a file or folder of the dataset: its key, never its path."""
        try:
            relative = Path(str(path)).relative_to(self.root).as_posix()
        except ValueError:
            relative = "."
        return self.deid.identity("path", relative)


def payload_of(ds: Dataset, deid: Deidentifier) -> dict:
    """The payload fields a file's tags give (absent tags stay absent; a coded value that
    de-identification cannot keep whole is left out)."""
    clean = deid.cleaner(ds)
    payload: dict = {}
    for name, (tag, terms) in CODE_TAGS.items():
        if (value := _text(ds, tag)) and (code := clean.code(value, terms)) is not None:
            payload[name] = code
    for name, tag in TEXT_TAGS.items():
        if value := _text(ds, tag):
            payload[name] = clean.text(value)
    for name, (tag, kind) in NUMBER_TAGS.items():
        if (value := _number(ds.get(tag), kind)) is not None:
            payload[name] = value
    if spacing := _pixel_spacing(ds):
        payload["pixel_spacing"] = spacing
    if (date := _iso_date(ds.get("StudyDate"))) is not None:
        payload["study_date"] = date
    if (age := age_in_years(ds.get("PatientAge"))) is not None:
        payload["patient_age"] = age
    for name, tag in IDENTITY_TAGS.items():
        if value := _text(ds, tag):
            payload[name] = deid.identity(name, value)
    return payload


def age_in_years(value: object) -> float | None:
    """PatientAge (AS: `045Y`, `006M`, `010W`, `003D`) in years; None when absent or odd."""
    match = _AGE.match(str(value or "").strip().upper())
    if not match:
        return None
    return round(int(match[1]) * _DAYS_PER[match[2]] / _DAYS_PER["Y"], 3)


def make_picture(data: bytes, options: ReadOptions, max_pixels: int, max_bytes: int) -> Image.Image:
    """One DICOM file's picture, 8-bit "L" (or "RGB" for colour); ImageError with a reason
    that quotes no identifying value. `max_bytes`: what its dataset may inflate to."""
    return make_picture_and_frame(data, options, max_pixels, max_bytes)[0]


def make_picture_and_frame(
    data: bytes, options: ReadOptions, max_pixels: int, max_bytes: int
) -> tuple[Image.Image, np.ndarray]:
    """`make_picture`, with the frame's stored values it was made from (an audit's pixel
    fingerprint: the same after a re-export with a new header)."""

    def make(ds: Dataset) -> tuple[Image.Image, np.ndarray]:
        frame = _frame(ds, max_pixels)
        return _picture(ds, frame, options.dicom_window), frame

    return _decoded(data, max_bytes, make)


def make_levels(
    data: bytes, options: ReadOptions, max_pixels: int, max_bytes: int, deid: Deidentifier
) -> window.Levels:
    """The same frame before its window (`make_picture` is `render` of it through
    `embedded`), with the file's own windows and pixel spacing; refused for colour."""
    return _decoded(data, max_bytes, lambda ds: _levels(ds, options.dicom_window, max_pixels, deid))


def _decoded(data: bytes, max_bytes: int, make: Callable[[Dataset], T]) -> T:
    """`make` of the file's dataset; what goes wrong is an ImageError quoting no identifying
    value."""
    with _reading():
        ds = _dataset(io.BytesIO(data), max_bytes)
    with quiet_pydicom():
        try:
            return make(ds)
        except ImageError as exc:
            raise ImageError(scrub(str(exc), ds)) from exc
        except Exception as exc:  # decoders raise many kinds on corrupt data
            reason = f"cannot decode the pixel data: {first_line(exc)}"
            raise ImageError(scrub(reason, ds)) from exc


def _picture(ds: Dataset, frame: np.ndarray, preset: str) -> Image.Image:
    if frame.ndim == 3:  # colour, already converted to RGB by pydicom
        bits = int(ds.get("BitsStored") or 8)
        return Image.fromarray(window.scale_bits(frame, bits), "RGB")
    grey = window.to_8bit(ds, apply_modality_lut(frame, ds), preset)
    return Image.fromarray(255 - grey if _inverted(ds) else grey, "L")


def _levels(ds: Dataset, preset: str, max_pixels: int, deid: Deidentifier) -> window.Levels:
    frame = _frame(ds, max_pixels)
    if frame.ndim == 3:
        raise ImageError("a colour picture: it has no grey levels to window")
    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    spacing = _pixel_spacing(ds)
    return window.Levels(
        values,
        embedded=window.choose(ds, values, preset),
        own=window.own_windows(ds, deid.cleaner(ds).text),
        hounsfield=ds.get("Modality") == "CT",
        inverted=_inverted(ds),
        spacing_mm=(spacing[0], spacing[1]) if len(spacing) == 2 and all(spacing) else None,
    )


def _frame(ds: Dataset, max_pixels: int) -> np.ndarray:
    """The middle frame's stored values (a multi-frame file's middle one, decoded alone)."""
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageError(_without_image(ds))
    _check_decoder(ds)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows * columns > max_pixels:
        raise ImageError(f"image is {columns}x{rows} pixels (limit {max_pixels} pixels)")
    frames = int(ds.get("NumberOfFrames") or 1)
    return pixel_array(ds, index=frames // 2)


def _pixel_spacing(ds: Dataset) -> list[float]:
    """PixelSpacing: mm between rows, then between columns (PS3.3 10.7.1.3)."""
    return [v for v in map(_number, as_list(ds.get("PixelSpacing"))) if v is not None]


def _inverted(ds: Dataset) -> bool:
    return ds.get("PhotometricInterpretation") == "MONOCHROME1"  # low values are white


def _without_image(ds: Dataset) -> str:
    kind = ds.get("SOPClassUID")
    return f"no pixel data (a {kind.name if kind else 'file'} without an image)"


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


@contextmanager
def _opened(path: Path, name: str, max_bytes: int) -> Iterator[BinaryIO]:
    """A file opened for its header, refused over `max_bytes` (what a row may read): a deflated
    or header-less file is read whole, and none is parsed beyond what its picture could be."""
    try:
        with path.open("rb") as file:
            if (size := os.fstat(file.fileno()).st_size) > max_bytes:
                raise ImageError(f"image file is {size} bytes (limit {max_bytes})")
            yield file
    except OSError as exc:
        raise unreadable(exc, name) from None


@contextmanager
def _reading() -> Iterator[None]:
    """What pydicom raises on a file that is not (wholly) DICOM becomes the row's reason,
    quoting no UID; pydicom's own warnings and log lines (which quote values) stay quiet."""
    with quiet_pydicom():
        try:
            yield
        except (ImageError, OSError):
            raise
        except InvalidDicomError as exc:
            raise ImageError("not a DICOM file") from exc
        except Exception as exc:  # a truncated or corrupt header, in any form
            raise ImageError(scrub(f"unreadable DICOM file: {first_line(exc)}")) from exc


def _dataset(file: BinaryIO, max_bytes: int, **how: bool) -> Dataset:
    """pydicom's `dcmread` (`how`: its options) from the start of `file`, bounded where it is
    not: a deflated dataset is inflated here, to at most `max_bytes` (pydicom would inflate
    all of it: 510 KiB inflate to 512 MiB, parsed for minutes), and a file without the File
    Meta header is read by force only when it starts like a dataset and holds an image."""
    if read_preamble(file, force=True) is None:  # no DICM marker: rewound to the start
        return _legacy(file, **how)
    if (meta := _deflated_meta(file)) is not None:
        return dcmread(_inflated(file, meta, max_bytes), **how)
    file.seek(0)
    return dcmread(file, **how)


def _deflated_meta(file: BinaryIO) -> Dataset | None:
    """The File Meta header after the DICM marker, when it names the deflated transfer syntax;
    None for any other (pydicom reads those whole, odd headers included)."""
    try:
        meta = read_dataset(file, is_implicit_VR=False, is_little_endian=True, stop_when=_past_meta)
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # a header pydicom's own reading may still make sense of
        return None
    return meta if deflated else None


def _past_meta(tag: int, _vr: str | None, _length: int) -> bool:
    return tag >> 16 != 0x0002


def _inflated(file: BinaryIO, meta: Dataset, max_bytes: int) -> DicomBytesIO:
    """The rest of a deflated file inflated to at most `max_bytes` (what a plain file may
    hold), behind its File Meta header relabelled Explicit VR Little Endian (what it was
    before deflating)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(file.read(max_bytes), max_bytes + 1)
    except zlib.error as exc:
        raise ImageError(f"corrupt deflated dataset ({exc})") from None
    if len(body) > max_bytes:
        raise ImageError(f"deflated dataset inflates to over {max_bytes} bytes (the limit)")
    relabelled = FileMetaDataset(meta)
    relabelled.TransferSyntaxUID = ExplicitVRLittleEndian
    relabelled.pop(0x00020000, None)  # its group length, now wrong (pydicom does not need it)
    out = DicomBytesIO()
    out.write(bytes(128) + b"DICM")
    write_file_meta_info(out, relabelled, enforce_standard=False)
    out.write(body)
    out.seek(0)
    return out


def _legacy(file: BinaryIO, **how: bool) -> Dataset:
    """A dataset without the File Meta header, in the transfer syntax its encoding shows."""
    if file.read(2) not in LEGACY_STARTS:
        raise ImageError("not a DICOM file (no File Meta header, and no dataset at its start)")
    file.seek(0)
    ds = dcmread(file, force=True, **how)
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageError(f"{_without_image(ds)}; no File Meta header")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = NATIVE_SYNTAXES[ds.original_encoding[:2]]
    return ds


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


def _text(ds: Dataset, tag: str) -> str:
    return str(ds.get(tag) or "").strip()


def _has_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return sniff(file.read(132))
    except OSError:
        return False
