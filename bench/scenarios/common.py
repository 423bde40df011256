"""Pieces several scenarios share: the raw COPY baseline and a sink with benchmark settings.

Both timed paths record this process's CPU time while their clock runs (`cpu_seconds` in the
sample), so a scenario can say how much of the work was the client's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps

from projector.database import CONNECT_KWARGS
from projector.envelope import ENVELOPE_FIELDS, ExecutorEvent
from projector.pgsink import PostgresEventSink

from ..events import copy_row
from ..runner import Sample, Timer

BATCH = 2_000
COLUMNS = ENVELOPE_FIELDS  # noetl.event's columns mirror the envelope's fields
COPY_TYPES = ["text", "text", "text", "text", "text", "timestamptz", "jsonb", "text", "jsonb"]
COPY = f"COPY noetl.event ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


async def connect(url: str) -> AsyncConn:
    """A connection configured like the sink's (UTC, orjson for jsonb)."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **CONNECT_KWARGS)
    set_json_dumps(orjson.dumps, context=conn)
    return conn


async def copy_rows(conn: AsyncConn, rows: Sequence[tuple[Any, ...]], batch: int = BATCH) -> None:
    """Raw binary COPY of `rows` into noetl.event, one transaction per `batch` rows."""
    for start in range(0, len(rows), batch):
        async with conn.transaction():
            cur = conn.cursor()
            async with cur.copy(COPY) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows[start : start + batch]:
                    await copy.write_row(row)


async def timed_copy(url: str, events: Sequence[ExecutorEvent], connections: int = 1) -> Sample:
    """The COPY baseline: rows built and connections opened before the clock starts.

    With several connections, rows are split between them by execution (as the sink's lanes do)
    and the COPYs run concurrently.
    """
    rows = [copy_row(e) for e in events]
    parts: list[list[tuple[Any, ...]]] = [[] for _ in range(connections)]
    for row in rows:
        parts[hash(row[0]) % connections].append(row)
    conns = [await connect(url) for _ in range(connections)]
    try:
        cpu = time.process_time()
        with Timer() as t:
            await asyncio.gather(*(copy_rows(c, p) for c, p in zip(conns, parts, strict=True)))
        cpu = time.process_time() - cpu
    finally:
        for c in conns:
            await c.close()
    return Sample(len(rows), t.seconds, {"cpu_seconds": cpu})


def sink(url: str, **kwargs: Any) -> PostgresEventSink:
    return PostgresEventSink(url, batch_size=BATCH, application_name="projector-bench", **kwargs)


async def timed_emit_many(url: str, events: Sequence[ExecutorEvent]) -> Sample:
    """The sink's bulk path; the pool is opened before the clock starts. `cpu_seconds` is this
    process's CPU time while the clock ran (the client's share of the work)."""
    async with sink(url) as s:
        cpu = time.process_time()
        with Timer() as t:
            result = await s.emit_many(events)
        cpu = time.process_time() - cpu
    return Sample(
        len(events),
        t.seconds,
        {"inserted": result.inserted, "duplicates": result.duplicates, "cpu_seconds": cpu},
    )
