"""The command table (pipeline/cli.py): every command listed and helped, `--help` importing no
command's module; the flags of ingest and reindex built from `SourceSpec` and `ReadOptions`."""

from __future__ import annotations

import ast
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
