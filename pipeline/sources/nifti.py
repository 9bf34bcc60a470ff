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

Memory: a file is read as bytes (at most `max_image_bytes`, like every reader) and its voxels
through nibabel's array proxy, a few slices at a time; a volume is never in memory whole.
"""

from __future__ import annotations

import csv
import gzip
import io
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

SUFFIXES = (".nii.gz", ".nii")
MASK_NAMES = frozenset({"seg"})  # the modality name of a case's tumour mask (BraTS: `_seg`)
WINDOW_PERCENTILES = (0.5, 99.5)
WINDOW_SAMPLE_SLICES = 16
SLAB_VOXELS = 4 * 1024 * 1024  # voxels of a mask read at once while measuring its slices
MAX_PLANE_VOXELS = 1024 * 1024  # a larger axial slice is a decompression bomb, not an MRI
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

    def index(self, axial: int | slice) -> tuple:
        """The proxy index of axial slice(s) `axial` of the first volume."""
        spatial = [slice(None)] * 3
        spatial[self.axis] = axial
        return (*spatial, *([0] * (len(self.shape) - 3)))

    def display(self, plane: np.ndarray) -> np.ndarray:
        """A slice as read (its voxel axes in file order) -> rows anterior to posterior,
        columns patient right to left."""
        first, second = self.plane_axes
        rows, cols = (first, second) if self.world[first] == 1 else (second, first)
        shown = plane if rows == first else plane.T
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
        geometry = _geometry(image)
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
            tumour = self._tumour(entry.mask, tumours, max_bytes) if entry.mask else None
            with _reading(entry.path):
                image = _load(read_file(inside(self.root, entry.path), max_bytes))
                geometry = _geometry(image)
                picture, facts = self._slice(entry, image, geometry, tumour)
        except ImageError as exc:
            return SourceRow(row, key, {**payload, **source}, None, refusal=str(exc))
        return SourceRow(row, key, {**payload, **facts, **source}, picture)

    def _tumour(
        self, mask: str, tumours: dict[str, _Tumour | ImageError], max_bytes: int
    ) -> _Tumour:
        if mask not in tumours:
            try:
                with _reading(mask):
                    tumours[mask] = _measure(_load(read_file(inside(self.root, mask), max_bytes)))
            except ImageError as exc:
                tumours[mask] = ImageError(f"mask {exc}")
        found = tumours[mask]
        if isinstance(found, ImageError):
            raise found
        return found

    def _slice(
        self, entry: _Entry, image: nib.Nifti1Image, geometry: _Geometry, tumour: _Tumour | None
    ) -> tuple[Image.Image, dict]:
        """The row's picture and what the payload says about it."""
        facts: dict = {
            "volume_shape": list(geometry.shape),
            "voxel_size_mm": [round(size, 6) for size in geometry.voxel_size_mm],
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
        return _picture(image, geometry, z, box), facts

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


def _geometry(image: nib.Nifti1Image) -> _Geometry:
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
    if shape[plane_axes[0]] * shape[plane_axes[1]] > MAX_PLANE_VOXELS:
        raise ImageError(f"axial slices of {list(shape)} exceed {MAX_PLANE_VOXELS} voxels")
    zooms = image.header.get_zooms()[:3]
    unit = UNIT_MM.get(image.header.get_xyzt_units()[0], 1.0)
    return _Geometry(shape, axis, plane_axes, flips, world, tuple(float(z) * unit for z in zooms))


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


def _measure(mask: nib.Nifti1Image) -> _Tumour:
    """The axial slice with the largest tumour area (seg > 0) and the tumour's box in it,
    reading the mask a slab of slices at a time."""
    geometry = _geometry(mask)
    plane_size = geometry.shape[geometry.plane_axes[0]] * geometry.shape[geometry.plane_axes[1]]
    step = max(1, SLAB_VOXELS // plane_size)
    best, best_area, best_plane = None, 0, None
    for start in range(0, geometry.depth, step):
        slab = np.moveaxis(
            np.asarray(mask.dataobj[geometry.index(slice(start, start + step))]) > 0,
            geometry.axis,
            0,
        )
        areas = slab.reshape(len(slab), -1).sum(axis=1)
        if areas.size and int(areas.max()) > best_area:
            local = int(areas.argmax())
            best, best_area, best_plane = start + local, int(areas[local]), slab[local]
    box = None
    if best_plane is not None:
        rows, cols = np.flatnonzero(best_plane.any(axis=1)), np.flatnonzero(best_plane.any(axis=0))
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    return _Tumour(geometry.shape[:3], geometry.axis, best, best_area, box)


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
    count = min(geometry.depth, WINDOW_SAMPLE_SLICES)
    sample = {round(i) for i in np.linspace(0, geometry.depth - 1, count)}
    # In increasing order: a gzipped file is decompressed once, forward.
    planes = {i: np.asarray(image.dataobj[geometry.index(i)]) for i in sorted({*sample, z})}
    low, high = _window([planes[i] for i in sample])
    plane = planes[z][box] if box else planes[z]
    return Image.fromarray(np.ascontiguousarray(_eight_bits(geometry.display(plane), low, high)))


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
