"""The page's Audit view: a collection's last audit (`medindex audit`), as its producer kept it
in Redis: the summary, thresholds and histogram, and its pairs for the galleries."""

from __future__ import annotations

from fastapi import APIRouter

from pipeline.audit_report import last_report
from search_api.deps import broker
from search_api.facets import version_of

router = APIRouter()


@router.get("/collections/{collection}/audit")
def audit(collection: str) -> dict:
    """{"report": the last audit's summary with "pairs", or None when none was run}."""
    return {"report": last_report(broker(), version_of(collection))}
