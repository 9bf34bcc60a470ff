"""The job bookkeeping that follows a write: what the writer reports, recorded per job."""

from __future__ import annotations

from pipeline.progress import JobTracker
from pipeline.schemas import PointBatch, UnwritablePoints
from pipeline.writer import Span, WriteReport


def record(tracker: JobTracker, report: WriteReport) -> None:
    """Written rows indexed, refused ones failed with the reason, parked ones kept whole in
    Redis for `medindex retry` (shown as failed meanwhile), each call in the write log."""
    for span in report.written:
        tracker.mark_indexed(span.batch.job_id, span.batch.rows[span.start : span.stop])
    for span, reason in report.refused:
        tracker.mark_failed(span.batch.job_id, failures(span, reason))
    for span, reason in report.parked:
        job_id = span.batch.job_id
        kept = span.batch.slice(span.start, span.stop).model_dump_json()
        reason = f"{reason}; points kept, `medindex retry {job_id}` writes them"
        tracker.park(job_id, kept, failures(span, reason))
    for call in report.calls:
        tracker.record_write(call.collection, call.points, call.seconds)


def refuse(tracker: JobTracker, unwritable: UnwritablePoints) -> None:
    """A point message no write can take: the rows it names failed with the reason (an embed
    step that sends them again, after `medindex retry`, sends a good message)."""
    if unwritable.named:
        rows, reason = unwritable.named.rows, f"unwritable point message: {unwritable}"
        tracker.fail_rows(unwritable.named.job_id, rows, reason)


def park(tracker: JobTracker, batch: PointBatch, reason: str) -> None:
    """A message's points kept whole for `medindex retry`, as the writer parks them."""
    record(tracker, WriteReport(parked=[(Span(batch, 0, len(batch)), reason)]))


def failures(span: Span, reason: str) -> list[dict]:
    batch = span.batch
    keys = batch.keys()[span.start : span.stop]
    rows = batch.rows[span.start : span.stop]
    return [{"row": row, "key": key, "reason": reason} for row, key in zip(rows, keys, strict=True)]
