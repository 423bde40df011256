"""`projector consume` and `projector nats init`: defaults from the settings, errors as messages."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import nats
import pytest

from projector.cli import ExitCode, build_parser, run
from tests.natsutil import _free_port

pytestmark = pytest.mark.nats


def test_nats_options_default_to_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("URL", "STREAM", "SUBJECT_PREFIX", "DURABLE"):
        monkeypatch.delenv(f"PROJECTOR_NATS_{name}", raising=False)
    args = build_parser().parse_args(["consume"])
    assert (args.nats_url, args.stream, args.subject_prefix, args.durable) == (
        "nats://127.0.0.1:4222",
        "NOETL_EVENTS",
        "noetl.events",
        "projector",
    )
    monkeypatch.setenv("PROJECTOR_NATS_URL", "nats://nats.example:4333")
    monkeypatch.setenv("PROJECTOR_NATS_STREAM", "S_ENV")
    monkeypatch.setenv("PROJECTOR_NATS_SUBJECT_PREFIX", "env.events")
    monkeypatch.setenv("PROJECTOR_NATS_DURABLE", "d_env")
    parser = build_parser()
    args = parser.parse_args(["consume"])
    assert (args.nats_url, args.stream, args.subject_prefix, args.durable) == (
        "nats://nats.example:4333",
        "S_ENV",
        "env.events",
        "d_env",
    )
    init = parser.parse_args(["nats", "init"])
    assert (init.nats_url, init.stream, init.subject_prefix) == (
        args.nats_url,
        args.stream,
        args.subject_prefix,
    )
    # The command line wins over the environment.
    given = parser.parse_args(["consume", "--stream", "S_ARG", "--durable", "d_arg"])
    assert (given.stream, given.durable) == ("S_ARG", "d_arg")


async def _delete_stream(nats_url: str, stream: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def _stream_config(url: str, stream: str) -> Any:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).config
    finally:
        await nc.close()


def test_nats_init_creates_the_stream_the_environment_names(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suffix = uuid.uuid4().hex[:10]
    stream, prefix = f"T_cli_{suffix}", f"cli{suffix}.ev"
    monkeypatch.setenv("PROJECTOR_NATS_URL", nats_url)
    monkeypatch.setenv("PROJECTOR_NATS_STREAM", stream)
    monkeypatch.setenv("PROJECTOR_NATS_SUBJECT_PREFIX", prefix)
    try:
        assert run(["nats", "init", "--json"]) == ExitCode.OK
        assert json.loads(capsys.readouterr().out) == {
            "stream": stream,
            "subjects": f"{prefix}.>",
            "created": True,
            "differences": [],
        }
        assert run(["nats", "init"]) == ExitCode.OK
        assert "already exists" in capsys.readouterr().out
        # Asked for other limits, it says what differs and leaves the stream alone (exit 1).
        assert run(["nats", "init", "--max-age", "86400"]) == 1
        out = capsys.readouterr().out
        assert "already exists (left unchanged)" in out
        assert "differs: max_age: the stream has 604800 s, `nats init` would create 86400 s" in out
        info = asyncio.run(_stream_config(nats_url, stream))
        assert info.max_age == 604800 and str(info.retention) in (
            "limits",
            "RetentionPolicy.LIMITS",
        )
    finally:
        asyncio.run(_delete_stream(nats_url, stream))


@pytest.mark.parametrize(
    "argv",
    [
        ["nats", "init"],
        ["consume", "--until-empty"],
    ],
    ids=["nats init", "consume"],
)
def test_unreachable_nats_is_an_error_message_not_a_traceback(
    argv: list[str],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line with the reason of the last try (nats-py's own last words, "no servers
    available for connection", say nothing); the tries before it are progress, not warnings
    (they were three WARNING lines above the error)."""
    caplog.set_level(logging.INFO, logger="projector.jetstream")
    url = f"nats://127.0.0.1:{_free_port()}"
    code = run(["--database-url", database_url, *argv, "--nats-url", url])
    err = capsys.readouterr().err
    assert code == ExitCode.ENVIRONMENT
    port = url.rsplit(":", 1)[1]
    assert err == (
        f"projector: error: could not connect to NATS at {url}: [Errno 111] Connect call failed "
        f"('127.0.0.1', {port}); is nats-server running (with -js) and is --nats-url / "
        "PROJECTOR_NATS_URL right?\n"
    )
    tries = [r for r in caplog.records if r.name == "projector.jetstream"]
    assert len(tries) == 3 and {r.levelname for r in tries} == {"INFO"}, tries


def test_consume_without_a_stream_says_how_to_create_it(
    nats_url: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = f"T_none_{uuid.uuid4().hex[:10]}"
    argv = ["--database-url", database_url, "consume", "--nats-url", nats_url]
    code = run([*argv, "--stream", stream, "--until-empty"])
    err = capsys.readouterr().err
    assert code == ExitCode.ENVIRONMENT
    assert f"stream {stream!r} does not exist" in err and "projector nats init" in err
    code = run([*argv, "--subject-prefix", "noetl.*", "--until-empty"])
    assert code == ExitCode.USAGE  # a bad option value
    assert "subject prefix 'noetl.*'" in capsys.readouterr().err


async def test_a_drain_that_found_a_conflict_exits_1(
    nats_url: str, names: Any, database_url: str
) -> None:
    """`consume --until-empty`: an event id reused with other content is a conflict (logged, the
    stored row kept, nothing rejected): exit 1, as `ingest` does; a clean drain exits 0."""
    import subprocess

    import psycopg

    from projector import NatsEventSink
    from tests.natsutil import consume_argv, make_events

    first = make_events(2)
    reused = first[0].model_copy(update={"context": {"other": True}})
    argv = consume_argv(database_url, nats_url, names, "--until-empty", "--json")
    for batch, expected in (([*first], 0), ([reused], 1)):
        async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as s:
            await s.emit_many(batch)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert proc.returncode == expected, err.decode()
        assert summary["rejected"] == 0 and summary["conflicts"] == expected
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT context FROM noetl.event WHERE event_id = 'e0'")
        assert await cur.fetchall() == [(first[0].context,)]  # the stored row kept


def test_a_server_without_a_scheme_never_shows_its_credentials(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`user:password@host:port` and `token@host:port` without `nats://` (nats-py reads them as
    nats://): the error names the server with its credentials masked."""
    for url in (f"u:s3cr3tpw@127.0.0.1:{_free_port()}", f"s3cr3tpw@127.0.0.1:{_free_port()}"):
        code = run(["nats", "init", "--nats-url", url])
        err = capsys.readouterr().err
        assert code == ExitCode.ENVIRONMENT, err
        assert "s3cr3tpw" not in err and "could not connect to NATS at nats://" in err, err
