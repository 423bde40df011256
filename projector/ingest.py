"""Reading envelopes from files: NDJSON (one per line) or one JSON array, streamed in batches."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .pgsink import BatchResult, PostgresEventSink, RawEnvelope

__all__ = ["IngestReport", "ingest", "read_items"]


@dataclass
class IngestReport:
    """The outcome of one ingest: counts, and where (line or element number) each rejection was."""

    result: BatchResult
    rejected_at: list[tuple[int, str]]

    def counts(self) -> dict[str, int]:
        return self.result.counts()


def read_items(
    stream: IO[bytes], source: str, on_bytes: Callable[[int], None] | None = None
) -> Iterator[RawEnvelope | dict[str, Any]]:
    """Yield raw envelopes: NDJSON lines (positions are 1-based line numbers, blank lines skipped)
    or the elements of a top-level JSON array (positions are 1-based element numbers)."""
    head = stream.peek(64)[:64] if hasattr(stream, "peek") else b""
    if head.lstrip()[:1] == b"[":
        data = stream.read()
        if on_bytes:
            on_bytes(len(data))
        try:
            elements = json.loads(data)
        except json.JSONDecodeError as exc:
            yield RawEnvelope(data, source, exc.lineno)
            return
        for n, element in enumerate(elements, start=1):
            yield RawEnvelope(json.dumps(element, ensure_ascii=False), source, n)
        return
    for lineno, line in enumerate(stream, start=1):
        if on_bytes:
            on_bytes(len(line))
        stripped = line.strip()
        if stripped:
            yield RawEnvelope(stripped, source, lineno)


async def _batches(
    items: Iterator[RawEnvelope | dict[str, Any]], size: int
) -> AsyncIterator[list[RawEnvelope | dict[str, Any]]]:
    batch: list[RawEnvelope | dict[str, Any]] = []
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
) -> IngestReport:
    """Store every valid envelope of `stream`; invalid ones go to noetl.event_rejected."""
    total = BatchResult()
    rejected_at: list[tuple[int, str]] = []
    async for batch in _batches(read_items(stream, source, on_bytes), sink.batch_size):
        result = await sink.emit_many(batch, source=source)
        for r in result.rejected:
            item = batch[r.position]
            where = item.position if isinstance(item, RawEnvelope) else None
            rejected_at.append((where if where is not None else r.position + 1, r.reason))
        total.inserted += result.inserted
        total.duplicates += result.duplicates
        total.conflicts += result.conflicts
        total.conflict_ids.extend(result.conflict_ids)
        total.rejected.extend(result.rejected)
    return IngestReport(total, rejected_at)
