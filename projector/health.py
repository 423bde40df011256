"""The metrics and health endpoints of `projector project` and `projector consume`.

One port (``--metrics-address HOST:PORT``) serves, over plain HTTP/1.1 (``GET`` or ``HEAD``, one
request per connection):

* ``/metrics``: the process's own registry in the Prometheus text format (:mod:`projector.metrics`);
* ``/healthz``: 200 while the process runs (its event loop answers);
* ``/readyz``: 200 when the database answers, its schema is at the head revision this version
  ships and the lag is at most ``--ready-max-lag`` seconds; else 503. Either way the body is one
  line of JSON: ``{"ready": false, "reason": "..."}``, and the figures it looked at.

:class:`HealthServer` runs on the process's asyncio loop (``asyncio.start_server``; no thread, no
ASGI server to add): a probe of readiness is a coroutine, and a slow or silent client cannot hold
anything for long (:data:`READ_TIMEOUT`). Rendering ``/metrics`` is synchronous and takes
microseconds for the few dozen series there are. Port 0 binds a free port; :attr:`address` says
which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .errors import ConfigurationError, ProjectorError, translating
from .queries import query
from .redact import redact
from .timeouts import session_kwargs

__all__ = [
    "LAG_COUNT_CAP",
    "HealthServer",
    "Lag",
    "Readiness",
    "parse_address",
    "projection_lag",
    "schema_problem",
]

log = logging.getLogger(__name__)

#: The lag in events is counted up to this many (the count walks the unprojected rows).
LAG_COUNT_CAP: Final = 1_000_000
#: Seconds a client has to send its request; and a readiness probe's limit.
READ_TIMEOUT: Final = 5.0
PROBE_TIMEOUT: Final = 10.0
#: Statement timeout of the probe's queries (seconds).
_PROBE_STATEMENT_TIMEOUT: Final = 5.0

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6, port 0 for a free one) as (host, port).

    Raises ValueError saying what a valid address looks like.
    """
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:0, [::1]:9464)")
    return host, int(port_text)


@dataclass(frozen=True)
class Lag:
    """How far a projection is behind (:func:`projection_lag`)."""

    #: The checkpoint (None before the projection's first run).
    position: int | None
    #: Seconds since the oldest unprojected event was stored (0: caught up).
    seconds: float
    #: Events not projected yet, counted up to :data:`LAG_COUNT_CAP`.
    events: int


@translating()
async def projection_lag(conn: AsyncConn, name: str) -> Lag:
    """The lag of projection `name`, in seconds and events."""
    cur = await conn.execute(query("health.projection_lag"), {"name": name, "cap": LAG_COUNT_CAP})
    row = await cur.fetchone()
    assert row is not None
    return Lag(int(row[0]) if row[0] is not None else None, float(row[1]), int(row[2]))


@translating()
async def schema_problem(conn: AsyncConn, head: str) -> str | None:
    """Why the schema is not ready (never migrated, or not at revision `head`), or None."""
    cur = await conn.execute(query("health.has_version_table"))
    row = await cur.fetchone()
    if row is None or not row[0]:
        return "the database is not migrated (run `projector db upgrade`)"
    cur = await conn.execute(query("health.version"))
    row = await cur.fetchone()
    current = row[0] if row is not None else None
    if current != head:
        from . import migrate  # alembic, only for this message

        if current is not None and current not in migrate.revisions():
            return migrate.newer_than_this(current)
        return f"the schema is at revision {current}, not {head} (run `projector db upgrade`)"
    return None


@translating()
async def probe_connection(url: str) -> AsyncConn:
    """A connection for one readiness probe (its statements time out)."""
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, **session_kwargs(statement_timeout=_PROBE_STATEMENT_TIMEOUT)
    )


@dataclass(frozen=True)
class Readiness:
    """The answer of /readyz."""

    ready: bool
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        """One line of JSON."""
        doc: dict[str, Any] = {"ready": self.ready}
        if self.reason:
            doc["reason"] = redact(self.reason)
        doc.update(self.figures)
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


#: A readiness probe: the answer (it must not raise; see :func:`readiness`).
ReadyCheck = Callable[[], Awaitable[Readiness]]

#: What a readiness probe does with a connection: the lag in seconds and any other figures.
LagCheck = Callable[[AsyncConn], Awaitable[tuple[float, dict[str, Any]]]]


async def readiness(url: str, head: str, max_lag: float, lag: LagCheck) -> Readiness:
    """Ready when the database at `url` answers, its schema is at `head` and `lag` (given the
    probe's connection) returns at most `max_lag` seconds. Never raises: a failure is the reason."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            conn = await probe_connection(url)
            try:
                problem = await schema_problem(conn, head)
                if problem is not None:
                    return Readiness(False, problem)
                seconds, figures = await lag(conn)
            finally:
                await conn.close()
    except TimeoutError:
        return Readiness(False, f"the database did not answer within {PROBE_TIMEOUT:g} s")
    except ProjectorError as exc:
        return Readiness(False, f"database unavailable: {exc}")
    figures = {"lag_seconds": round(seconds, 3), **figures, "max_lag_seconds": max_lag}
    if seconds > max_lag:
        return Readiness(False, f"lag {seconds:.1f} s is over {max_lag:g} s", figures)
    return Readiness(True, "", figures)


#: Seconds a /readyz answer is reused for the requests that follow it.
READY_REUSE: Final = 1.0

_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}


class HealthServer:
    """/metrics, /healthz and /readyz on one port, on the running asyncio loop."""

    def __init__(self, registry: CollectorRegistry, ready: ReadyCheck) -> None:
        self.registry = registry
        self.ready = ready
        # One probe at a time, its answer reused for READY_REUSE seconds: however many clients
        # ask, /readyz opens at most one database connection at a time (and a burst, one).
        self._probe_lock = asyncio.Lock()
        self._last: tuple[float, Readiness] | None = None
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on `host`:`port` (0: a free port); return the address bound.

        Raises :class:`~projector.errors.ConfigurationError` when the address cannot be bound.
        """
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {reason} (check --metrics-address)"
            ) from None
        bound = self._server.sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound address."""
        assert self.address is not None, "not started"
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop listening (requests being answered are finished)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "application/json", b'{"alive":true}\n'
        if path == "/readyz":
            ready = await self._readiness()
            return (200 if ready.ready else 503), "application/json", ready.body()
        return 404, "text/plain; charset=utf-8", b"try /metrics, /healthz or /readyz\n"

    async def _readiness(self) -> Readiness:
        async with self._probe_lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < READY_REUSE:
                return self._last[1]
            try:
                ready = await self.ready()
            except Exception as exc:  # a bug in a probe: not ready, and say why
                log.exception("readiness probe failed")
                ready = Readiness(False, f"internal error: {type(exc).__name__}: {exc}")
            self._last = (time.monotonic(), ready)
            return ready

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, content_type, body = await self._answer(method, target.split("?", 1)[0])
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (
            TimeoutError,
            ValueError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a client that sent no request, a malformed one, or went away
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
