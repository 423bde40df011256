"""No password or token of a database or NATS URL appears in any message or log line.

Against servers that check credentials: a PostgreSQL of the suite's own with scram
authentication, `nats-server --user/--pass` and `nats-server --auth <token>`. A wrong password and
an unreachable server (a closed loopback port), through the command line (stdout, stderr and its
log lines with ``-v``) and through the Python API (exception text and captured log records).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator

import pytest

from projector import NatsEventSink, PostgresEventSink, ProjectorError
from projector.bridge import Bridge, BridgeConfig
from projector.jetstream import connect
from projector.projection import Projector
from tests.faults.harness import consume_process, run_cli, stored_count, workload
from tests.faults.servers import NatsServer, PgServer, free_port, nats_server, pg_server
from tests.natsutil import unique_names, wait_for

pytestmark = pytest.mark.slow

PG_PASSWORD = "pg-Secret-4711"
NATS_PASSWORD = "nats-Secret-0815"
TOKEN = "tokenSecret9000"
WRONG = "wrong-Guess-1234"
SECRETS = (PG_PASSWORD, NATS_PASSWORD, TOKEN, WRONG)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked: {text}"


@pytest.fixture(scope="module")
def auth_pg() -> Iterator[PgServer]:
    with pg_server(password=PG_PASSWORD) as server:
        yield server


@pytest.fixture
def auth_nats() -> Iterator[NatsServer]:
    with nats_server("--user", "alice", "--pass", NATS_PASSWORD) as server:
        yield server


def pg_urls(server: PgServer) -> dict[str, str]:
    """The failing PostgreSQL URLs, by what is wrong with them."""
    return {
        "wrong password": server.url(password=WRONG),
        "unreachable": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{free_port()}/postgres",
        # Messages that quote the URL, or a piece of it:
        "bad scheme": f"postgres+asyncpg://postgres:{PG_PASSWORD}@127.0.0.1:{server.port}/x",
        "bad percent-encoding": f"postgresql://postgres:{WRONG}%zz@127.0.0.1:{server.port}/x",
    }


async def test_postgres_credentials_stay_out_of_the_command_line(auth_pg: PgServer) -> None:
    commands = [["-v", "status", "x"], ["-v", "db", "upgrade"], ["-v", "project", "--once"]]
    runs = [
        (what, command, run_cli(url, *command))
        for what, url in pg_urls(auth_pg).items()
        for command in commands
    ]
    for (what, command, _), (code, out, err) in zip(
        runs, await asyncio.gather(*(r for _, _, r in runs)), strict=True
    ):
        # A malformed URL is a usage error (2); the server refusing or missing is 3.
        assert code == (2 if what.startswith("bad") else 3), (what, command, err)
        assert_no_secret(out, err)
    # The URL shown in the configuration error keeps everything but the password.
    code, _, err = await run_cli(pg_urls(auth_pg)["bad scheme"], "status", "x")
    assert f"'postgres+asyncpg://postgres:***@127.0.0.1:{auth_pg.port}/x'" in err


async def test_postgres_credentials_stay_out_of_the_sinks_log(auth_pg: PgServer) -> None:
    # The sink checks the server once before its pool starts (its verdict, with the server's
    # reason, is the error), as under `ingest` and `consume`; with -v every log line is shown.
    urls = [pg_urls(auth_pg)[what] for what in ("wrong password", "unreachable")]
    results = await asyncio.gather(*(run_cli(u, "-v", "ingest", "-") for u in urls))
    for (code, out, err), reason in zip(
        results, ("password authentication failed", "cannot connect"), strict=True
    ):
        assert code == 3, err
        assert reason in err
        assert_no_secret(out, err)


async def test_postgres_credentials_stay_out_of_the_python_api(
    auth_pg: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for what in ("wrong password", "unreachable"):
        url = pg_urls(auth_pg)[what]
        with pytest.raises(ProjectorError) as sink_error:
            async with PostgresEventSink(url, connect_timeout=2):
                pass
        with pytest.raises(ProjectorError) as projector_error:
            await Projector(url).once()
        assert_no_secret(str(sink_error.value), str(projector_error.value))
        if what == "wrong password":  # reported at once, with the server's reason
            assert "password authentication failed" in str(sink_error.value)
    assert_no_secret(caplog.text)


async def test_the_right_password_works(auth_pg: PgServer) -> None:
    """The server really checks passwords (so the tests above test a refusal)."""
    code, out, err = await run_cli(auth_pg.url(), "db", "upgrade")
    assert code == 0, err
    assert_no_secret(out, err)


async def test_nats_credentials_stay_out_of_the_command_line(auth_nats: NatsServer) -> None:
    with nats_server("--auth", TOKEN) as token_server:
        urls = {
            "wrong password": f"nats://alice:{WRONG}@127.0.0.1:{auth_nats.port}",
            "unreachable": f"nats://alice:{NATS_PASSWORD}@127.0.0.1:{free_port()}",
            "wrong token": f"nats://{WRONG}@127.0.0.1:{token_server.port}",
            "token, unreachable": f"nats://{TOKEN}@127.0.0.1:{free_port()}",
        }
        results = await asyncio.gather(
            *(
                run_cli("postgresql://unused", "-v", "nats", "init", "--nats-url", u)
                for u in urls.values()
            )
        )
    for what, (code, out, err) in zip(urls, results, strict=True):
        assert code == 3, (what, err)
        assert "could not connect to NATS at nats://" in err
        assert "***@127.0.0.1:" in err  # the server is named, its credentials are not
        assert_no_secret(out, err)


async def test_nats_credentials_stay_out_of_reconnect_warnings(
    auth_nats: NatsServer, fault_db: str
) -> None:
    url = f"nats://alice:{NATS_PASSWORD}@127.0.0.1:{auth_nats.port}"
    names = unique_names()
    first, second = workload(5, "a"), workload(5, "b")
    async with NatsEventSink(
        url, stream=names.stream, subject_prefix=names.prefix, create_stream=True
    ) as sink:
        await sink.emit_many(first)
    async with consume_process(fault_db, url, names, "--log-interval", "0.5") as consume:

        async def stored(n: int) -> bool:
            return await stored_count(fault_db) >= n

        await wait_for(lambda: stored(len(first)), "the bridge to store the first events")
        await asyncio.to_thread(auth_nats.kill9)
        await asyncio.sleep(1.5)  # reconnect attempts fail, and are logged, meanwhile
        await asyncio.to_thread(auth_nats.start)
        async with NatsEventSink(url, stream=names.stream, subject_prefix=names.prefix) as sink:
            await sink.emit_many(second)
        await wait_for(lambda: stored(len(first) + len(second)), "the bridge to reconnect")
        consume.proc.send_signal(signal.SIGTERM)
        assert await consume.finish() == 0, consume.err
    assert f"NATS connection to nats://alice:***@127.0.0.1:{auth_nats.port} lost" in consume.err
    assert_no_secret(consume.out, consume.err)


async def test_nats_credentials_stay_out_of_the_python_api(
    auth_nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"nats://alice:{WRONG}@127.0.0.1:{auth_nats.port}"
    unreachable = f"nats://alice:{NATS_PASSWORD}@127.0.0.1:{free_port()}"
    for url in (wrong, unreachable):
        with pytest.raises(ProjectorError) as sink_error:
            async with NatsEventSink(url, timeout=2):
                pass
        with pytest.raises(ProjectorError) as bridge_error:
            await Bridge("postgresql://unused", BridgeConfig(nats_url=url)).run()
        assert "***@127.0.0.1" in str(sink_error.value)
        assert_no_secret(str(sink_error.value), str(bridge_error.value))
    assert "Authorization Violation" in caplog.text  # nats-py's errors were logged
    # A connection that worked, then lost its server: the reconnect warnings.
    right = f"nats://alice:{NATS_PASSWORD}@127.0.0.1:{auth_nats.port}"
    nc = await connect(right, name="test-credentials")
    try:
        await asyncio.to_thread(auth_nats.kill9)
        await asyncio.sleep(1.0)
    finally:
        await nc.close()
    assert f"NATS connection to nats://alice:***@127.0.0.1:{auth_nats.port} lost" in caplog.text
    assert_no_secret(caplog.text)
