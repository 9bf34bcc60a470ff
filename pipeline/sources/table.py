"""The `table` reader: a CSV, TSV or Parquet file with a column of image paths.

Made for layouts like NIH ChestX-ray14's `Data_Entry_2017.csv`, which works as it is. The
dataset is the table file (or a folder holding exactly one); image paths are relative to
`image_root` (default: the table's folder; a relative root is taken from the table's folder).

Column names become payload field names by one rule: lower case, every run of characters that
are not letters or digits becomes `_`, leading and trailing `_` are dropped (`Follow-up #` ->
`follow_up`, `Patient ID` -> `patient_id`); a pair split inside brackets takes the bracket's
word for both, its words apart (`OriginalImage[Width`, `Height]` -> `original_image_width`,
`original_image_height`). Columns
with no name (ChestX-ray14's trailing comma) or no values are dropped, and so are columns of a
type no payload index holds (binary, times of day, structs, nested lists). Two columns that
normalise to the same name, or a column named `source` (the payload's reference to the
image), are refused.

Values, per column:
- strings: keywords; a column where some value holds `|` is a list of keywords, split there
  and stripped (`Cardiomegaly|Effusion` -> `["Cardiomegaly", "Effusion"]`), so that filters
  match each label; a column whose values are all ages written the DICOM way (`058Y`, `006M`,
  `003W`, `010D`) becomes a number of years (integer when all are in years, else float). The
  path and key columns are kept as written;
- identifiers (`id`, `*_id`) are keywords, their integers kept as text: ids are matched,
  never ranged;
- integers, floats (and decimals), booleans keep their type; dates and timestamps are stored
  as ISO strings and indexed as datetimes; lists of these are kept as lists;
- a missing value (empty cell, null, NaN, empty string) is left out of the payload, never 0.

The image path column is `image_column` (its name as written or normalised), else the first
string column whose values all end in an image extension (.png .jpg .jpeg .tif .tiff .bmp
.dcm). A bare file name not found at the root is looked up by name in the folders below it
(ChestX-ray14 keeps its images in `images_00N/images/`). A path leaving the root is refused,
and a missing or unreadable file fails its row alone, with its reason.

Keys: the `key_column` when given, else the image path as written in the table (with forward
slashes, without a leading `./`): re-sorting the table rewrites the same points. The schema's
key field is that column's payload name; its label field is the first of `label`, `labels`,
`finding_labels`, `findings`, `diagnosis`, `class` present among the payload fields (none
otherwise). A label field may hold lists (ChestX-ray14's findings).
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from pathlib import Path, PurePosixPath
from typing import Literal, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import first_line
from pipeline.images import ImageError
from pipeline.schemas import SourceRef
from pipeline.sources.base import (
    Field,
    FieldType,
    Schema,
    Source,
    SourceError,
    SourceRow,
    inside,
    is_identifier,
    is_missing,
    key_census,
    plain,
    read_file,
)

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
LABEL_FIELDS = ("label", "labels", "finding_labels", "findings", "diagnosis", "class")
RESERVED = "source"  # the payload's reference to the image (`Source.reference`)
LIST_SEPARATOR = "|"
_AGE = r"^\s*\d{1,3}\s*[DWMYdwmy]\s*$"
_IMAGE_PATH = "(" + "|".join(re.escape(s) for s in IMAGE_SUFFIXES) + r")\s*$"
_AGE_UNITS = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}  # per year
_OPENED, _CLOSED = re.compile(r"([^\[\]]+)\[([^\[\]]+)"), re.compile(r"([^\[\]]+)\]\s*")
_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")  # OriginalImage -> Original_Image


def field_name(column: str) -> str:
    """A column's payload field name (see the module's docstring)."""
    return re.sub(r"[\W_]+", "_", column.lower()).strip("_")


def field_names(columns: list[str]) -> list[str]:
    """Every column's field name; a pair a comma split inside brackets (ChestX-ray14's
    `OriginalImage[Width`, `Height]`) named both from the bracket's word, its words apart:
    `original_image_width`, `original_image_height`."""
    names = [field_name(column) for column in columns]
    for i, (first, second) in enumerate(pairwise(columns)):
        opened, closed = _OPENED.fullmatch(first), _CLOSED.fullmatch(second)
        if opened and closed:
            stem = field_name(_WORD_START.sub("_", opened[1]))
            names[i : i + 2] = [f"{stem}_{field_name(half)}" for half in (opened[2], closed[1])]
    return names


@dataclass(frozen=True)
class Column:
    """A kept column: its name in the table, in the payload, its index type and how a cell
    becomes a payload value."""

    name: str
    field: str
    type: FieldType
    # list: split at `|`; age: `058Y` -> 58; identifier: 30805 -> "30805"
    kind: Literal["plain", "list", "age", "identifier"] = "plain"


class TableSource(Source):
    """A CSV, TSV or Parquet table with a column of image paths."""

    format = "table"

    def __init__(self, ref: SourceRef) -> None:
        super().__init__(ref)
        self.path = _table_file(Path(ref.dataset))
        table = _read_table(self.path)
        if table.num_rows == 0:
            raise SourceError(f"table {self.path} has no rows")
        table = _decode_dictionaries(table)
        options = ref.options
        self.image_column = _path_column(table, options.image_column, self.path)
        key_column = _key_column(table, options.key_column, self.path)
        self.columns = _columns(table, {self.image_column, key_column}, self.path)
        self.table = table.select([c.name for c in self.columns])
        self.root = _root(self.path, options.image_root)

        written = table.column(self.image_column).to_pylist()
        self._paths = [None if is_missing(p) or _blank(p) else _spelling(p) for p in written]
        key_values = table.column(key_column).to_pylist() if key_column else self._paths
        self.keys = key_census(key_values)
        self._key_values = key_values
        names = dict(zip(table.column_names, field_names(table.column_names), strict=True))
        self.key_column = names[key_column or self.image_column]

    @classmethod
    def detect(cls, path: Path) -> bool:
        """A table file, or a folder holding a table whose path column names the folder's
        images (ChestX-ray14 as downloaded: `Data_Entry_2017.csv` beside `images_00N/`)."""
        if path.is_dir():
            return _image_table(path) is not None
        return _is_table(path)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def schema(self) -> Schema:
        fields = tuple(Field(c.field, c.type) for c in self.columns)
        names = {c.field for c in self.columns}
        label = next((name for name in LABEL_FIELDS if name in names), None)
        return Schema(fields=fields, key_field=self.key_column, label_field=label)

    def read(self, rows: list[int], max_image_bytes: int) -> list[SourceRow]:
        """The rows' keys, payloads and image file bytes; a missing file, a path leaving the
        root or a file over `max_image_bytes` fails its row alone."""
        cells = self.table.take(rows).to_pydict()
        out = []
        for i, row in enumerate(rows):
            key = self.keys.key(self._key_values[row], row)
            payload = self._payload({c: cells[c.name][i] for c in self.columns})
            payload[RESERVED] = self.reference(row, key)
            try:
                image = read_file(self._locate(self._paths[row]), max_image_bytes)
                out.append(SourceRow(row, key, payload, image))
            except ImageError as exc:
                out.append(SourceRow(row, key, payload, None, refusal=str(exc)))
        return out

    def _payload(self, cells: dict[Column, object]) -> dict:
        payload = {}
        for column, cell in cells.items():
            value = _value(column, cell)
            if value is not None:
                payload[column.field] = value
        return payload

    def _locate(self, written: str | None) -> Path:
        """The file a path cell names, inside the root."""
        if written is None:
            raise ImageError(f"no image path in column {self.image_column!r}")
        path = inside(self.root, written)
        if path.exists() or "/" in written:
            return path  # reading it gives the reason when it is missing
        found = self._by_name.get(written, [])
        if len(found) > 1:
            raise ImageError(
                f"{len(found)} files named {written!r} below {self.root}: "
                "give its folder in the path column"
            )
        if not found:
            raise ImageError(f"image file {written!r} is neither in {self.root} nor below it")
        return inside(self.root, found[0])

    @cached_property
    def _by_name(self) -> dict[str, list[str]]:
        """Bare file names of the path column -> where they are below the root (walked once,
        on the first name not found at the root)."""
        wanted = {p for p in self._paths if p is not None and "/" not in p}
        found: dict[str, list[str]] = defaultdict(list)
        for folder, _dirs, files in os.walk(self.root):
            for name in wanted.intersection(files):
                found[name].append(os.path.relpath(os.path.join(folder, name), self.root))
        return dict(found)


def _value(column: Column, cell: object) -> object:
    """A cell as a payload value; None when it is missing."""
    if is_missing(cell) or _blank(cell):
        return None
    if column.kind == "list":
        labels = [part.strip() for part in str(cell).split(LIST_SEPARATOR) if part.strip()]
        return labels or None
    if column.kind == "age":
        return _years(str(cell), integer=column.type == "integer")
    if column.kind == "identifier":
        return str(cell)
    if isinstance(cell, list):
        return [plain(v) for v in cell if not is_missing(v)] or None
    return plain(cell)


def _years(age: str, integer: bool) -> int | float:
    age = age.strip().replace(" ", "")
    years = int(age[:-1]) / _AGE_UNITS[age[-1].upper()]
    return int(years) if integer else round(years, 2)


def _blank(cell: object) -> bool:
    return isinstance(cell, str) and not cell.strip()


def _spelling(written: str) -> str:
    """A path as keys spell it: forward slashes, no `./` or doubled slashes."""
    return str(PurePosixPath(written.strip().replace("\\", "/")))


def _table_file(dataset: Path) -> Path:
    """The table itself, or the table inside a folder: its one table file, or the one that
    names the folder's images."""
    if not dataset.is_dir():
        return dataset
    tables = sorted(p.name for p in dataset.iterdir() if _is_table(p))
    if len(tables) == 1:
        return dataset / tables[0]
    if not tables:
        raise SourceError(f"folder {dataset} holds no table file ({', '.join(TABLE_SUFFIXES)})")
    return _image_table(dataset) or _several(dataset, tables)


def _is_table(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TABLE_SUFFIXES)


def _image_table(folder: Path, sample: int = 20) -> Path | None:
    """The table directly inside `folder` whose path column names images found below it (by
    name, the first `sample` rows); None if none does. Several that do are refused by name."""
    tables = sorted(p for p in folder.iterdir() if _is_table(p))
    if not tables:
        return None
    images = {name for _, _, files in os.walk(folder) for name in files
              if name.lower().endswith(IMAGE_SUFFIXES)}  # fmt: skip
    naming = [table for table in tables if _names_images(table, images, sample)]
    if len(naming) > 1:
        _several(folder, [table.name for table in naming])
    return naming[0] if naming else None


def _names_images(table: Path, images: set[str], sample: int) -> bool:
    try:
        read = _read_table(table)
        column = _path_column(read, None, table)
    except SourceError:  # unreadable, or no column of image paths: not this folder's table
        return False
    written = read.column(column).slice(0, sample).drop_null().to_pylist()
    return any(PurePosixPath(_spelling(path)).name in images for path in written)


def _several(folder: Path, tables: list[str]) -> NoReturn:
    raise SourceError(
        f"folder {folder} holds several tables ({', '.join(tables)}): give one as --dataset"
    )


def _read_table(path: Path) -> pa.Table:
    try:
        if path.name.lower().endswith(".parquet"):
            return pq.read_table(path)
        return _read_csv(path, "\t" if path.name.lower().endswith(".tsv") else ",")
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"cannot read table {path}: {first_line(exc)}") from exc


def _read_csv(path: Path, delimiter: str) -> pa.Table:
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(strings_can_be_null=True)
    try:
        return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid:
        # A header ending in a delimiter names an empty last column (ChestX-ray14's) that
        # rows may leave out: read again without it.
        header = _header(path, delimiter)
        names = list(header)
        while names and not names[-1].strip():
            names.pop()
        if len(names) == len(header):
            raise
        read = pacsv.ReadOptions(column_names=names, skip_rows=1)
        return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def _header(path: Path, delimiter: str) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as file:
        return next(csv.reader(file, delimiter=delimiter), [])


def _decode_dictionaries(table: pa.Table) -> pa.Table:
    """Categorical columns (pandas' Parquet files) as their plain values."""
    for i, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            table = table.set_column(i, table.field(i).name, column.cast(column.type.value_type))
    return table


def _columns(table: pa.Table, always: set[str | None], path: Path) -> list[Column]:
    """The columns that go into payloads, with their field names, types and kinds."""
    columns = []
    fields = field_names(table.column_names)
    for name, field, values in zip(table.column_names, fields, table.columns, strict=True):
        kind = _field_type(values.type)
        if not field or kind is None or values.null_count == len(values):
            continue
        columns.append(_column(name, field, values, kind, special=name in always))
    clashes = Counter(c.field for c in columns)
    for field, count in clashes.items():
        if count > 1:
            names = " and ".join(repr(c.name) for c in columns if c.field == field)
            raise SourceError(f"table {path}: columns {names} both become field {field!r}")
    if RESERVED in clashes:
        raise SourceError(
            f"table {path}: a column named {RESERVED!r} would hide each point's reference "
            "to its image; rename it"
        )
    return columns


def _column(
    name: str, field: str, values: pa.ChunkedArray, kind: FieldType, special: bool
) -> Column:
    """A string column may hold lists (`a|b`) or DICOM ages; an integer identifier is kept as
    text; the path and key columns are taken as they are."""
    if kind == "integer" and is_identifier(field):
        return Column(name, field, "keyword", "identifier")
    if special or not _is_string(values.type):
        return Column(name, field, kind)
    if pc.any(pc.match_substring(values, LIST_SEPARATOR)).as_py():
        return Column(name, field, "keyword", "list")
    present = values.drop_null()
    if pc.all(pc.match_substring_regex(present, _AGE)).as_py():
        in_years = pc.all(pc.match_substring_regex(present, r"[Yy]\s*$")).as_py()
        return Column(name, field, "integer" if in_years else "float", "age")
    return Column(name, field, kind)


def _field_type(kind: pa.DataType) -> FieldType | None:
    """The payload index type of an arrow type; None: not kept."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = kind.value_type
        return None if pa.types.is_nested(inner) else _field_type(inner)
    if _is_string(kind):
        return "keyword"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "float"
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return "datetime"
    return None


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _named_column(table: pa.Table, wanted: str, role: str, path: Path) -> str:
    """A column the user named, as written or normalised."""
    names = table.column_names
    if wanted in names:
        return wanted
    fields = field_names(names)
    matches = [name for name, field in zip(names, fields, strict=True)
               if field in (field_name(wanted), wanted)]  # fmt: skip
    if len(matches) == 1:
        return matches[0]
    raise SourceError(f"table {path} has no {role} {wanted!r} (columns: {', '.join(names)})")


def _key_column(table: pa.Table, wanted: str | None, path: Path) -> str | None:
    if not wanted:
        return None
    name = _named_column(table, wanted, "key column", path)
    if table.column(name).null_count == table.num_rows:
        raise SourceError(f"table {path}: key column {name!r} has no values")
    return name


def _path_column(table: pa.Table, wanted: str | None, path: Path) -> str:
    if wanted:
        name = _named_column(table, wanted, "image column", path)
        values = table.column(name)
        if not _is_string(values.type) or values.null_count == len(values):
            raise SourceError(f"table {path}: column {name!r} holds no image paths")
        return name
    for name, values in zip(table.column_names, table.columns, strict=True):
        if not field_name(name) or not _is_string(values.type) or values.null_count == len(values):
            continue
        paths = pc.match_substring_regex(values.drop_null(), _IMAGE_PATH, ignore_case=True)
        if pc.all(paths).as_py():
            return name
    raise SourceError(
        f"table {path} has no column of image paths (ending in {', '.join(IMAGE_SUFFIXES)}); "
        "name it with --image-column"
    )


def _root(table: Path, image_root: str | None) -> Path:
    root = (table.parent / image_root) if image_root else table.parent
    if not root.is_dir():
        raise SourceError(f"image root {root} is not a folder")
    return root.resolve()
