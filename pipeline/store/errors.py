"""The store's one error: a refusal or an outage, worded for the user."""

from __future__ import annotations

from pipeline.errors import MedindexError


class StoreError(MedindexError):
    """Qdrant refused or could not be reached; the message is meant for the user.

    `transient`: worth retrying (unreachable, timeout, 5xx, 429, a shard busy); otherwise the
    request itself was refused and sending it again would fail again.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
