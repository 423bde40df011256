"""`projector serve`: a small read-only web view (Starlette, uvicorn, Jinja2; no JavaScript build).

Pages (server-side templates in ``templates/``, every value autoescaped; producer text also has
its control characters made visible by :func:`projector.cli.safe.escape`):

* ``/``: the executions, newest first; filters ``status``, ``stalled`` (``90s``, ``10m``, ``2h``,
  ``1d``: not terminal and no progress for that long), ``since`` / ``until`` (ISO 8601 start
  times, UTC unless they say otherwise) and ``limit``; every id has a copy button;
* ``/executions/{id}``: the execution, its timeline (the SVG of ``projector timeline``), the
  step table, the child executions and the events (filters ``step``, ``type`` (contained in the
  event type), ``status`` (normalised)). While the execution is not terminal, a few lines of
  JavaScript fetch ``/executions/{id}/live`` (the top of the page) every second and swap it in
  when what the views say changed;
* ``/executions/{id}/timeline.svg``: the SVG alone.

``{id}`` is one path segment (:func:`id_segment`: percent-encoded, "/" too, ``~`` in front of an
id made of dots or starting with ``~``).

JSON API, the shapes of the commands' ``--json``: ``/api/executions`` (``projector executions
--json``, same filters), ``/api/executions/{id}`` (``projector status --json``),
``/api/executions/{id}/history`` (``projector history --json``; ``?step=``) and
``/api/executions/{id}/timeline`` (``projector timeline --json``). An unknown execution is 404,
a bad filter 400 (JSON ``{"error": ...}`` on the API).

Reads only: every statement is a SELECT of :mod:`projector.readmodel` or
:mod:`projector.timeline`, on autocommit connections of a pool opened when the server starts.
Connect as a login in the ``noetl_reader`` role (README "Roles") so that the database enforces
it. :func:`serve` binds to the address it is given; the command's default is loopback.

Host header: a request whose ``Host`` names no allowed host is answered 400, so that a web page
which rebinds its own DNS name to 127.0.0.1 cannot read the API through a local browser. The
allowed hosts are ``localhost``, ``127.0.0.1``, ``[::1]``, the bound address (not a wildcard
such as ``0.0.0.0``) and the names given (``--allowed-host``; ``*`` for any):
:func:`allowed_hosts`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jinja2
import uvicorn
from markupsafe import Markup
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__, readmodel
from .. import timeline as timeline_model
from .. import timeline_render as render
from ..cli.options import parse_duration
from ..cli.safe import escape
from ..errors import UnknownExecution
from ..fold import STATUSES, status_filter
from ..hosts import LOOPBACK_NAMES, allowed_hosts
from ..readmodel import jsonable
from ..timeouts import PROJECTION_KWARGS

__all__ = ["allowed_hosts", "create_app", "serve"]


_MAX_LIMIT = 1000


class BadFilter(ValueError):
    """A query parameter that is not valid (the page says which, the API answers 400)."""


class BadPath(ValueError):
    """A path under /executions/ or /api/executions/ that names no page (answered 404)."""


def _duration(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise BadFilter(f"stalled: {exc}") from None


def _instant(name: str, value: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadFilter(
            f"{name}: {value!r} is not a time (ISO 8601, e.g. 2026-01-20T12:00)"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _given(request: Request) -> dict[str, str | None]:
    """The executions filters as given (for the form)."""
    q = request.query_params
    # blank is no filter (as `projector executions --status ""`)
    given = {k: (q.get(k) or "").strip() or None for k in ("status", "stalled", "since", "until")}
    given["limit"] = q.get("limit") or "50"
    return given


def _filters(request: Request) -> tuple[dict[str, str | None], dict[str, Any]]:
    """The executions filters as given (for the form) and as values (for the query)."""
    given = _given(request)
    limit = given["limit"] or "50"
    values: dict[str, Any] = {"status": None}
    if given["status"] is not None:
        try:  # the words `projector executions --status` takes
            values["status"] = status_filter(given["status"])
        except ValueError as exc:
            raise BadFilter(f"status: {exc}") from None
    if not limit.isdigit() or not 1 <= int(limit) <= _MAX_LIMIT:
        raise BadFilter(f"limit: must be a whole number from 1 to {_MAX_LIMIT}")
    values["limit"] = int(limit)
    values["stalled_for"] = _duration(given["stalled"]) if given["stalled"] else None
    values["since"] = _instant("since", given["since"]) if given["since"] else None
    values["until"] = _instant("until", given["until"]) if given["until"] else None
    return given, values


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value is not None else "-"


def _finalize(value: Any) -> Any:
    """Every value a template prints: None as nothing, text with its controls made visible
    (autoescaping then escapes the markup characters)."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return escape(value, newlines=True) if isinstance(value, str) else value


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("projector.web", "templates"),
        autoescape=True,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ts"] = _ts
    # An id as one path segment ("/" too is escaped; Jinja's urlencode keeps it).
    env.filters["urlencode"] = lambda v: id_segment(str(v))
    env.filters["compact"] = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    env.globals["version"] = __version__
    env.globals["statuses"] = STATUSES

    def duration(start: datetime | None, end: datetime | None) -> str:
        if start is None or end is None:
            return "-"
        return timeline_model.format_duration(end - start)

    env.globals["duration"] = duration
    return env


def id_segment(execution_id: str) -> str:
    """`execution_id` as one path segment that reads back as itself (:func:`id_from_segment`).

    Every character but the unreserved ones is percent-encoded, "/" included; an id made only of
    dots (which a browser would resolve as ``.`` / ``..``, also written ``%2E``) or starting
    with ``~`` gets a ``~`` in front.
    """
    if execution_id.startswith("~") or not execution_id.strip("."):
        execution_id = "~" + execution_id
    return urllib.parse.quote(execution_id, safe="")


def id_from_segment(segment: str) -> str:
    """The execution id that :func:`id_segment` made `segment` of (raw, percent-encoded)."""
    text = urllib.parse.unquote(segment, errors="strict")
    return text[1:] if text.startswith("~") else text


def _by_id(prefix: str, handlers: Mapping[str, Handler]) -> Handler:
    """Dispatch ``prefix + segment [/ suffix]`` to ``handlers[suffix]`` with the id decoded from
    the raw path (the decoded one has lost which "/" belonged to the id)."""

    async def dispatch(request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
        text = raw.decode("latin-1").split("?", 1)[0]
        if not text.startswith(prefix):  # e.g. "/api/executions%2Frun": no such page
            raise BadPath(f"no such page: {request.url.path!r}")
        tail = text[len(prefix) :]
        segment, _, suffix = tail.partition("/")
        handler = handlers.get(suffix)
        if handler is None or not segment:
            raise BadPath(f"no such page: {request.url.path!r} (write / in an execution id as %2F)")
        try:
            execution_id = id_from_segment(segment)
        except UnicodeDecodeError:
            raise BadPath("the execution id in the path is not UTF-8") from None
        request.scope["path_params"] = {"execution_id": execution_id}
        return await handler(request)

    return dispatch


def _signature(tl: timeline_model.Timeline) -> str:
    doc = [jsonable(tl.execution), [jsonable(r.step) for r in tl.steps]]
    doc.append([jsonable(c) for c in tl.children])
    return str(abs(hash(json.dumps(doc, sort_keys=True, default=str))))


Handler = Callable[[Request], Awaitable[Response]]

#: The pool's connections: autocommit, read-only sessions (whatever role the URL names, the web
#: view cannot write).
SESSION_KWARGS: Final[dict[str, Any]] = {
    "autocommit": True,
    **PROJECTION_KWARGS,
    "options": f"{PROJECTION_KWARGS['options']} -c default_transaction_read_only=on",
}


def create_app(url: str, *, pool_size: int = 4, hosts: Sequence[str] = LOOPBACK_NAMES) -> Starlette:
    """The web application reading the database at `url` (its pool opens on startup).

    `hosts`: the ``Host`` header values it answers (:func:`allowed_hosts`; ``["*"]`` for any);
    any other is answered 400.
    """
    env = _environment()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=pool_size,
        kwargs=SESSION_KWARGS,
        open=False,
    )

    def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        body = env.get_template(name).render(**context)
        return HTMLResponse(body, status_code=status_code)

    def not_found(request: Request, exc: UnknownExecution) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=404)
        return HTMLResponse(
            f"<!DOCTYPE html><title>unknown execution</title><p>{Markup.escape(escape(exc))}</p>"
            '<p><a href="/">executions</a></p>',
            status_code=404,
        )

    def guarded(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except UnknownExecution as exc:
                return not_found(request, exc)
            except (BadFilter, BadPath) as exc:
                code = 404 if isinstance(exc, BadPath) else 400
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": str(exc)}, status_code=code)
                return HTMLResponse(f"<p>{Markup.escape(escape(exc))}</p>", status_code=code)

        return run

    async def load(request: Request) -> timeline_model.Timeline:
        async with pool.connection() as conn:
            return await timeline_model.load(conn, request.path_params["execution_id"])

    def live_context(tl: timeline_model.Timeline) -> dict[str, Any]:
        return {
            "x": tl.execution,
            "tl": tl,
            "svg": Markup(render.svg(tl)),
            "steps_table": Markup(render.step_table_html(tl)),
            "signature": _signature(tl),
            "idle": timeline_model.format_duration(tl.idle) if tl.idle is not None else "",
        }

    async def executions_page(request: Request) -> Response:
        try:
            given, values = _filters(request)
        except BadFilter as exc:
            return page("executions.html", 400, rows=[], filters=_given(request), error=str(exc))
        async with pool.connection() as conn:
            rows = await readmodel.executions(conn, **values)
        # the form shows the status the word means (`ok` selects COMPLETED)
        return page(
            "executions.html", rows=rows, filters={**given, "status": values["status"]}, error=None
        )

    async def execution_page(request: Request) -> Response:
        tl = await load(request)
        q = request.query_params
        filters = {k: q.get(k) or None for k in ("step", "type", "status")}
        async with pool.connection() as conn:
            events = await readmodel.history(conn, tl.execution.execution_id)
        total = len(events)
        step_names = sorted({e.step for e in events if e.step})
        error = None
        if filters["step"] is not None:
            events = [e for e in events if e.step == filters["step"]]
        if filters["type"] is not None:
            events = [e for e in events if filters["type"] in e.event_type]
        if filters["status"] is not None:
            try:  # the words of the executions filter; a typo is not RUNNING
                filters["status"] = status_filter(filters["status"])
            except ValueError as exc:
                error, events = f"status: {exc}", []
            else:
                events = [e for e in events if e.normalized_status == filters["status"]]
        return page(
            "execution.html",
            400 if error else 200,
            events=events,
            total_events=total,
            filters=filters,
            step_names=step_names,
            error=error,
            **live_context(tl),
        )

    async def live_fragment(request: Request) -> Response:
        tl = await load(request)
        return page("live.html", **live_context(tl))

    async def timeline_svg(request: Request) -> Response:
        tl = await load(request)
        return Response(render.svg(tl), media_type="image/svg+xml")

    async def api_executions(request: Request) -> Response:
        _, values = _filters(request)
        async with pool.connection() as conn:
            rows = await readmodel.executions(conn, **values)
        return JSONResponse([jsonable(r) for r in rows])

    async def api_status(request: Request) -> Response:
        async with pool.connection() as conn:
            view = await readmodel.status_view(conn, request.path_params["execution_id"])
        return JSONResponse(view.jsonable())

    async def api_history(request: Request) -> Response:
        key = request.path_params["execution_id"]
        async with pool.connection() as conn:
            events = await readmodel.history(conn, key, step=request.query_params.get("step"))
        return JSONResponse([jsonable(e) for e in events])

    async def api_timeline(request: Request) -> Response:
        return JSONResponse((await load(request)).jsonable())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()

    # An execution id is one path segment of the raw (undecoded) path (:func:`id_segment`), so
    # an id holding "/", ending in "/live" or made of dots is never read as another path.
    pages = {"": execution_page, "live": live_fragment, "timeline.svg": timeline_svg}
    api = {"": api_status, "history": api_history, "timeline": api_timeline}
    routes = [
        Route("/", guarded(executions_page)),
        Route("/executions/{rest:path}", guarded(_by_id("/executions/", pages))),
        Route("/api/executions", guarded(api_executions)),
        Route("/api/executions/{rest:path}", guarded(_by_id("/api/executions/", api))),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


async def serve(url: str, host: str, port: int, *, hosts: Sequence[str] = ()) -> None:
    """Serve the web view on `host`:`port` until interrupted (Ctrl-C, SIGTERM).

    `hosts`: extra ``Host`` names to answer (:func:`allowed_hosts`).
    """
    allowed = allowed_hosts(host, hosts)
    config = uvicorn.Config(
        create_app(url, hosts=allowed), host=host, port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(f"projector: serving on http://{shown}:{port}/ (Ctrl-C to stop)", file=sys.stderr)
    if "*" in allowed:
        print("projector: --allowed-host '*': any Host header is answered", file=sys.stderr)
    else:
        print(f"projector: answering Host {', '.join(allowed)}", file=sys.stderr)
    await server.serve()
