"""`projector timeline`, `watch`, `serve`: one execution drawn, live, and on the web.

`timeline` prints the Gantt chart of :mod:`projector.timeline` for the terminal's width, or
writes it as SVG, HTML or PNG (``--svg/--html/--png FILE``, ``-`` for stdout; PNG needs the
``noetl-projector[png]`` extra), or prints it as JSON.

`watch` redraws the execution and its chart whenever it changes: it LISTENs on the sink's
channel (:data:`projector.channels.NOTIFY_CHANNEL`, one NOTIFY per committed batch) and reloads
on a notification, or after ``--interval`` seconds without one (the polling fallback: a sink
without NOTIFY, a lost connection's events). It reloads at most 4 times a second however often
the sink commits. On a terminal it draws in place (rich Live) and stops on ``q`` or Ctrl-C;
otherwise it prints a plain snapshot each time what the views say changes. It exits 0 when the
execution is terminal, unless ``--follow``.

`serve` runs the read-only web view of :mod:`projector.web` (the ``noetl-projector[web]``
extra) on ``--address`` (default 127.0.0.1:8800, loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psycopg import sql
from rich.console import Console, Group
from rich.live import Live

from .. import timeline as timeline_model
from .. import timeline_render as render
from ..channels import NOTIFY_CHANNEL
from ..errors import ConfigurationError
from ..hosts import host_name
from ..projection import connect
from ..readmodel import jsonable
from .options import address, seconds
from .safe import escape

__all__ = ["register"]

#: Reloads per second at most, however often the sink commits.
MAX_RELOADS_PER_SECOND = 4
#: The width of the plain snapshots (output that is not a terminal).
PLAIN_WIDTH = 120


def _write(target: str, data: str | bytes) -> None:
    if target == "-":
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(data)
        return
    path = Path(target)
    try:
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
    except OSError as exc:  # the CLI's boundary would call it "cannot read"
        raise ConfigurationError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _console() -> Console:
    probe = Console()
    if probe.is_terminal:
        return probe
    return Console(width=PLAIN_WIDTH, no_color=True, highlight=False)


async def timeline_command(args: argparse.Namespace, db: str) -> int:
    """`projector timeline EXECUTION_ID [--svg FILE | --html FILE | --png FILE | --json]`."""
    if args.png is not None:
        render.require_matplotlib()
    async with await connect(db) as conn:
        tl = await timeline_model.load(conn, args.execution_id)
    if args.svg is not None:
        _write(args.svg, render.svg(tl))
    elif args.html is not None:
        _write(args.html, render.html(tl))
    elif args.png is not None:
        _write(args.png, render.png(tl))
    elif args.json:
        print(escape(json.dumps(tl.jsonable(), ensure_ascii=False, indent=2), newlines=True))
    else:
        console = _console()
        for line in render.terminal_lines(tl, console.width):
            console.print(line, soft_wrap=False, overflow="fold")
    return 0


def _signature(tl: timeline_model.Timeline) -> str:
    """What the views say, without the clock: a new snapshot is printed when this changes."""
    doc: dict[str, Any] = {
        "execution": jsonable(tl.execution),
        "steps": [jsonable(r.step) for r in tl.steps],
        "children": [jsonable(c) for c in tl.children],
    }
    return json.dumps(doc, sort_keys=True, default=str)


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[None]:
    """On a terminal stdin: read keys unbuffered, `q` sets `stop`; restored on exit."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def on_key() -> None:
        if os.read(fd, 32).lower().startswith(b"q") or not sys.stdin.isatty():
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def watch_command(args: argparse.Namespace, db: str) -> int:
    """`projector watch EXECUTION_ID [--follow] [--interval SECONDS]`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    console = _console()
    try:
        async with await connect(db) as conn, await connect(db) as listener:
            await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            tl = await timeline_model.load(conn, args.execution_id)
            with _keys(loop, stop):
                if console.is_terminal:
                    await _watch_live(args, conn, listener, tl, console, stop)
                else:
                    await _watch_plain(args, conn, listener, tl, stop)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    return 0


async def _wake(listener: Any, interval: float, stop: asyncio.Event) -> None:
    """Return on a NOTIFY of the sink, after `interval` seconds, or when `stop` is set."""
    stopped = asyncio.ensure_future(stop.wait())

    async def notified() -> None:
        async for _ in listener.notifies(timeout=interval, stop_after=1):
            return

    woken = asyncio.ensure_future(notified())
    try:
        await asyncio.wait({stopped, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, woken):
            task.cancel()
        await asyncio.gather(stopped, woken, return_exceptions=True)


async def _changes(
    args: argparse.Namespace,
    conn: Any,
    listener: Any,
    tl: timeline_model.Timeline,
    stop: asyncio.Event,
) -> Any:
    """The timeline again after each wake-up, at most MAX_RELOADS_PER_SECOND times a second,
    until `stop` or (without --follow) a terminal execution."""
    last = time.monotonic()
    while not stop.is_set() and (args.follow or not tl.terminal):
        await _wake(listener, args.interval, stop)
        if stop.is_set():
            return
        wait = 1 / MAX_RELOADS_PER_SECOND - (time.monotonic() - last)
        if wait > 0:
            await asyncio.sleep(wait)
        last = time.monotonic()
        tl = await timeline_model.load(conn, tl.execution.execution_id)
        yield tl


async def _watch_live(
    args: argparse.Namespace,
    conn: Any,
    listener: Any,
    tl: timeline_model.Timeline,
    console: Console,
    stop: asyncio.Event,
) -> None:
    def view(t: timeline_model.Timeline) -> Group:
        footer = "q or Ctrl-C to stop" + (" (following)" if args.follow else "")
        return Group(*render.terminal_lines(t, console.width), footer)

    with Live(view(tl), console=console, auto_refresh=False, transient=False) as live:
        async for fresh in _changes(args, conn, listener, tl, stop):
            live.update(view(fresh), refresh=True)


async def _watch_plain(
    args: argparse.Namespace,
    conn: Any,
    listener: Any,
    tl: timeline_model.Timeline,
    stop: asyncio.Event,
) -> None:
    console = Console(width=PLAIN_WIDTH, no_color=True, highlight=False)

    def snapshot(t: timeline_model.Timeline) -> None:
        console.print(f"--- {t.now.isoformat()}", highlight=False, markup=False)
        for line in render.terminal_lines(t, PLAIN_WIDTH):
            console.print(line, soft_wrap=True)
        sys.stdout.flush()

    snapshot(tl)
    seen = _signature(tl)
    async for fresh in _changes(args, conn, listener, tl, stop):
        if _signature(fresh) != seen:
            seen = _signature(fresh)
            snapshot(fresh)


def _host_name(text: str) -> str:
    """``--allowed-host``: a host name as the Host check compares it."""
    try:
        return host_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def serve_command(args: argparse.Namespace, db: str) -> int:
    """`projector serve [--address HOST:PORT]`."""
    try:
        from ..web import serve
    except ImportError as exc:
        raise ConfigurationError(
            f"projector serve needs the web extra ({exc.name} is missing): "
            "pip install 'noetl-projector[web]'"
        ) from None
    host, port = args.address
    await serve(db, host, port, hosts=args.allowed_host)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `timeline`, `watch` and `serve` to the command line."""
    p = subparsers.add_parser(
        "timeline",
        help="a Gantt chart of one execution (terminal, SVG, HTML, PNG)",
        description="Draw the execution: one row per step, one bar per attempt (failed attempts "
        "marked, the wait before a retry dashed), a band of how many iterations ran at once, "
        "lifecycle events as markers, the time since the last progress shaded. In the terminal "
        "at its width, or written as a self-contained SVG or HTML file, or a PNG (the "
        "noetl-projector[png] extra). Read from the views; exit 1 for an unknown execution.",
        epilog="examples: projector timeline 7288213371283718001; "
        "projector timeline 7288213371283718001 --html incident.html",
    )
    p.add_argument("execution_id", help="the execution id")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--svg", metavar="FILE", help="write an SVG document (- for stdout)")
    out.add_argument("--html", metavar="FILE", help="write an HTML page (- for stdout)")
    out.add_argument("--png", metavar="FILE", help="write a PNG image (needs matplotlib)")
    out.add_argument("--json", action="store_true", help="print the bars, gaps and markers as JSON")
    p.set_defaults(handler=timeline_command)

    p = subparsers.add_parser(
        "watch",
        help="a live view of one execution, redrawn when it changes",
        description="Show the execution and its steps (status, attempts, iterations with a "
        "progress bar, duration, error, timeline bar) and redraw when the sink commits events "
        "(LISTEN on its NOTIFY channel; polling every --interval seconds as the fallback; at "
        "most 4 redraws a second). Exits 0 when the execution is terminal (unless --follow), on "
        "q or Ctrl-C. When stdout is not a terminal, prints a plain snapshot on every change.",
        epilog="example: projector watch 606790043104968712 --follow",
    )
    p.add_argument("execution_id", help="the execution id")
    p.add_argument("--follow", action="store_true", help="keep watching after it is terminal")
    p.add_argument(
        "--interval",
        type=seconds,
        default=2.0,
        metavar="SECONDS",
        help="reload after this long without a notification (default 2)",
    )
    p.set_defaults(handler=watch_command)

    p = subparsers.add_parser(
        "serve",
        help="a read-only web view of the executions (the web extra)",
        description="Serve the executions list, an execution page (steps, timeline, events, "
        "live while it runs) and a JSON API with the shapes of the commands' --json. Reads "
        "only; binds to loopback unless told otherwise; use a login in the noetl_reader role. "
        "Answers only requests whose Host header it allows (localhost, 127.0.0.1, [::1], the "
        "--address host, --allowed-host names), so a page that rebinds its DNS name to this "
        "machine cannot read it. "
        "Needs noetl-projector[web].",
        epilog="examples: projector serve --address 127.0.0.1:8800; "
        "projector serve --address 0.0.0.0:8800 --allowed-host projector.internal",
    )
    p.add_argument(
        "--address",
        type=address,
        default=("127.0.0.1", 8800),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8800)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        type=_host_name,
        default=[],
        metavar="NAME",
        help="also answer requests whose Host is NAME (repeatable; no port; *.example.com for "
        "its subdomains; '*' turns the check off). Always answered: localhost, 127.0.0.1, "
        "[::1] and the --address host unless it is 0.0.0.0 or ::",
    )
    p.set_defaults(handler=serve_command)
