"""The flags of what to index and how, shared by `ingest` and `reindex`: one per field of
`SourceSpec` and of its `ReadOptions`, built from the models (name, choices, type, bounds,
help), and read back into a `SourceSpec`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from pipeline.errors import MedindexError
from pipeline.schemas import ReadOptions
from pipeline.settings import Settings
from pipeline.sources import READERS, detect_format, known_format
from producers.commands import err
from producers.schema import FIELD_TYPES, parse_index
from producers.spec import SourceSpec

# The flags that are not `--field-name VALUE`.
SPECIAL = {
    "format": {"help": f"{', '.join(READERS)} (default: detected from --dataset)"},
    "indexes": {
        "flag": "--index", "action": "append", "default": [], "metavar": "FIELD:TYPE",
        "help": "a payload index type for a field, over the detected one (repeatable; TYPE: "
        f"{', '.join(FIELD_TYPES)})",
    },
    "deidentify": {
        "flag": "--no-deidentify", "action": "store_const", "const": False,
        "help": "DICOM: keep identifying tags (default: MEDINDEX_DEIDENTIFY)",
    },
}  # fmt: skip


def add_source_flags(cmd: argparse.ArgumentParser) -> None:
    """Every flag defaults to None, "not given": the model's default applies, or, for a field
    that is also a setting, the setting's (`Settings.read_options`, MEDINDEX_MODEL)."""
    for name, field in _fields():
        keywords = {"default": None, "required": field.is_required(), "help": _help(name, field)}
        keywords |= _kind(field)
        keywords |= SPECIAL.get(name, {})
        flag = keywords.pop("flag", "--" + name.replace("_", "-"))
        cmd.add_argument(flag, dest=name, **keywords)


def source_spec(args: argparse.Namespace, settings: Settings) -> SourceSpec:
    """The format (detected and said when not given), read options and schema overrides of an
    ingest or reindex: fixed once, carried by every job."""
    fmt = args.format and known_format(args.format)
    if fmt is None:
        fmt = detect_format(args.dataset)
        err.print(f"format: {fmt} (detected; --format chooses)")
    given = {name: getattr(args, name) for name in ReadOptions.model_fields}
    try:
        options = settings.read_options(**given)
    except ValidationError as exc:  # a value out of range
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-")
        raise MedindexError(f"{flag}: {error['msg']}") from exc
    indexes = tuple(parse_index(text) for text in args.indexes)
    fixed = {"format": fmt, "options": options, "indexes": indexes}
    given = {name: getattr(args, name) for name in SourceSpec.model_fields.keys() - fixed.keys()}
    return SourceSpec(
        **{name: value for name, value in given.items() if value is not None}, **fixed
    )


def _fields() -> Iterator[tuple[str, FieldInfo]]:
    for name, field in SourceSpec.model_fields.items():
        if name == "options":
            yield from ReadOptions.model_fields.items()
        else:
            yield name, field


def _kind(field: FieldInfo) -> dict:
    """argparse's `choices` from a Literal, its `type` from an int or a float."""
    kind = field.annotation
    if get_origin(kind) in (Union, UnionType):  # `X | None`: X
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    if get_origin(kind) is Literal:
        return {"choices": get_args(kind)}
    return {"type": kind} if kind in (int, float) else {}


def _help(name: str, field: FieldInfo) -> str | None:
    """The field's description, with its bounds and the setting that gives its default."""
    notes = []
    low = next((rule.ge for rule in field.metadata if hasattr(rule, "ge")), None)
    high = next((rule.le for rule in field.metadata if hasattr(rule, "le")), None)
    if low is not None and high is not None:
        notes.append(f"{low} to {high}")
    if name in Settings.model_fields:
        notes.append(f"default: MEDINDEX_{name.upper()}")
    if not field.description:
        return "; ".join(notes) or None
    return f"{field.description} ({'; '.join(notes)})" if notes else field.description
