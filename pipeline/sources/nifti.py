"""The `nifti` reader: a folder of BraTS-style cases, one axial slice per case and modality.

Layout: `<case>/<case>_<modality>.nii.gz` (or `.nii`, `-` as separator, any depth) and the
case's tumour mask `<case>_seg.nii.gz` beside them. A file's case id is its folder's name when
the file name starts with it, else the name before its last `_` or `-`.

The picture of a row (Pixel Diagnose's choice): the axial slice with the largest tumour area in
the mask (mask = seg > 0; ties: the lowest slice), whole (`nifti_variant=slice`) or the tumour's
box in that slice plus `nifti_crop_margin` voxels (`crop`). Without a mask, the middle slice or
`nifti_unmasked_slices` evenly spaced ones; with an all-zero mask, the middle slice. The payload
says which (`slice_choice`, `mask`). 4-D volumes: the first volume (`volume_index`, `volumes`).
With `labels_csv` (absolute, or relative to the dataset folder), `tumour_class` comes from it
and is the schema's label field (see `_read_labels` for how its columns are found).

Orientation, whatever the file's affine: anterior up and the patient's right on the picture's
left (the radiological convention), from the voxel axes' closest world axes (RAS+); a file
without a usable affine is taken as RAS+. Intensities: windowed between the 0.5th and 99.5th
percentiles of the volume's nonzero voxels, sampled on up to 16 evenly spaced axial slices, so
one hot voxel cannot ruin it; then 8 bits, mode "L".

Work and memory: a file is read as bytes (at most `max_image_bytes`, like every reader); its
header is checked before any voxel is read: the volume read (a 4-D file's first) holds at most
`max_volume_voxels`, reaching its end inflates at most `max_volume_bytes`, and no slice held
at once (an axial one, one of the file's order) exceeds `MAX_PLANE_VOXELS` (a small gzip can
declare a huge volume). Voxels are
then read through nibabel's array proxy in slabs of the file's own order, in one forward pass
whatever the axial axis (a gzipped file cannot seek back); a volume is never in memory whole.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, ImageDataError
from nibabel.wrapstruct import WrapStructError
from PIL import Image

from pipeline.errors import first_line
from pipeline.images import ImageError
from pipeline.schemas import ReadOptions, SourceRef
from pipeline.settings import Settings, get_settings
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
)

SUFFIXES = (".nii.gz", ".nii")
MASK_NAMES = frozenset({"seg"})  # the modality name of a case's tumour mask (BraTS: `_seg`)
WINDOW_PERCENTILES = (0.5, 99.5)
WINDOW_SAMPLE_SLICES = 16
HOUNSFIELD_AIR = -500.0  # a low percentile at or below it: a CT volume in Hounsfield units
SLAB_VOXELS = 4 * 1024 * 1024  # voxels read at once (at least one slice of the file's order)
MAX_PLANE_VOXELS = 1024 * 1024  # a larger slice is a decompression bomb, not an MRI
DETECT_ENTRIES = 5000  # `detect` looks at this many folder entries before giving up
GZIP_MAGIC = b"\x1f\x8b"
HEADER_BYTES = 540  # a NIfTI-2 header; NIfTI-1's is 348
IMAGE_KINDS = (nib.Nifti1Image, nib.Nifti2Image)
UNIT_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}  # NIfTI's default: mm
# What a corrupt or truncated file raises while its header or voxels are read.
CORRUPT = (
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    ValueError,
    WrapStructError,
    HeaderDataError,
    ImageDataError,
    ImageFileError,
)
# Labels CSV: the class column, by normalised name, in order of preference.
CLASS_COLUMNS = (
    "tumour_class",
    "tumor_class",
    "class",
    "label",
    "diagnosis",
    "histology",
    "tumour_type",
    "tumor_type",
    "type",
    "grade",
)
_NAME = re.compile(r"^(?P<case>.+)[_-](?P<modality>[^_-]+)$")

FIELDS = (
    Field("case_id", "keyword"),
    Field("modality", "keyword"),
    Field("mask", "keyword"),  # present | empty (all zero) | absent (no seg file)
    Field("slice_choice", "keyword"),  # largest_tumour | middle | spaced
    Field("slice_index", "integer"),  # along the file's axial voxel axis
    Field("tumour_area_voxels", "integer"),
    Field("tumour_area_mm2", "float"),
    Field("volume_shape", "integer"),
    Field("voxel_size_mm", "float"),
    Field("pixel_spacing", "float"),  # mm between the picture's rows, then its columns
    Field("volume_index", "integer"),  # 4-D files only
    Field("volumes", "integer"),  # 4-D files only
)
LABEL_FIELD = "tumour_class"


@dataclass(frozen=True)
class _Entry:
    """One row, known from the file listing alone."""

    path: str  # relative to the dataset folder, POSIX
    case_id: str
    modality: str
    mask: str | None  # the case's mask file, relative
    part: int = 0  # without a mask: which of `parts` evenly spaced slices
    parts: int = 1

    @property
    def key(self) -> str:
        return (
            self.path if self.parts == 1 else f"{self.path}#spaced-{self.part + 1}-of-{self.parts}"
        )


@dataclass(frozen=True)
class Bounds:
    """What reading one volume may cost: its voxels, and the bytes inflated to reach its end."""

    voxels: int
    inflated_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Bounds:
        return cls(settings.max_volume_voxels, settings.max_volume_bytes)


@dataclass(frozen=True)
class _Geometry:
    """Where a volume's axial slices lie among its voxel axes, and how to show one."""

    shape: tuple[int, ...]  # as in the file, 4-D included
    axis: int  # the voxel axis that runs inferior-superior
    plane_axes: tuple[int, int]  # the other two, in file order
    flips: tuple[int, int, int]  # per voxel axis: +1 when it runs toward R, A or S
    world: tuple[int, int, int]  # per voxel axis: its closest world axis (0 x, 1 y, 2 z)
    voxel_size_mm: tuple[float, float, float]

    @property
    def depth(self) -> int:
        return self.shape[self.axis]

    @property
    def volumes(self) -> int:
        return int(np.prod(self.shape[3:], dtype=np.int64))

    @property
    def voxel_area_mm2(self) -> float:
        first, second = self.plane_axes
        return self.voxel_size_mm[first] * self.voxel_size_mm[second]

    @property
    def display_axes(self) -> tuple[int, int]:
        """The voxel axes of a shown slice's rows (anterior-posterior) and columns."""
        first, second = self.plane_axes
        return (first, second) if self.world[first] == 1 else (second, first)

    @property
    def display_spacing(self) -> tuple[float, float]:
        """mm between a shown slice's rows, then between its columns."""
        rows, cols = self.display_axes
        return self.voxel_size_mm[rows], self.voxel_size_mm[cols]

    def display(self, plane: np.ndarray) -> np.ndarray:
        """A slice as read (its voxel axes in file order) -> rows anterior to posterior,
        columns patient right to left."""
        rows, cols = self.display_axes
        shown = plane if rows == self.plane_axes[0] else plane.T
        if self.flips[rows] > 0:
            shown = shown[::-1, :]
        if self.flips[cols] > 0:
            shown = shown[:, ::-1]
        return shown


@dataclass(frozen=True)
class _Tumour:
    """What a case's mask says, measured once per `read` and shared by its modalities."""

    shape: tuple[int, int, int]
    axis: int
    slice_index: int | None  # None: the mask is all zero
    area_voxels: int
    box: tuple[slice, slice] | None  # the tumour's box in that slice, in file order


def sniff(data: bytes) -> bool:
    """Whether `data` is a NIfTI-1 or NIfTI-2 file, gzipped or not."""
    return _kind(_header_block(data)) is not None


def query_picture(data: bytes, options: ReadOptions) -> Image.Image:
    """An uploaded NIfTI file's picture: no mask comes with it, so the slice ingest makes of a
    case without one (the middle, or the central one of `options.nifti_unmasked_slices`
    spaced slices), windowed as at ingest."""
    parts = options.nifti_unmasked_slices
    with _reading("uploaded file"):
        image = _load(data)
        geometry = _geometry(image, Bounds.of(get_settings()))
        return _picture(image, geometry, _spaced(geometry.depth, (parts - 1) // 2, parts), None)


class NiftiSource(Source):
    """A folder of BraTS-style NIfTI cases: a row per case and modality (and spaced slice)."""

    format = "nifti"

    def __init__(self, ref: SourceRef) -> None:
        super().__init__(ref)
        self.root = Path(ref.dataset)
        if not self.root.is_dir():
            raise SourceError(f"{ref.dataset} is not a folder of NIfTI cases")
        self.entries = _list_entries(self.root, ref.options.nifti_unmasked_slices)
        if not self.entries:
            raise SourceError(f"{ref.dataset}: no NIfTI images (.nii, .nii.gz) besides masks")
        self.keys = key_census([entry.key for entry in self.entries])
        self.bounds = Bounds.of(get_settings())
        labels = ref.options.labels_csv
        self.labels = _read_labels(self._labels_path(labels), self.entries) if labels else None

    @classmethod
    def detect(cls, path: Path) -> bool:
        """A folder with a .nii or .nii.gz file, looking at a bounded number of entries."""
        if not path.is_dir():
            return False
        seen = 0
        for _, folders, files in os.walk(path):
            if any(_is_nifti(name) for name in files):
                return True
            seen += len(folders) + len(files)
            if seen > DETECT_ENTRIES:
                return False
        return False

    # An uploaded query file (the search API's), read by the functions above.
    sniff = staticmethod(sniff)
    query_picture = staticmethod(query_picture)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def schema(self) -> Schema:
        if self.labels is None:
            return Schema(FIELDS)
        return Schema((*FIELDS, Field(LABEL_FIELD, "keyword")), label_field=LABEL_FIELD)

    def read(self, rows: list[int], max_image_bytes: int) -> list[SourceRow]:
        """Each row's slice as an 8-bit picture; a file that cannot give one fails its rows
        alone. A case's mask is read once per call, whichever of its modalities ask."""
        tumours: dict[str, _Tumour | ImageError] = {}
        return [self._read_row(row, tumours, max_image_bytes) for row in rows]

    def _read_row(
        self, row: int, tumours: dict[str, _Tumour | ImageError], max_bytes: int
    ) -> SourceRow:
        entry = self.entries[row]
        key = self.keys.key(entry.key, row)
        payload: dict = {"case_id": entry.case_id, "modality": entry.modality}
        if self.labels and entry.case_id in self.labels:
            payload[LABEL_FIELD] = self.labels[entry.case_id]
        source = {"source": self.reference(row, key)}
        try:
            image, geometry, tumour = self._open(entry, tumours, max_bytes)
            with _reading(entry.path):
                z, box, facts = self._choice(entry, geometry, tumour)
                plane, (low, high) = _plane(image, geometry, z, box)
        except ImageError as exc:
            return SourceRow(row, key, {**payload, **source}, None, refusal=str(exc))
        payload = {**payload, **facts, **source}
        picture = _as_picture(plane, low, high)
        return SourceRow(row, key, payload, picture, pixels=plane, volume=entry.path)

    def levels(self, row: int, key: str | None, max_image_bytes: int) -> window.Levels:
        """The row's slice before its window. NIfTI names no unit for its voxels: a volume
        whose low percentile is at or below `HOUNSFIELD_AIR` (air in a CT) is taken as
        Hounsfield units; its header's display range (cal_min, cal_max) is its own window."""
        entry = self.entries[row]
        check_key(self.keys.key(entry.key, row), key, row)
        image, geometry, tumour = self._open(entry, {}, max_image_bytes)
        with _reading(entry.path):
            z, box, _ = self._choice(entry, geometry, tumour)
            values, (low, high) = _plane(image, geometry, z, box)
        embedded = window.Window((low + high) / 2, max(high - low, 1e-6), "LINEAR_EXACT")
        return window.Levels(
            np.nan_to_num(values.astype(np.float64), nan=low, posinf=high, neginf=low),
            embedded=embedded,
            own=_display_range(image),
            hounsfield=low <= HOUNSFIELD_AIR,
            spacing_mm=geometry.display_spacing,
        )

    def _open(
        self, entry: _Entry, tumours: dict[str, _Tumour | ImageError], max_bytes: int
    ) -> tuple[nib.Nifti1Image, _Geometry, _Tumour | None]:
        """A row's volume (lazy), where its slices lie, and its case's tumour."""
        tumour = self._tumour(entry.mask, tumours, max_bytes) if entry.mask else None
        with _reading(entry.path):
            image = _load(read_file(inside(self.root, entry.path), max_bytes))
            return image, _geometry(image, self.bounds), tumour

    def _tumour(
        self, mask: str, tumours: dict[str, _Tumour | ImageError], max_bytes: int
    ) -> _Tumour:
        if mask not in tumours:
            try:
                with _reading(mask):
                    volume = _load(read_file(inside(self.root, mask), max_bytes))
                    tumours[mask] = _measure(volume, self.bounds)
            except ImageError as exc:
                tumours[mask] = ImageError(f"mask {exc}")
        found = tumours[mask]
        if isinstance(found, ImageError):
            raise found
        return found

    def _choice(
        self, entry: _Entry, geometry: _Geometry, tumour: _Tumour | None
    ) -> tuple[int, tuple[slice, slice] | None, dict]:
        """The row's slice, its crop (None: whole) and what the payload says about them."""
        facts: dict = {
            "volume_shape": list(geometry.shape),
            "voxel_size_mm": [round(size, 6) for size in geometry.voxel_size_mm],
            "pixel_spacing": [round(size, 6) for size in geometry.display_spacing],
        }
        if len(geometry.shape) > 3:
            facts.update(volume_index=0, volumes=geometry.volumes)
        box = None
        if tumour is None:
            facts["mask"] = "absent"
            z = _spaced(geometry.depth, entry.part, entry.parts)
            facts["slice_choice"] = "middle" if entry.parts == 1 else "spaced"
        else:
            if (tumour.shape, tumour.axis) != (geometry.shape[:3], geometry.axis):
                raise ImageError(
                    f"the mask's grid {list(tumour.shape)} does not match the image's "
                    f"{list(geometry.shape[:3])}"
                )
            facts["mask"] = "empty" if tumour.slice_index is None else "present"
            facts["tumour_area_voxels"] = tumour.area_voxels
            facts["tumour_area_mm2"] = round(tumour.area_voxels * geometry.voxel_area_mm2, 3)
            if tumour.slice_index is None:
                z, facts["slice_choice"] = geometry.depth // 2, "middle"
            else:
                z, facts["slice_choice"] = tumour.slice_index, "largest_tumour"
                if self.ref.options.nifti_variant == "crop":
                    box = _widen(tumour.box, self.ref.options.nifti_crop_margin, geometry)
        facts["slice_index"] = z
        return z, box, facts

    def _labels_path(self, labels: str) -> Path:
        path = Path(labels).expanduser()
        return path if path.is_absolute() else self.root / path


def _list_entries(root: Path, unmasked_slices: int) -> list[_Entry]:
    """Every image's rows, sorted by path; masks are found by case, not read."""
    files = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if _is_nifti(path.name) and path.is_file()
    )
    named = [(path, *_case_and_modality(path)) for path in files]
    masks: dict[tuple[str, str], str] = {}
    for path, case, modality in named:
        if modality in MASK_NAMES:
            masks.setdefault((_folder(path), case), path)
    entries = []
    for path, case, modality in named:
        if modality in MASK_NAMES:
            continue
        mask = masks.get((_folder(path), case))
        parts = 1 if mask else unmasked_slices
        entries += [_Entry(path, case, modality, mask, part, parts) for part in range(parts)]
    return entries


def _case_and_modality(path: str) -> tuple[str, str]:
    folder, _, name = path.rpartition("/")
    stem = _strip_suffix(name)
    case_folder = folder.rpartition("/")[2]
    rest = stem[len(case_folder) :]
    if case_folder and stem.startswith(case_folder) and rest[:1] in ("_", "-") and rest[1:]:
        return case_folder, rest[1:].lower()
    if match := _NAME.match(stem):
        return match["case"], match["modality"].lower()
    return stem, "image"


def _folder(path: str) -> str:
    return path.rpartition("/")[0]


def _is_nifti(name: str) -> bool:
    """A NIfTI file's name; hidden ones (macOS's `._` copies in zips) are not volumes."""
    return name.lower().endswith(SUFFIXES) and not name.startswith(".")


def _strip_suffix(name: str) -> str:
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_labels(path: Path, entries: list[_Entry]) -> dict[str, str]:
    """case id -> tumour class. The case column is the one holding most of the dataset's case
    ids; the class column is named like one of CLASS_COLUMNS (`class`, `label`, `grade`...),
    or is the only other column. Empty classes stay missing; a case's first row counts."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            sample = file.read(64 * 1024)
            file.seek(0)
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t") if sample else "excel"
            rows = [row for row in csv.reader(file, dialect) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"labels CSV {path}: cannot read it ({first_line(exc)})") from exc
    if len(rows) < 2:
        raise SourceError(f"labels CSV {path}: needs a header and at least one row")
    header, body = [cell.strip() for cell in rows[0]], rows[1:]
    columns = [[row[i].strip() if i < len(row) else "" for row in body] for i in range(len(header))]
    cases = {entry.case_id for entry in entries}
    hits = [len(cases.intersection(values)) for values in columns]
    if not header or max(hits) == 0:
        raise SourceError(
            f"labels CSV {path}: no column holds this dataset's case ids "
            f"(columns: {', '.join(header)}; cases such as {min(cases)})"
        )
    case_column = hits.index(max(hits))
    class_column = _class_column(header, case_column, path)
    labels: dict[str, str] = {}
    for case, label in zip(columns[case_column], columns[class_column], strict=True):
        if label:
            labels.setdefault(case, label)
    return labels


def _class_column(header: list[str], case_column: int, path: Path) -> int:
    names = [re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") for name in header]
    for wanted in CLASS_COLUMNS:
        if wanted in names and names.index(wanted) != case_column:
            return names.index(wanted)
    others = [i for i in range(len(header)) if i != case_column]
    if len(others) == 1:
        return others[0]
    raise SourceError(
        f"labels CSV {path}: which column is the tumour class? (columns: {', '.join(header)}; "
        f"expected one named {', '.join(CLASS_COLUMNS[:5])}...)"
    )


@contextmanager
def _reading(name: str) -> Iterator[None]:
    """What a corrupt, truncated or foreign file raises becomes the row's one-line reason."""
    try:
        yield
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from exc
    except CORRUPT as exc:
        raise ImageError(f"{name}: corrupt or truncated NIfTI ({first_line(exc)})") from exc


def _header_block(data: bytes) -> bytes:
    """The first bytes of the (decompressed) file: enough for either header."""
    if not data.startswith(GZIP_MAGIC):
        return data[:HEADER_BYTES]
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, HEADER_BYTES)
    except zlib.error:
        return b""


def _kind(block: bytes) -> type[nib.Nifti1Image] | None:
    for kind in IMAGE_KINDS:
        if len(block) >= kind.header_class.sizeof_hdr and kind.header_class.may_contain_header(
            block
        ):
            return kind
    return None


def _load(data: bytes) -> nib.Nifti1Image:
    """A lazy image over the file's bytes: voxels are decompressed only as slices are read."""
    kind = _kind(_header_block(data))
    if kind is None:
        raise ImageError("not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    stream = io.BytesIO(data)
    image = kind.from_stream(gzip.GzipFile(fileobj=stream) if data[:2] == GZIP_MAGIC else stream)
    if image.header["magic"].item() not in (b"n+1", b"n+2"):
        raise ImageError("a NIfTI header whose voxels are in another file (.hdr/.img pair)")
    return image


def _geometry(image: nib.Nifti1Image, bounds: Bounds) -> _Geometry:
    """Where the axial slices lie, from the header alone; ImageError for a volume that cannot
    give one, or would cost more than `bounds` to read (checked before any voxel is)."""
    shape = tuple(int(size) for size in image.shape)
    if len(shape) < 3:
        raise ImageError(f"a {len(shape)}-D image {list(shape)}: no axial slices to choose from")
    world, flips = _orientation(image.affine)
    axis = world.index(2)
    plane_axes = tuple(i for i in range(3) if i != axis)
    if min(shape) < 1:
        raise ImageError(f"an empty volume {list(shape)}")
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf":  # RGB or complex voxels are not one intensity each
        raise ImageError(f"voxels of type {dtype} are not intensities")
    _check_cost(shape, axis, int(image.dataobj.offset), dtype.itemsize, bounds)  # offset as read
    zooms = image.header.get_zooms()[:3]
    unit = UNIT_MM.get(image.header.get_xyzt_units()[0], 1.0)
    return _Geometry(shape, axis, plane_axes, flips, world, tuple(float(z) * unit for z in zooms))


def _check_cost(
    shape: tuple[int, ...], axis: int, offset: int, itemsize: int, bounds: Bounds
) -> None:
    """Whatever the axis order, reading costs one forward pass: bounded by the volume's voxels,
    the bytes inflated to reach its end, and the slices held at once (an axial one, and one of
    the file's order: the least a read of the proxy holds)."""
    axial = math.prod(size for i, size in enumerate(shape[:3]) if i != axis)
    if max(axial, shape[0] * shape[1]) > MAX_PLANE_VOXELS:
        raise ImageError(f"slices of {list(shape)} exceed {MAX_PLANE_VOXELS} voxels")
    voxels = math.prod(shape[:3])
    if voxels > bounds.voxels:
        raise ImageError(f"a volume of {voxels} voxels {list(shape)} (limit {bounds.voxels})")
    if (end := offset + voxels * itemsize) > bounds.inflated_bytes:
        raise ImageError(f"reading the volume inflates {end} bytes (limit {bounds.inflated_bytes})")


def _orientation(affine: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per voxel axis: its closest world axis and direction; RAS+ when the affine gives none."""
    if np.all(np.isfinite(affine)):
        try:
            ornt = nib.orientations.io_orientation(affine)
            if np.all(np.isfinite(ornt)):
                return tuple(int(a) for a in ornt[:, 0]), tuple(int(f) for f in ornt[:, 1])
        except (ValueError, np.linalg.LinAlgError):
            pass
    return (0, 1, 2), (1, 1, 1)


def _measure(mask: nib.Nifti1Image, bounds: Bounds) -> _Tumour:
    """The axial slice with the largest tumour area (seg > 0; ties: the lowest slice) and the
    tumour's box in it: areas in one pass over the mask, that slice in a second."""
    geometry = _geometry(mask, bounds)
    areas = np.zeros(geometry.depth, dtype=np.int64)
    for span, slab in _slabs(mask, geometry):
        tumour = np.moveaxis(slab > 0, geometry.axis, 0)
        areas[span] += tumour.reshape(len(tumour), -1).sum(axis=1)
    if not areas.any():
        return _Tumour(geometry.shape[:3], geometry.axis, None, 0, None)
    best = int(areas.argmax())
    plane = _planes(mask, geometry, {best})[best] > 0
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    return _Tumour(geometry.shape[:3], geometry.axis, best, int(areas[best]), box)


def _slabs(image: nib.Nifti1Image, geometry: _Geometry) -> Iterator[tuple[slice, np.ndarray]]:
    """The first volume in slabs along its last voxel axis (the file's order: a gzipped file is
    inflated once, forward), each with the axial slices it spans (all of them, when the axial
    axis is another)."""
    first, second, last = geometry.shape[:3]
    step = max(1, SLAB_VOXELS // (first * second))
    volume = [0] * (len(geometry.shape) - 3)
    for start in range(0, last, step):
        slab = np.asarray(
            image.dataobj[(slice(None), slice(None), slice(start, start + step), *volume)]
        )
        yield slice(start, start + slab.shape[2]) if geometry.axis == 2 else slice(None), slab


def _planes(image: nib.Nifti1Image, geometry: _Geometry, wanted: set[int]) -> dict[int, np.ndarray]:
    """Axial slices `wanted` (their other two voxel axes in file order), in one pass."""
    parts: dict[int, list[np.ndarray]] = {z: [] for z in wanted}
    for span, slab in _slabs(image, geometry):
        axial = np.moveaxis(slab, geometry.axis, 0)  # a view: slices along its first axis
        first = span.start or 0
        for z in wanted:
            if first <= z < first + len(axial):
                parts[z].append(axial[z - first].copy())  # not a view: the slab goes
    return {z: np.concatenate(pieces, axis=-1) for z, pieces in parts.items()}


def _widen(box: tuple[slice, slice], margin: int, geometry: _Geometry) -> tuple[slice, slice]:
    """The tumour's box plus `margin` voxels on each side, clipped to the slice."""
    sizes = [geometry.shape[axis] for axis in geometry.plane_axes]
    return tuple(
        slice(max(0, part.start - margin), min(size, part.stop + margin))
        for part, size in zip(box, sizes, strict=True)
    )


def _spaced(depth: int, part: int, parts: int) -> int:
    """Slice `part` of `parts` evenly spaced inside the volume; one part is the middle."""
    return min(depth - 1, (part + 1) * depth // (parts + 1))


def _picture(
    image: nib.Nifti1Image, geometry: _Geometry, z: int, box: tuple[slice, slice] | None
) -> Image.Image:
    """Axial slice `z` (cropped to `box`), windowed by the volume's percentiles, as 8 bits."""
    plane, (low, high) = _plane(image, geometry, z, box)
    return _as_picture(plane, low, high)


def _as_picture(plane: np.ndarray, low: float, high: float) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(_eight_bits(plane, low, high)))


def _plane(
    image: nib.Nifti1Image, geometry: _Geometry, z: int, box: tuple[slice, slice] | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Axial slice `z` (cropped to `box`) as shown, and the volume's percentile window."""
    count = min(geometry.depth, WINDOW_SAMPLE_SLICES)
    sample = {round(i) for i in np.linspace(0, geometry.depth - 1, count)}
    planes = _planes(image, geometry, {*sample, z})
    low, high = _window([planes[i] for i in sample])
    plane = planes[z][box] if box else planes[z]
    return geometry.display(plane), (low, high)


def _display_range(image: nib.Nifti1Image) -> tuple[window.NamedWindow, ...]:
    low, high = (float(image.header[name]) for name in ("cal_min", "cal_max"))
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        return ()
    found = window.Window((low + high) / 2, high - low, "LINEAR_EXACT")
    return (window.NamedWindow("file: display range", found),)


def _window(planes: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([plane.ravel() for plane in planes])
    values = values[np.isfinite(values) & (values != 0)]
    if not values.size:
        return 0.0, 0.0
    low, high = np.percentile(values, WINDOW_PERCENTILES)
    return float(low), float(high)


def _eight_bits(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    plane = np.nan_to_num(plane.astype(np.float64), nan=low, posinf=high, neginf=low)
    if high <= low:  # a volume of one value: whatever is not background is white
        return np.where(plane != 0, 255, 0).astype(np.uint8)
    return np.round(np.clip((plane - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
