"""User-facing failures: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class MedindexError(Exception):
    """A mistake or an outage the user can act on; never shown with a traceback."""


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
