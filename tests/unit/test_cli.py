"""The command table (pipeline/cli.py): every command listed and helped, `--help` importing no
command's module; the flags of ingest and reindex built from `SourceSpec` and `ReadOptions`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from typing import get_args

import pytest
from support import ROOT

from pipeline.cli import COMMANDS, build_parser, main
from pipeline.errors import MedindexError
from pipeline.schemas import ReadOptions
from pipeline.settings import Settings
from producers.commands.source_flags import source_spec

MODULES = {command.register.split(":")[0] for command in COMMANDS.values()}


def imported_by(*argv: str) -> set[str]:
    """The command modules `python -m pipeline.cli ARGV` imports, in a fresh interpreter."""
    run = (
        f"import runpy, sys; sys.argv = ['medindex', *{argv!r}]\n"
        "try: runpy.run_module('pipeline.cli', run_name='__main__')\n"
        "except SystemExit: print(sorted(sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return set(ast.literal_eval(result.stdout.splitlines()[-1])) & MODULES


def test_every_command_of_the_table_is_listed_and_helped(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # argparse wraps to it: no help is cut (at a hyphen)
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())  # a long name has its help below
    assert exited.value.code == 0
    for name, command in COMMANDS.items():
        assert f" {name} {command.help} " in listing, name
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exited:
            main([name, "--help"])
        assert exited.value.code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: medindex {name} "), name


def test_help_imports_no_command_module_and_a_command_only_its_own() -> None:
    assert imported_by("--help") == set()
    assert imported_by("status", "--help") == {"producers.commands.jobs"}


@pytest.mark.parametrize("command", ["ingest", "reindex"])
def test_read_option_flags_come_from_the_model(command: str) -> None:
    parser = build_parser(command)
    subparsers = next(action for action in parser._actions if action.dest == "command")
    choices = {action.dest: action.choices for action in subparsers.choices[command]._actions}
    for name in ("nifti_variant", "dicom_unit", "dicom_window"):
        assert tuple(choices[name]) == get_args(ReadOptions.model_fields[name].annotation)
    base = [command, "--dataset", str(ROOT), "--format", "table"]
    if command == "reindex":
        base += ["--alias", "a"]
    settings = Settings(dicom_window="bone", nifti_crop_margin=4)

    def spec(*extra: str) -> object:
        return source_spec(parser.parse_args([*base, *extra]), settings)

    # Not given: the setting's default; given: the flag's value, typed and checked.
    assert spec().options.dicom_window == "bone" and spec().options.nifti_crop_margin == 4
    given = spec("--nifti-crop-margin", "256", "--no-deidentify", "--index", "grade:integer")
    assert given.options.nifti_crop_margin == 256 and given.options.deidentify is False
    assert given.indexes == (("grade", "integer"),) and given.split == "train"
    with pytest.raises(MedindexError, match=r"^--nifti-crop-margin: .*less than or equal to 256"):
        spec("--nifti-crop-margin", "257")
    with pytest.raises(SystemExit):  # argparse: "invalid int value", exit 2
        spec("--nifti-crop-margin", "wide")


def test_search_table_at_80_columns_keeps_key_and_id_whole() -> None:
    """In an 80-column terminal the key and the id (what `--key`, `--id` and `medindex image`
    take) are whole; the payload fields that do not fit are named below the table."""
    from io import StringIO

    from rich.console import Console

    from search_api.cli import print_hits

    payload = {
        "image_id": "ISIC_0024329", "lesion_id": "HAM_0002557",
        "dx": "benign_keratosis-like_lesions", "dx_type": "histo", "age": 55.0,
        "sex": "female", "localization": "lower extremity",
        "source": {"key": "ISIC_0024329"},
    }  # fmt: skip
    hit_id = "e131a0bf-1f61-54f0-9a3c-0c5a0f1d2e3b"
    hits = [{"id": hit_id, "score": 0.98765, "payload": payload}]
    fields = ["image_id", "dx", "lesion_id", "dx_type", "age", "sex", "localization"]
    out = StringIO()
    terminal = Console(file=out, width=80, force_terminal=True, color_system=None)
    print_hits(hits, fields, "image_id", terminal)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "score" in line)
    assert header.split()[1:6] == ["image_id", "┃", "score", "┃", "id"]  # the key first
    row = next(line for line in lines if "0.9877" in line)
    assert row.split()[1] == "ISIC_0024329" and hit_id in row.split()
    assert "not shown:" in out.getvalue() and "--json" in out.getvalue()
    # Piped (no terminal): every field, every value whole.
    piped = StringIO()
    print_hits(hits, fields, "image_id", Console(file=piped, width=80))
    assert all(
        value in piped.getvalue() for value in ("benign_keratosis-like_lesions", "lower extremity")
    )


def test_collections_at_80_columns_keep_quality_and_creation_time() -> None:
    from io import StringIO

    from rich.console import Console

    from pipeline.catalog import CollectionRow
    from producers.commands.versions import distinguishing, print_collections

    home = "/tmp/medindex-demo-8f3k2/.medindex"
    rows = [
        CollectionRow("skin_v2", "skin", 200, 0, 200, 384, f"{home}/models/vit-s16-random", "mean",
                      f"{home}/data/skin", 0.8125, "green", 1_795_000_000.0),
        CollectionRow("xray", None, 48, 48, 0, 2048, "microsoft/resnet-50", "pooler",
                      f"{home}/data/xray/Data_Entry_2017.csv", None, "green", 1_795_000_100.0),
    ]  # fmt: skip
    out = StringIO()
    print_collections(rows, Console(file=out, width=80, force_terminal=True, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    skin = next(line for line in lines if "skin_v2" in line)
    assert "0.812" in skin and re.search(r"\d\d-\d\d-\d\d \d\d:\d\d", skin)
    assert "200 (200)" in skin  # its points, and those outside its HNSW index
    assert "medindex-demo-8f3k2" not in out.getvalue()  # the shared folders left out
    assert distinguishing([r.dataset for r in rows]) == ["skin", "xray/Data_Entry_2017.csv"]
    assert distinguishing([r.model for r in rows]) == ["vit-s16-random", "microsoft/resnet-50"]
