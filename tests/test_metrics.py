"""/metrics, /healthz and /readyz of `projector project` and `projector consume`, scraped over
127.0.0.1 from real processes on a real database (and real NATS for consume)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from projector import NatsEventSink, migrate
from projector.batch import BatchResult
from projector.bridge import BridgeStats
from projector.cli import run
from projector.health import HealthServer, Readiness, parse_address
from projector.metrics import ConsumeMetrics, ProjectMetrics, stream_timestamp
from tests.eventlog import insert_events
from tests.natsutil import Names, consume_argv, make_events, wait_for

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
BOUND = 60.0
_SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://127\.0\.0\.1:\d+)")


@contextlib.asynccontextmanager
async def served(argv: Sequence[str]) -> AsyncIterator[tuple[str, list[str]]]:
    """A process serving metrics on a free port: (its base URL, its stderr lines so far).

    The process is always gone when the block ends (SIGTERM first: a clean stop).
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lines: list[str] = []
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def drain() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            match = _SERVING.search(line)
            if match and not found.done():
                found.set_result(match.group(1))
        if not found.done():
            found.set_exception(AssertionError("exited without serving:\n" + "".join(lines)))

    reader = asyncio.create_task(drain())
    try:
        base = await asyncio.wait_for(found, BOUND)
        yield base, lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), BOUND)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await reader


async def get(url: str) -> tuple[int, str]:
    """Status and body of a GET (503 is an answer, not an error)."""

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return int(answer.status), answer.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


async def samples(base: str) -> dict[str, float]:
    """Every sample of /metrics by name (labels folded into the name: ``x{le="1.0"}``)."""
    status, body = await get(base + "/metrics")
    assert status == 200
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def project_argv(database_url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "projector",
        "--database-url",
        database_url,
        "project",
        "--metrics-address",
        "127.0.0.1:0",
        "--poll-interval",
        "0.2",
        *extra,
    ]


async def set_revision(aconn: Conn, revision: str) -> None:
    await aconn.execute("UPDATE alembic_version SET version_num = %s", (revision,))


async def readyz_after(base: str, want: int) -> tuple[int, str]:
    """/readyz once its answer is `want` (an answer is reused for up to a second)."""

    async def answered() -> bool:
        return (await get(base + "/readyz"))[0] == want

    await wait_for(answered, f"/readyz to answer {want}", limit=BOUND)
    return await get(base + "/readyz")


async def test_project_counts_what_it_projects_and_readyz_follows_lag_and_schema(
    database_url: str, aconn: Conn
) -> None:
    async with served(project_argv(database_url, "--ready-max-lag", "0.3")) as (base, _):
        assert await get(base + "/healthz") == (200, '{"alive":true}\n')
        status, body = await get(base + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        before = await samples(base)
        assert before["noetl_projector_events_projected_total"] == 0

        await insert_events(aconn, make_events(25, execution_id="m1"))

        async def projected() -> bool:
            return (await samples(base))["noetl_projector_events_projected_total"] == 25

        await wait_for(projected, "the 25 events to be counted", limit=BOUND)
        after = await samples(base)
        assert after["noetl_projector_projector_chunk_duration_seconds_count"] >= 1
        assert after["noetl_projector_checkpoint_position"] > 0

        # An open transaction holds the fence back: events committed after it wait, and the
        # lag grows past --ready-max-lag.
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute("SELECT pg_current_xact_id()")
            await insert_events(aconn, make_events(5, execution_id="m2"))

            async def lagging() -> bool:
                return (await get(base + "/readyz"))[0] == 503

            await wait_for(lagging, "/readyz to answer 503 for the lag", limit=BOUND)
            status, body = await get(base + "/readyz")
            doc = json.loads(body)
            assert status == 503 and doc["ready"] is False
            assert "lag" in doc["reason"] and doc["lag_events"] == 5
            assert doc["lag_seconds"] > doc["max_lag_seconds"] == 0.3
            assert (await samples(base))["noetl_projector_projection_lag_events"] == 5
            await holder.rollback()

        async def caught_up() -> bool:
            return (await get(base + "/readyz"))[0] == 200

        await wait_for(caught_up, "/readyz to answer 200 again", limit=BOUND)
        assert (await samples(base))["noetl_projector_events_projected_total"] == 30

        await set_revision(aconn, "0004")
        status, body = await readyz_after(base, 503)
        assert status == 503
        assert "revision 0004" in json.loads(body)["reason"] and "\n" not in body.rstrip("\n")
        await set_revision(aconn, migrate.head())
        assert (await readyz_after(base, 200))[0] == 200
        # migrated by a newer version (a rolling deploy): not "run `projector db upgrade`"
        await set_revision(aconn, "0099_future")
        status, body = await readyz_after(base, 503)
        reason = json.loads(body)["reason"]
        assert "'0099_future'" in reason and reason.endswith("upgrade noetl-projector"), reason
        await set_revision(aconn, migrate.head())
        assert (await readyz_after(base, 200))[0] == 200
        assert (await get(base + "/nope"))[0] == 404


async def test_project_json_logs_carry_the_start_and_progress_fields(
    database_url: str, aconn: Conn
) -> None:
    await insert_events(aconn, make_events(12, execution_id="j1"))
    argv = project_argv(database_url, "--log-interval", "0.2")
    argv[3:3] = ["--log-format", "json"]
    async with served(argv) as (_base, lines):

        async def progressed() -> bool:
            docs = [json.loads(line) for line in lines]
            return any(d.get("events_projected") == 12 and "lag_seconds" in d for d in docs)

        await wait_for(progressed, "a progress line with the events projected", limit=BOUND)
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    start = docs[0]
    assert start["logger"] == "projector.project" and start["level"] == "INFO"
    assert start["lag_events"] == 12 and "database" in start and "time" in start
    assert "postgres@" not in start["database"] and "127.0.0.1" in start["database"]
    assert any(d["logger"] == "projector.health" for d in docs)
    assert docs[-1]["message"] == "projector stopped after projecting 12 events"


@pytest.mark.nats
async def test_consume_counts_stored_and_rejected_and_readyz_follows_schema(
    nats_url: str, names: Names, database_url: str, aconn: Conn
) -> None:
    argv = consume_argv(database_url, nats_url, names, "--metrics-address", "127.0.0.1:0")
    async with served(argv) as (base, _):
        assert (await get(base + "/readyz"))[0] == 200
        async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as s:
            await s.emit_many(make_events(40, execution_id="c1"))
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().publish(f"{names.prefix}.bad", b"not json")
        finally:
            await nc.close()

        async def counted() -> bool:
            got = await samples(base)
            return (
                got["noetl_projector_events_stored_total"] == 40
                and got["noetl_projector_events_rejected_total"] == 1
            )

        await wait_for(counted, "40 stored and 1 rejected to be counted", limit=BOUND)
        got = await samples(base)
        assert got["noetl_projector_sink_batch_duration_seconds_count"] >= 1
        assert got["noetl_projector_events_duplicate_total"] == 0
        assert got["noetl_projector_events_conflict_total"] == 0
        assert got["noetl_projector_nats_redeliveries_total"] == 0
        assert got["noetl_projector_nats_pending"] == 0
        assert got["noetl_projector_nats_lag_seconds"] == 0

        await set_revision(aconn, "0003")
        status, body = await readyz_after(base, 503)
        assert status == 503 and "revision 0003" in json.loads(body)["reason"]
        await set_revision(aconn, migrate.head())
        assert (await readyz_after(base, 200))[0] == 200


def test_a_bad_address_is_a_usage_error(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--database-url", database_url, "project", "--metrics-address", "9464"]) == 2
    err = capsys.readouterr().err
    assert "is not HOST:PORT" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--database-url", database_url, "project", "--metrics-address", f"127.0.0.1:{port}"]
        assert run(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err


def test_addresses_parse_with_ipv6_and_port_zero() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address("0.0.0.0:9465") == ("0.0.0.0", 9465)
    for bad in ("9464", ":9464", "host:", "host:65536", "host:x"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            parse_address(bad)


async def test_two_processes_worth_of_registries_do_not_collide() -> None:
    one, two = ProjectMetrics(), ProjectMetrics()
    one.lag_events.set(7)
    server = HealthServer(one.registry, lambda: _ready())
    other = HealthServer(two.registry, lambda: _ready())
    await server.start("127.0.0.1", 0)
    await other.start("127.0.0.1", 0)
    try:
        assert (await samples(server.url))["noetl_projector_projection_lag_events"] == 7
        assert (await samples(other.url))["noetl_projector_projection_lag_events"] == 0
    finally:
        await server.close()
        await other.close()


async def _ready() -> Readiness:
    return Readiness(True)


async def test_a_burst_of_readyz_requests_runs_one_probe() -> None:
    """However many clients ask at once, one probe (one database connection) answers them."""
    probes = 0

    async def slow_probe() -> Readiness:
        nonlocal probes
        probes += 1
        await asyncio.sleep(0.2)
        return Readiness(False, "schema behind")

    server = HealthServer(ProjectMetrics().registry, slow_probe)
    await server.start("127.0.0.1", 0)
    try:
        answers = await asyncio.gather(*(get(server.url + "/readyz") for _ in range(30)))
    finally:
        await server.close()
    assert {status for status, _ in answers} == {503}
    assert probes == 1


def test_consume_lag_is_the_age_of_the_newest_message_stored_while_some_are_outstanding() -> None:
    stats = BridgeStats()
    now = [1_000.0]
    metrics = ConsumeMetrics(lambda: stats, clock=lambda: now[0])
    assert metrics.lag_seconds() == 0  # pending not known yet
    stats.pending = 3
    now[0] = 1_004.0
    assert metrics.lag_seconds() == 4.0  # nothing stored yet: since the start
    reply = b"$JS.ACK.S.d.1.10.10.%d.3" % int(1_002.5e9)
    metrics.on_batch(BatchResult(), 0.01, [(b"s", reply, b"{}")])
    assert metrics.newest == 1_002.5
    assert metrics.lag_seconds() == 1.5
    stats.pending = 0
    assert metrics.lag_seconds() == 0
    stats.ack_pending = 40  # delivered, not stored: a batch being written, or a stuck bridge
    now[0] = 1_010.0
    assert metrics.outstanding() == 40 and metrics.lag_seconds() == 7.5
    stats.ack_pending = 0
    assert metrics.lag_seconds() == 0


def test_stream_timestamps_come_from_both_reply_forms() -> None:
    assert stream_timestamp(b"$JS.ACK.S.d.1.10.10.1700000000000000000.3") == 1_700_000_000.0
    long_form = b"$JS.ACK.dom.hash.S.d.1.10.10.1700000000500000000.3.rnd"
    assert stream_timestamp(long_form) == 1_700_000_000.5
    assert stream_timestamp(b"_INBOX.x") is None


async def test_consume_is_not_ready_while_it_cannot_store(
    nats_url: str, names: Names, database_url: str, aconn: Conn
) -> None:
    """A bridge holding fetched messages it cannot store (the table locked) lags: /readyz 503,
    and 200 again once they are stored."""
    argv = consume_argv(
        database_url, nats_url, names, "--metrics-address", "127.0.0.1:0", "--ready-max-lag", "1"
    )
    async with served(argv) as (base, _):
        assert (await get(base + "/readyz"))[0] == 200
        async with await psycopg.AsyncConnection.connect(database_url) as locker:
            await locker.execute("LOCK TABLE noetl.event IN SHARE MODE")
            async with NatsEventSink(
                nats_url, stream=names.stream, subject_prefix=names.prefix
            ) as s:
                await s.emit_many(make_events(40, execution_id="stuck"))
            status, body = await readyz_after(base, 503)
            assert status == 503 and "lag" in json.loads(body)["reason"]
            await locker.rollback()

        async def stored() -> bool:
            cur = await aconn.execute("SELECT count(*) FROM noetl.event")
            return await cur.fetchone() == (40,)

        await wait_for(stored, "the 40 events to be stored", limit=BOUND)
        assert (await readyz_after(base, 200))[0] == 200
