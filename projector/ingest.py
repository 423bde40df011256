"""Reading envelopes from files and documents, and storing them (`projector ingest`).

:func:`read_items` finds the items (:mod:`projector.jsonstream`: NDJSON lines, JSON arrays,
``{"result": [...]}`` / ``{"events": [...]}`` / ``{"event": {...}}`` wrappers, in bounded memory)
and validates each as it goes, so that what the sink stores is decided per source:

* `execution_id` (``--execution-id``) fills the envelopes that have none; one that carries another
  is rejected, saying both;
* envelopes without `event_id` get their derived id numbered by occurrence within the source
  (:class:`projector.envelope.Occurrences`): identical id-less rows are distinct events, and the
  same file read again gives the same ids;
* oversized and unreadable items, duplicate keys and invalid envelopes are rejected with their
  position (a line number for NDJSON, an element number in a document).

Each item reaches the sink as a `RawEnvelope` holding its exact bytes, the source name and its
position (the line or element number), so a rejection keeps all three; the bytes carry what the
reader found (:class:`projector.envelope.ParsedRaw`), so nothing is parsed twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from pydantic import ValidationError

from .batch import describe_validation_error
from .envelope import ExecutorEvent, Occurrences, ParsedRaw, invalid
from .jsonstream import Piece, Position, pieces
from .pgsink import BatchResult, PostgresEventSink, RawEnvelope

__all__ = ["IngestReport", "Position", "ingest", "read_items"]


@dataclass
class IngestReport:
    """The outcome of one ingest: counts, and where each rejection was (``line 12``,
    ``element 12``) with its reason."""

    result: BatchResult
    rejected_at: list[tuple[Position, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return self.result.counts()


def envelope_of(
    piece: Piece, occurrences: Occurrences, execution_id: str | int | None = None
) -> ParsedRaw:
    """`piece` validated: its bytes carrying the envelope (id filled in by occurrence) or the
    reason it is rejected (prefixed with ``event k of n:`` for one envelope of a wrapper)."""
    raw = piece.raw
    if piece.problem is not None:
        return ParsedRaw.rejected(raw, invalid(piece.problem))
    try:
        event = ExecutorEvent.parse_json(raw, execution_id=execution_id)
    except ValidationError as exc:
        if piece.wrapped is None:
            return ParsedRaw.rejected(raw, exc)
        k, n = piece.wrapped
        return ParsedRaw.rejected(
            raw, invalid(f"event {k} of {n}: {describe_validation_error(exc)}")
        )
    return ParsedRaw.of(raw, occurrences.assign(event))


def _read(
    stream: IO[bytes],
    source: str,
    on_bytes: Callable[[int], None] | None,
    execution_id: str | int | None,
) -> Iterator[tuple[Position, RawEnvelope]]:
    occurrences = Occurrences()
    for piece in pieces(stream, on_bytes):
        raw = envelope_of(piece, occurrences, execution_id)
        yield piece.position, RawEnvelope(raw, source, piece.position.number)


def read_items(
    stream: IO[bytes],
    source: str,
    on_bytes: Callable[[int], None] | None = None,
    *,
    execution_id: str | int | None = None,
) -> Iterator[RawEnvelope]:
    """The items of `stream` (module docstring) as raw envelopes, in order; `on_bytes` is called
    with the number of bytes read as reading goes on."""
    for _position, item in _read(stream, source, on_bytes, execution_id):
        yield item


async def _batches(
    items: Iterator[tuple[Position, RawEnvelope]], size: int
) -> AsyncIterator[list[tuple[Position, RawEnvelope]]]:
    batch: list[tuple[Position, RawEnvelope]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def ingest(
    sink: PostgresEventSink,
    stream: IO[bytes],
    source: str,
    on_bytes: Callable[[int], None] | None = None,
    *,
    execution_id: str | int | None = None,
) -> IngestReport:
    """Store every valid envelope of `stream`; invalid ones go to noetl.event_rejected."""
    report = IngestReport(BatchResult())
    total = report.result
    async for batch in _batches(_read(stream, source, on_bytes, execution_id), sink.batch_size):
        result = await sink.emit_many([item for _, item in batch], source=source)
        for r in result.rejected:
            report.rejected_at.append((batch[r.position][0], r.reason))
        total.inserted += result.inserted
        total.duplicates += result.duplicates
        total.conflicts += result.conflicts
        total.conflict_ids.extend(result.conflict_ids)
        total.rejected.extend(result.rejected)
    return report
