"""User-facing failures: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

import re

# user:password@ (or :password@) in any URL: what must never reach a message, a log or a reply.
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@", re.I
)


class MedindexError(Exception):
    """A mistake or an outage the user can act on; never shown with a traceback."""


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def mask_url(text: str) -> str:
    """`text` (a URL, or a message holding URLs) with each URL's password replaced by ***."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)
