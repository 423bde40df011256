"""Scenario 4: the `eventsourcing` library's PostgreSQL recorder (optional bench dependency)
appending the same events in the same batch sizes, vs `emit_many`.

Each execution is an eventsourcing aggregate (originator id = the execution id as a UUID, version =
position in the execution), the topic is the event type and the state the envelope as JSON bytes
(prepared before the clock starts, like the sink's input). The recorder writes one batch per
`insert_events` call, one transaction each, into its own table in the same database.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from ..events import fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, Timer, measure_pair
from .common import BATCH, timed_emit_many

ID, KEY, TITLE = 4, "peer", "Peer: eventsourcing"


def _datastore(url: str) -> Any:
    from eventsourcing.postgres import PostgresDatastore

    parts = urlsplit(url)
    # The embedded server is reached through a Unix socket: its directory is the `host` parameter.
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    return PostgresDatastore(
        dbname=parts.path.lstrip("/"),
        host=socket_dir or parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        pool_size=1,
    )


async def run(ctx: Context, result: ScenarioResult) -> None:
    try:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.postgres import PostgresAggregateRecorder
    except ImportError:
        result.notes.append('skipped: eventsourcing is not installed (pip install -e ".[bench]")')
        return
    url = ctx.databases.fresh(KEY)
    n, rounds = ctx.sizes.peer_events, ctx.sizes.rounds
    result.params = {"events_per_round": n, "batch_size": BATCH, "rounds": rounds}
    datastore = _datastore(url)
    recorder = PostgresAggregateRecorder(datastore, events_table_name="bench_stored_events")
    recorder.create_table()

    async def candidate(_: int) -> Sample:
        return await timed_emit_many(url, fresh_events(n))

    async def baseline(_: int) -> Sample:
        versions: dict[str, int] = defaultdict(int)
        stored = []
        for e in fresh_events(n):
            versions[e.execution_id] += 1
            stored.append(
                StoredEvent(
                    originator_id=uuid.UUID(int=int(e.execution_id)),
                    originator_version=versions[e.execution_id],
                    topic=e.event_type,
                    state=orjson.dumps(e.model_dump(mode="json")),
                )
            )
        with Timer() as t:
            for start in range(0, len(stored), BATCH):
                recorder.insert_events(stored[start : start + BATCH])
        return Sample(len(stored), t.seconds)

    try:
        with ctx.progress(TITLE, 2 * rounds) as tick:
            pair = await measure_pair(
                ("emit_many", candidate), ("eventsourcing recorder", baseline), rounds, tick=tick
            )
    finally:
        datastore.close()
    result.add_series(pair.candidate, pair.baseline)
    result.metrics = [
        Metric.against("emit_many", pair.candidate.median_rate, "events/s", pair.ratio, None),
        Metric("eventsourcing insert_events (peer)", pair.baseline.median_rate, "events/s"),
    ]
    ctx.databases.drop(url)
