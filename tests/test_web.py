"""`projector serve`: the JSON API has the shapes of the commands' --json, the pages show the
views and escape producer text, bad filters and unknown ids are answered clearly."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.sql
import pytest

from projector import cli
from projector.envelope import ExecutorEvent
from tests.eventlog import insert_events, trace_events
from tests.test_timeline import sample_events
from tests.webserver import get, get_json, serving

Conn = psycopg.AsyncConnection[Any]


def cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    code = cli.run(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


async def test_the_api_has_the_shapes_of_the_commands(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await insert_events(aconn, trace_events("noetl_cli_subscribe_fail.ndjson"))
    for name in ("retried", "failed"):
        await insert_events(aconn, sample_events(name))
    db = ["--database-url", database_url]
    with serving(database_url) as base:
        for path, argv in [
            ("/api/executions?limit=50", ["executions", "--json", "--limit", "50"]),
            ("/api/executions?status=failed", ["executions", "--json", "--status", "failed"]),
            # an alias, and blank (no filter), mean the same in both
            ("/api/executions?status=ok", ["executions", "--json", "--status", "ok"]),
            ("/api/executions?status=", ["executions", "--json", "--status", ""]),
            ("/api/executions/386072706470612992", ["status", "386072706470612992", "--json"]),
            ("/api/executions/386072706458030080", ["status", "386072706458030080", "--json"]),
            ("/api/executions/demo-failed/history", ["history", "demo-failed", "--json"]),
            (
                "/api/executions/demo-failed/history?step=copy_users",
                ["history", "demo-failed", "--json", "--step", "copy_users"],
            ),
        ]:
            expected = await asyncio.to_thread(cli_json, [*db, *argv], capsys)
            assert await asyncio.to_thread(get_json, base + path) == expected, path
        tl = await asyncio.to_thread(
            cli_json, [*db, "timeline", "7288213371283718001", "--json"], capsys
        )
        api = await asyncio.to_thread(
            get_json, base + "/api/executions/7288213371283718001/timeline"
        )
        assert {k: v for k, v in api.items() if k != "now"} == {
            k: v for k, v in tl.items() if k != "now"
        }
        status, body = await asyncio.to_thread(get, base + "/api/executions/nope")
        assert status == 404 and json.loads(body) == {
            "error": "no events are stored for execution 'nope'"
        }
        status, body = await asyncio.to_thread(get, base + "/api/executions?stalled=soon")
        assert status == 400 and json.loads(body)["error"] == (
            "stalled: 'soon' is not a duration (examples: 90s, 10m, 2h, 1d, 1h30m)"
        )
        status, body = await asyncio.to_thread(get, base + "/api/executions?stalled=0s")
        assert status == 400 and json.loads(body)["error"] == (
            "stalled: the duration must be more than 0"
        )
        for limit in ("0", "1001", "ten"):
            status, body = await asyncio.to_thread(get, base + f"/api/executions?limit={limit}")
            assert status == 400 and json.loads(body)["error"] == (
                "limit: must be a whole number from 1 to 1000"
            )
        status, body = await asyncio.to_thread(get, base + "/api/executions?limit=1000")
        assert status == 200
        # the words `projector executions --status` takes: canonical ones, any case, and aliases
        status, body = await asyncio.to_thread(get, base + "/api/executions?status=bogus")
        assert status == 400 and json.loads(body)["error"] == (
            "status: 'bogus' is not a status: one of PENDING, RUNNING, COMPLETED, FAILED, "
            "CANCELLED, SKIPPED"
        )
        by_word = {}
        for word in ("COMPLETED", "completed", "ok", "success"):
            status, body = await asyncio.to_thread(get, base + f"/api/executions?status={word}")
            assert status == 200, word
            by_word[word] = json.loads(body)
        assert by_word["COMPLETED"] and all(v == by_word["COMPLETED"] for v in by_word.values())


async def test_the_pages(aconn: Conn, database_url: str) -> None:
    await insert_events(aconn, trace_events("noetl_cli_subscribe_fail.ndjson"))
    await insert_events(aconn, trace_events("pft_stall_606790043104968712.ndjson"))
    for name in ("success", "retried", "failed"):
        await insert_events(aconn, sample_events(name))
    with serving(database_url) as base:
        status, page = await asyncio.to_thread(get, base + "/")
        assert status == 200
        order = [page.index(f'data-execution="{x}"') for x in ("386072706483195904", "demo-failed")]
        assert order == sorted(order)  # newest first
        assert 'data-id="demo-failed"' in page  # the copy button
        status, page = await asyncio.to_thread(get, base + "/?status=FAILED")
        assert "demo-failed" in page and "7288213371283718001" not in page
        status, page = await asyncio.to_thread(get, base + "/?status=error")  # an alias
        assert "demo-failed" in page and "7288213371283718001" not in page
        assert '<option value="FAILED" selected>' in page  # the form shows what it means
        status, page = await asyncio.to_thread(get, base + "/?stalled=10m")
        assert "606790043104968712" in page and "demo-failed" not in page
        status, page = await asyncio.to_thread(
            get, base + "/?since=2026-01-21T00:00&until=2026-01-22"
        )
        assert "demo-failed" in page and "7288213371283718001" not in page
        status, page = await asyncio.to_thread(get, base + "/?since=yesterday")
        assert status == 400 and "since: &#39;yesterday&#39; is not a time" in page

        status, page = await asyncio.to_thread(get, base + "/executions/606790043104968712")
        assert status == 200
        assert '<svg xmlns="http://www.w3.org/2000/svg"' in page and "100 at once" in page
        assert 'id="idle"' in page and 'data-terminal="false"' in page
        assert page.count('<tr class="status-') > 1800  # the steps and the events
        status, page = await asyncio.to_thread(
            get, base + "/executions/606790043104968712?step=start&type=step.&status=completed"
        )
        assert "1 of 1852 events" in page and "step.exit" in page
        status, page = await asyncio.to_thread(
            get,
            base + "/executions/606790043104968712?status=compleet",  # a typo, not RUNNING
        )
        assert status == 400 and "0 of 1852 events" in page
        assert "status: &#39;compleet&#39; is not a status" in page
        status, page = await asyncio.to_thread(get, base + "/executions/386072706458030080")
        assert page.count("Command failed with exit code: Some(3)") == 2
        status, svg = await asyncio.to_thread(
            get, base + "/executions/7288213371283718001/timeline.svg"
        )
        assert status == 200 and svg.startswith("<svg") and 'class="bar failed"' in svg
        status, page = await asyncio.to_thread(get, base + "/executions/nope")
        assert status == 404 and "no events are stored" in page


async def test_producer_text_is_escaped(aconn: Conn, database_url: str) -> None:
    hostile = 'a/<img src=x onerror="alert(1)">\x1b[2J'
    await insert_events(
        aconn,
        [
            ExecutorEvent(
                execution_id=hostile,
                event_id="h1",
                event_type="step.exit",
                step=hostile,
                status="FAILED",
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                context={"error": hostile},
            )
        ],
    )
    with serving(database_url) as base:
        quoted = urllib.parse.quote(hostile, safe="")
        status, page = await asyncio.to_thread(get, base + "/")
        assert f'href="/executions/{quoted}"' in page
        api = await asyncio.to_thread(get_json, f"{base}/api/executions/{quoted}")
        assert api["execution_id"] == hostile and api["steps"][0]["step"] == hostile
        for path in ("/", f"/executions/{quoted}", f"/executions/{quoted}/live"):
            status, page = await asyncio.to_thread(get, base + path)
            assert status == 200, path
            assert "<img" not in page and "\x1b" not in page
            assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;\\u001b[2J" in page


async def test_it_serves_as_a_noetl_reader_login(aconn: Conn, database_url: str) -> None:
    """What README "Roles" recommends works: every page and API path as a reader."""
    await insert_events(aconn, sample_events("retried"))
    role = f"projector_web_reader_{os.getpid()}"
    await aconn.execute(
        psycopg.sql.SQL("CREATE ROLE {} LOGIN IN ROLE noetl_reader").format(
            psycopg.sql.Identifier(role)
        )
    )
    try:
        parts = psycopg.conninfo.conninfo_to_dict(database_url)
        host = str(parts.get("host", "127.0.0.1"))
        port = parts.get("port", 5432)
        url = (
            f"postgresql://{role}@/{parts['dbname']}?host={host}&port={port}"
            if host.startswith("/")
            else f"postgresql://{role}@{host}:{port}/{parts['dbname']}"
        )
        with serving(url) as base:
            for path in (
                "/",
                "/executions/7288213371283718001",
                "/executions/7288213371283718001/live",
                "/api/executions/7288213371283718001",
                "/api/executions/7288213371283718001/timeline",
            ):
                status, body = await asyncio.to_thread(get, base + path)
                assert status == 200, (path, body[:500])
    finally:
        await aconn.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(role)))


def _status_with_host(base: str, host: str) -> int:
    import http.client

    netloc = urllib.parse.urlsplit(base).netloc
    conn = http.client.HTTPConnection(netloc, timeout=30)
    try:
        conn.request("GET", "/api/executions?limit=1", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


async def test_a_page_that_rebinds_its_name_to_loopback_is_refused(
    aconn: Conn, database_url: str
) -> None:
    """DNS rebinding: a browser sends the attacker's name as Host; loopback names pass."""
    await insert_events(aconn, sample_events("success"))
    with serving(database_url) as base:
        port = urllib.parse.urlsplit(base).port
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", ""):
            assert await asyncio.to_thread(_status_with_host, base, host) == 400, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
            assert await asyncio.to_thread(_status_with_host, base, host) == 200, host


def test_the_allowed_hosts() -> None:
    from projector.hosts import allowed_hosts, host_name

    loopback = ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("127.0.0.1") == loopback
    assert allowed_hosts("::1") == loopback
    assert allowed_hosts("127.0.0.2", ["Box.Local."]) == [*loopback, "127.0.0.2", "box.local"]
    # A wildcard bind is reachable on loopback too: no name is answered unless given.
    assert allowed_hosts("0.0.0.0") == loopback
    assert allowed_hosts("::", ["*.corp.example"]) == [*loopback, "*.corp.example"]
    assert allowed_hosts("192.0.2.1", ["::1", "*"]) == [*loopback, "192.0.2.1", "*"]
    assert host_name("0:0:0:0:0:0:0:1") == "[::1]"
    for bad in ("box:8800", "box*", "a.*.b", "", "http://box", "u@box"):
        with pytest.raises(ValueError):
            host_name(bad)


def test_a_bad_allowed_host_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["serve", "--allowed-host", "box:8800"]) == 2
    err = capsys.readouterr().err
    assert "without scheme, port or path" in err and "Traceback" not in err


def test_an_id_is_one_path_segment_that_reads_back_as_itself() -> None:
    from projector.web import id_from_segment, id_segment

    for execution_id in ["7288", "a/b", "x/live", "x/timeline.svg", ".", "..", "...", "~", "~/.."]:
        segment = id_segment(execution_id)
        assert "/" not in segment and segment not in (".", "..")
        assert urllib.parse.unquote(segment) not in (".", "..")
        assert id_from_segment(segment) == execution_id
    assert id_segment("7288213371283718001") == "7288213371283718001"
    assert id_segment("..") == "~.." and id_segment("~x") == "~~x"


async def test_ids_that_look_like_paths_open_their_own_pages(
    aconn: Conn, database_url: str
) -> None:
    """An id ending in /live or /history, or made of dots, is linked and served as itself."""
    from projector.web import id_segment

    ids = ["run/live", "run", "run/history", "..", "."]
    await insert_events(
        aconn,
        [
            ExecutorEvent(
                execution_id=x,
                event_id="1",
                event_type="step.exit",
                step=f"step of {x}",
                status="COMPLETED",
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
            for x in ids
        ],
    )
    with serving(database_url) as base:
        _, listing = await asyncio.to_thread(get, base + "/")
        for x in ids:
            segment = id_segment(x)
            assert f'href="/executions/{segment}"' in listing, x
            api = await asyncio.to_thread(get_json, f"{base}/api/executions/{segment}")
            assert api["execution_id"] == x and api["steps"][0]["step"] == f"step of {x}"
            history = await asyncio.to_thread(get_json, f"{base}/api/executions/{segment}/history")
            assert [e["step"] for e in history] == [f"step of {x}"]
            for suffix in ("", "/live", "/timeline.svg"):
                status, page = await asyncio.to_thread(get, f"{base}/executions/{segment}{suffix}")
                assert status == 200 and f"step of {x}" in page, (x, suffix)
        status, body = await asyncio.to_thread(get, base + "/api/executions/run/nonsense")
        assert status == 404 and "%2F" in json.loads(body)["error"]
        # Routed on the decoded path, but the raw one is not under /api/executions/.
        status, body = await asyncio.to_thread(get, base + "/api/executions%2Frun")
        assert status == 404


async def test_web_sessions_are_read_only_whatever_the_role(database_url: str) -> None:
    # The URL here names the superuser: the database itself refuses the write.
    from projector.web import SESSION_KWARGS

    async with await psycopg.AsyncConnection.connect(database_url, **SESSION_KWARGS) as conn:
        cur = await conn.execute("SELECT count(*) FROM noetl.event")
        assert await cur.fetchone() == (0,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await conn.execute("DELETE FROM noetl.event")
