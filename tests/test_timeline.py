"""`projector timeline`: the model against the views, the real traces, every renderer, escaping."""

from __future__ import annotations

import asyncio
import json
import os
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from projector import cli, timeline, timeline_render
from projector.envelope import ExecutorEvent
from tests.eventlog import insert_events, trace_events

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "projector" / "samples"
DOCS_SVG = ROOT / "docs" / "timeline.svg"
#: The execution docs/timeline.svg shows: the retried sample (failed attempt, wait, retry).
DOCS_EXECUTION = "7288213371283718001"
TRACE_FILES = (
    "http_to_postgres_simple.ndjson",
    "issue305_task_sequence_active.ndjson",
    "issue451_loop_midway.ndjson",
    "noetl_cli_subscribe_fail.ndjson",
    "noetl_cli_subscribe_ok.ndjson",
    "pft_stall_606790043104968712.ndjson",
)
Conn = psycopg.AsyncConnection[Any]


def sample_events(name: str) -> list[ExecutorEvent]:
    text = (SAMPLES / f"{name}.ndjson").read_text(encoding="utf-8")
    return [ExecutorEvent.parse_json(line) for line in text.splitlines() if line.strip()]


def plain(tl: timeline.Timeline, width: int = 120) -> list[str]:
    return [line.plain for line in timeline_render.terminal_lines(tl, width)]


async def test_every_trace_matches_the_views(aconn: Conn) -> None:
    """The bars are the rules' units: per step the iterations and attempts they give are the
    view's, on every real trace."""
    for name in TRACE_FILES:
        await insert_events(aconn, trace_events(name))
    async with aconn.cursor() as cur:
        await cur.execute("SELECT DISTINCT execution_id FROM noetl.event")
        ids = [r[0] for r in await cur.fetchall()]
    assert len(ids) >= 10
    for execution_id in ids:
        tl = await timeline.load(aconn, execution_id)
        for row in tl.steps:
            assert (row.iterations, row.attempts) == (row.step.iterations, row.step.attempts)
            assert sum(1 for b in row.bars if b.finished_at is None) >= (
                row.step.iterations_running
            )
        ET.fromstring(timeline_render.svg(tl))  # well-formed


async def test_the_stalled_run_shows_its_parallel_iterations_and_idle_time(aconn: Conn) -> None:
    await insert_events(aconn, trace_events("pft_stall_606790043104968712.ndjson"))
    tl = await timeline.load(aconn, "606790043104968712")
    rows = {r.step.step: r for r in tl.steps}
    fetch = rows["fetch_assessments"]
    assert fetch.peak == 100 and len(fetch.bars) == 100
    assert {b.status for b in fetch.bars} == {"COMPLETED"}
    assert rows["load_patients_for_assessments"].peak == 1
    assert len(rows["load_patients_for_assessments"].bars) == 2
    last_progress = datetime(2026, 4, 17, 5, 3, 35, 976351, tzinfo=UTC)
    assert tl.stall == (last_progress, tl.now)
    assert tl.idle == tl.now - last_progress
    assert tl.scale.broken  # months of idle time after seconds of work: compressed
    idle = timeline.format_duration(tl.now - last_progress)
    lines = plain(tl)
    assert any("100 at once" in line for line in lines)
    assert any(f"idle {idle} since last progress" in line for line in lines)
    assert any("░" in line and "//" in line for line in lines)  # the shaded, broken axis
    svg = timeline_render.svg(tl)
    assert "100 at once" in svg and 'class="stall"' in svg and f"idle {idle}" in svg
    doc = tl.jsonable()
    assert doc["idle_seconds"] == pytest.approx((tl.now - last_progress).total_seconds())
    assert next(s for s in doc["steps"] if s["step"] == "fetch_assessments")["peak"] == 100


async def test_the_cli_trail_shows_the_failed_childs_error(aconn: Conn) -> None:
    await insert_events(aconn, trace_events("noetl_cli_subscribe_fail.ndjson"))
    parent = await timeline.load(aconn, "386072706458030080")
    assert [c.status for c in parent.children] == ["FAILED", "FAILED"]
    error = "Command failed with exit code: Some(3)"
    assert sum(error in line for line in plain(parent)) == 2
    assert timeline_render.html(parent).count(error) == 2
    child = await timeline.load(aconn, "386072706470612992")
    assert any(f"error {error}" in line for line in plain(child))
    assert f"error: {error}" in timeline_render.svg(child)


async def test_a_retry_is_a_failed_bar_a_gap_and_a_second_attempt(aconn: Conn) -> None:
    await insert_events(aconn, sample_events("retried"))
    tl = await timeline.load(aconn, DOCS_EXECUTION)
    fetch = next(r for r in tl.steps if r.step.step == "fetch_rates")
    assert [(b.iteration, b.attempt, b.status) for b in fetch.bars] == [
        (1, 1, "FAILED"),
        (1, 2, "COMPLETED"),
    ]
    assert fetch.bars[0].error is not None
    [gap] = fetch.gaps
    assert (gap.start, gap.end) == (fetch.bars[0].finished_at, fetch.bars[1].started_at)
    assert tl.stall is None and not tl.scale.broken
    assert {m.event_type for m in tl.markers} >= {"playbook.initialized"}
    line = next(line for line in plain(tl) if line.startswith("fetch_rates"))
    assert "▓" in line and "╌" in line and "█" in line
    assert line.index("▓") < line.index("╌") < line.index("█")
    svg = timeline_render.svg(tl)
    assert 'class="bar failed"' in svg and 'class="gap"' in svg


@pytest.mark.parametrize("width", [20, 33, 60, 200])
async def test_any_width(aconn: Conn, width: int) -> None:
    await insert_events(aconn, trace_events("pft_stall_606790043104968712.ndjson"))
    tl = await timeline.load(aconn, "606790043104968712")
    head = len(timeline_render.header_lines(tl))
    lines = timeline_render.terminal_lines(tl, width)
    chart = lines[head:]
    assert all(line.cell_len <= width for line in chart)
    assert any(line.plain.strip().startswith("+0s") for line in chart)
    assert sum("fetch_as" in line.plain for line in chart) == 1


async def test_producer_text_is_escaped_everywhere(aconn: Conn) -> None:
    hostile = 'x<script>alert(1)</script>&"\x1b]0;owned\x07'
    events = [
        ExecutorEvent(
            execution_id=hostile,
            event_id=f"e{i}",
            event_type=t,
            step=hostile,
            status=s,
            created_at=datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC),
            context={"error": hostile} if s == "FAILED" else {},
        )
        for i, (t, s) in enumerate([("step.enter", "RUNNING"), ("step.exit", "FAILED")])
    ]
    await insert_events(aconn, events)
    tl = await timeline.load(aconn, hostile)
    for doc in (timeline_render.svg(tl), timeline_render.html(tl)):
        assert "<script" not in doc and "\x1b" not in doc and "\x07" not in doc
        assert "&lt;script&gt;" in doc
    ET.fromstring(timeline_render.svg(tl))
    for line in timeline_render.terminal_lines(tl, 100):
        assert "\x1b" not in line.plain and "\x07" not in line.plain


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run(argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_the_command_writes_every_format(
    aconn: Conn, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await insert_events(aconn, sample_events("retried"))
    base = ["--database-url", database_url, "timeline", DOCS_EXECUTION]

    def call(*extra: str) -> tuple[int, str, str]:
        return run_cli([*base, *extra], capsys)

    code, out, _ = await asyncio.to_thread(call)
    assert code == 0 and "fetch_rates" in out and "▓" in out
    code, out, _ = await asyncio.to_thread(call, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["execution"]["execution_id"] == DOCS_EXECUTION
    assert [b["status"] for b in doc["steps"][1]["bars"]] == ["FAILED", "COMPLETED"]
    for flag, name in (("--svg", "t.svg"), ("--html", "t.html"), ("--png", "t.png")):
        code, _, err = await asyncio.to_thread(call, flag, str(tmp_path / name))
        assert code == 0, err
    ET.parse(tmp_path / "t.svg")
    assert (
        "<svg" in (tmp_path / "t.html").read_text()
        and "fetch_rates" in (tmp_path / "t.html").read_text()
    )
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    code, _, err = await asyncio.to_thread(
        run_cli, ["--database-url", database_url, "timeline", "nope"], capsys
    )
    assert code == 1 and "nope" in err
    code, _, err = await asyncio.to_thread(call, "--svg", "a", "--png", "b")
    assert code == 2 and "not allowed with" in err
    for flag in ("--svg", "--html", "--png"):  # an output it cannot write: said as such
        missing = tmp_path / "no-such-dir" / "t"
        code, _, err = await asyncio.to_thread(call, flag, str(missing))
        assert (code, err) == (
            2,
            f"projector: error: cannot write {missing}: No such file or directory\n",
        )


async def test_docs_picture_is_current(aconn: Conn) -> None:
    """docs/timeline.svg is the retried sample drawn by `projector timeline --svg`;
    PROJECTOR_REGENERATE_DOCS=1 rewrites it."""
    await insert_events(aconn, sample_events("retried"))
    svg = timeline_render.svg(await timeline.load(aconn, DOCS_EXECUTION))
    if os.environ.get("PROJECTOR_REGENERATE_DOCS") == "1":
        DOCS_SVG.write_text(svg, encoding="utf-8")
    assert DOCS_SVG.read_text(encoding="utf-8") == svg, (
        "docs/timeline.svg is stale: run PROJECTOR_REGENERATE_DOCS=1 pytest tests/test_timeline.py"
    )


async def test_the_demo_points_at_commands_that_work(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await asyncio.to_thread(
        run_cli, ["--database-url", database_url, "demo"], capsys
    )
    assert code == 0, err
    tail = out[out.index("look at them") :]
    pointed = [
        line.split("projector --database-url URL ")[1].split("   ")[0]
        for line in tail.splitlines()[1:]
    ]
    assert pointed[:3] == [
        f"timeline {x}" for x in ("7288213371283718001", "demo-failed", "demo-success")
    ]
    assert pointed[-1] == "serve"
    for command in pointed[:-1]:
        argv = ["--database-url", database_url, *command.split()]
        if "--html" in argv:
            argv[-1] = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"demo-{os.getpid()}.html")
        code, out, err = await asyncio.to_thread(run_cli, argv, capsys)
        assert code == 0, (command, err)


def test_scale_and_durations_are_pure() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    flat = timeline.Scale(t0, t0 + timedelta(seconds=10), t0 + timedelta(seconds=10))
    assert not flat.broken and flat(t0 + timedelta(seconds=5)) == 0.5
    assert [label for _, label in flat.ticks(6)] == ["+0s", "+2s", "+4s", "+6s", "+8s", "+10s"]
    broken = timeline.Scale(t0, t0 + timedelta(seconds=10), t0 + timedelta(days=3))
    assert broken.broken and broken(t0 + timedelta(seconds=10)) == pytest.approx(0.85)
    assert broken(t0 + timedelta(days=3)) == 1.0 and broken(t0 - timedelta(days=1)) == 0.0
    assert [timeline.format_duration(timedelta(seconds=s)) for s in (0, 0.25, 1.5, 125, 7300)] == [
        "0s",
        "250ms",
        "1.5s",
        "2m05s",
        "2h01m",
    ]
    assert timeline.format_duration(timedelta(days=228, hours=9, minutes=5)) == "228d09h"


async def test_a_cancelled_execution_ends_its_open_bars(aconn: Conn) -> None:
    t0 = datetime(2026, 2, 1, tzinfo=UTC)

    def ev(n: int, event_type: str, step: str, status: str) -> ExecutorEvent:
        return ExecutorEvent(
            execution_id="cancelled-run",
            event_id=f"c{n}",
            event_type=event_type,
            step=step,
            status=status,
            created_at=t0 + timedelta(seconds=n),
        )

    await insert_events(
        aconn,
        [
            ev(0, "step.enter", "slow", "RUNNING"),
            ev(4, "playbook.cancelled", "", "CANCELLED"),
        ],
    )
    tl = await timeline.load(aconn, "cancelled-run")
    [row] = tl.steps
    assert row.step.status == "CANCELLED"
    assert [(b.status, b.finished_at) for b in row.bars] == [
        ("CANCELLED", t0 + timedelta(seconds=4))
    ]
    assert tl.stall is None and [m.status for m in tl.markers] == ["CANCELLED"]
    assert "▚" in next(line for line in plain(tl) if line.startswith("slow"))
