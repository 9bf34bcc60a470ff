"""What an ingest and a reindex share: the data to read and how, the model that embeds it, and
the collection schema's overrides. Light to import: the CLI builds its flags from it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipeline.schemas import Pooling, ReadOptions


class SourceSpec(BaseModel):
    """The fields' order is their flags' order, each description its flag's help
    (producers/commands/source_flags.py)."""

    model_config = ConfigDict(frozen=True)

    dataset: str = Field(
        description="Hugging Face hub id, a local folder, or a table file (CSV, TSV, Parquet)"
    )
    format: str | None = None  # None: detected; not a Literal: the readers' registry refuses
    split: str = "train"
    label_field: str | None = Field(
        None, description="the field quality, group-by and colouring use (default: the source's "
        "class label)",
    )  # fmt: skip
    indexes: tuple[tuple[str, str], ...] = ()  # (field, type) overrides of the schema's types
    options: ReadOptions = ReadOptions()
    model: str | None = None
    pooling: Pooling | None = Field(
        None, description="how the model's output becomes one vector (default: the model's own, "
        "else mean)",
    )  # fmt: skip
    source_name: str | None = Field(
        None, description="identity point ids derive from (default: --dataset)"
    )
