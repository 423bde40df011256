"""The fast paths on a nats-py connection that `NatsEventSink` and the bridge's pull consumer share.

Both read many small messages on one private subscription and write many small protocol lines;
nats-py's public API spends more per message on that than the rest of the path (a ``Msg`` object,
header parsing and a queue hop per message received, a future or a coroutine per message sent).
This module is the only place that uses nats-py's private internals for it:

* :func:`tap` subscribes to a subject and hands its messages to a plain (synchronous) function
  ``handler(subject, reply, data, status)`` (subject, reply subject and payload as ``bytes``;
  ``status`` is ``(code, description)`` for a status message such as ``NATS/1.0 408 Request
  Timeout``, else None). Fast path: nats-py 2.x's protocol parser calls the connection's
  ``_process_msg(sid, subject, reply, data, headers)`` for every message; one dispatcher per
  connection replaces that method, hands the messages of tapped subscriptions to their handler
  (before nats-py parses headers or builds a ``Msg``) and passes every other message on to
  nats-py unchanged. Taps are installed and removed independently (a dict keyed by subscription
  id); when the last one is closed, nats-py's own method is restored. The same dispatcher also
  stands in for the parser's ``parse(data)`` (when the parser is nats-py 2.x's, as expected):
  complete ``MSG``/``HMSG`` frames of tapped subscriptions at the front of each read go to their
  handler without nats-py's regular expressions, buffer deletions and one coroutine per message
  (~0.7 µs a message less); from the first frame that is anything else (a protocol line, another
  subscription's message, a frame cut by the end of the read, unusual spacing) nats-py's parser
  reads the rest, in order, and a frame it started is completed by it first. Fallback: an
  ordinary subscription callback that turns each ``Msg`` into the same four values.
* :func:`write_raw` hands complete protocol lines (``PUB``, ``HPUB``) to the connection's write
  buffer and wakes its flusher: a whole batch of publishes in one buffer, no per-message work in
  nats-py. There is no fallback here: a caller that cannot use it (:func:`supported` is False)
  publishes with nats-py's API instead.

:func:`supported` is the one check that a connection has these internals: nats-py's major version
is :data:`SUPPORTED_MAJOR` and the hook and the write methods look as expected. Everything else
falls back, slower but with the same behaviour.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import nats.errors

try:
    from nats.protocol import parser as _nats_parser
except ImportError:  # pragma: no cover - every nats-py 2.x has it
    _nats_parser = None  # type: ignore[assignment]

__all__ = [
    "NATS_PY_VERSION",
    "SUPPORTED_MAJOR",
    "Handler",
    "Status",
    "Tap",
    "inline_status",
    "supported",
    "tap",
    "version_supported",
    "write_raw",
]

log = logging.getLogger(__name__)

#: ``(code, description)`` of a status message, e.g. ``(408, "Request Timeout")``.
Status = tuple[int, str]
#: What a tap calls for each message: ``handler(subject, reply, data, status)``.
Handler = Callable[[bytes, bytes, bytes, Status | None], None]

try:
    NATS_PY_VERSION = metadata.version("nats-py")
except metadata.PackageNotFoundError:  # pragma: no cover - nats is importable, so it is installed
    NATS_PY_VERSION = "0.0.0"

#: The nats-py major version whose internals the fast paths use.
SUPPORTED_MAJOR = 2

_HOOK_PARAMETERS = ["sid", "subject", "reply", "data", "headers"]
_STATUS_PREFIX = b"NATS/1.0 "


def version_supported(version: str) -> bool:
    """True when nats-py `version` (e.g. ``"2.16.0"``) has the internals this module uses."""
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) == SUPPORTED_MAJOR


def supported(nc: Any) -> bool:
    """True when `nc` can take the fast paths: nats-py 2.x (checked against the installed
    version) with the ``_process_msg(sid, subject, reply, data, headers)`` coroutine its parser
    calls and the ``_send_command`` / ``_flush_pending`` write methods."""
    if not version_supported(NATS_PY_VERSION):
        return False
    if not (
        callable(getattr(nc, "_send_command", None))
        and callable(getattr(nc, "_flush_pending", None))
    ):
        return False
    if _dispatcher(nc) is not None:
        return True  # already tapped: the original passed this check
    hook = getattr(nc, "_process_msg", None)
    if hook is None or not inspect.iscoroutinefunction(hook):
        return False
    try:
        return list(inspect.signature(hook).parameters) == _HOOK_PARAMETERS
    except (TypeError, ValueError):
        return False


def inline_status(headers: bytes) -> Status | None:
    """The inline status of a raw header block (``NATS/1.0 408 Request Timeout``), else None."""
    if not headers.startswith(_STATUS_PREFIX):
        return None
    line = headers[len(_STATUS_PREFIX) :].split(b"\r\n", 1)[0]
    code, _, text = line.partition(b" ")
    if not code.isdigit():
        return None
    return int(code), text.decode(errors="replace").strip()


def _hook(handlers: dict[int, Handler], original: Callable[..., Awaitable[None]]) -> Any:
    """The ``_process_msg`` replacement: tapped subscriptions to their handler, the rest to
    `original`. (A closure: its locals are cheaper to reach than attributes, once a message.)"""
    get = handlers.get
    prefix = _STATUS_PREFIX

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = get(sid)
        if handler is None:
            await original(sid, subject, reply, data, headers)
        elif headers and headers.startswith(prefix):
            handler(subject, reply, data, inline_status(headers))
        else:
            handler(subject, reply, data, None)

    return process_msg


def _parser_supported(ps: Any) -> bool:
    """True when `ps` is nats-py 2.x's protocol parser as :func:`_fast_parse` expects it."""
    return (
        _nats_parser is not None
        and type(ps) is _nats_parser.Parser
        and "parse" not in ps.__dict__
        and inspect.iscoroutinefunction(ps.parse)
        and isinstance(getattr(ps, "buf", None), bytearray)
        and isinstance(getattr(ps, "needed", None), int)
        and getattr(ps, "state", None)
        in (_nats_parser.AWAITING_CONTROL_LINE, _nats_parser.AWAITING_MSG_PAYLOAD)
    )


#: A ``MSG <subject> <sid> [reply] <size>`` control line with single spaces (anything else, such as
#: other white space or ``HMSG``, takes the split path of `_fast_parse`, and what that refuses goes
#: to nats-py's parser).
_MSG_LINE = re.compile(rb"MSG ([^ \t\r\n]+) ([0-9]+) (?:([^ \t\r\n]+) )?([0-9]+)\r\n")


def _no_handler(subject: bytes, reply: bytes, data: bytes, status: Status | None) -> None:
    """Never called: `_fast_parse`'s handler before the first message."""


def _fast_parse(
    ps: Any, handlers: dict[int, Handler], original: Callable[[bytes], Awaitable[None]]
) -> Callable[[bytes], Awaitable[None]]:
    """The replacement of the parser's ``parse(data)``: the complete ``MSG`` and ``HMSG`` frames
    of tapped subscriptions at the front of what was read go straight to their handler (one
    regular-expression match for a plain ``MSG`` line, else a split; two integers and a slice
    each, no buffer deletion or coroutine); from the
    first frame that is anything else (``PING``, ``INFO``, another subscription's
    message, a frame cut by the end of the read, unusual spacing) the rest goes to nats-py's own
    parser, in order. While nats-py's parser is in the middle of a frame, it gets exactly the
    bytes that complete it first."""
    get = handlers.get
    prefix = _STATUS_PREFIX
    match_msg = _MSG_LINE.match
    assert _nats_parser is not None  # installed only when _parser_supported() holds
    control = _nats_parser.AWAITING_CONTROL_LINE

    async def parse(data: bytes = b"") -> None:
        if ps.state != control:  # a payload nats-py's parser started: finish it with it
            k = ps.needed + 2 - len(ps.buf)
            if k > len(data):
                await original(data)
                return
            await original(data[:k])
            data = data[k:]
            if ps.state != control or ps.buf:
                await original(data)  # (not expected: nats-py's parser keeps going)
                return
        buf = ps.buf
        if buf:  # a control line cut by the end of the previous read
            data = bytes(buf) + data
            buf.clear()
        n = len(data)
        pos = 0
        # One subscription's messages, mostly: its handler is looked up once (no sid is empty).
        last_sid = b""
        last: Handler = _no_handler
        while True:
            line = match_msg(data, pos)
            if line is not None:  # MSG without headers, the common frame: one C call
                subject, sid, reply, size = line.groups()
                if sid != last_sid:
                    found = get(int(sid))
                    if found is None:
                        break
                    last_sid, last = sid, found
                start = line.end()
                end = start + int(size)
                if end + 2 > n:
                    break
                last(subject, b"" if reply is None else reply, data[start:end], None)
                pos = end + 2
                continue
            if data.startswith(b"MSG ", pos):
                headed = False
            elif data.startswith(b"HMSG ", pos):
                headed = True
            else:
                break
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            args = data[pos + 4 + headed : eol].split(b" ")
            # MSG <subject> <sid> [reply] <size>, HMSG <subject> <sid> [reply] <header size> <size>
            count = len(args) - headed
            if count == 4:
                subject, sid, reply = args[0], args[1], args[2]
                if not reply:
                    break
            elif count == 3:
                subject, sid, reply = args[0], args[1], b""
            else:
                break
            size = args[-1]
            hsize = args[-2] if headed else b"0"
            if not (subject and sid.isdigit() and size.isdigit() and hsize.isdigit()):
                break
            handler = get(int(sid))
            if handler is None:
                break
            start = eol + 2
            end = start + int(size)
            if end + 2 > n:
                break
            header_size = int(hsize)
            if header_size:  # as the hook: a status line is the status, other headers go
                if header_size > end - start:
                    break
                body = start + header_size
                status = inline_status(data[start:body]) if data.startswith(prefix, start) else None
                handler(subject, reply, data[body:end], status)
            else:
                handler(subject, reply, data[start:end], None)
            pos = end + 2
        if pos < n:
            await original(data[pos:] if pos else data)

    return parse


class _Dispatcher:
    """Takes the place of one connection's ``_process_msg`` (and, when its parser is as
    expected, the parser's ``parse``) while any tap is open on it."""

    __slots__ = ("handlers", "hook", "parser", "replaced")

    def __init__(self, nc: Any) -> None:
        #: What the connection's instance attribute was before (None: the class's method).
        self.replaced: Any = nc.__dict__.get("_process_msg")
        self.handlers: dict[int, Handler] = {}
        self.hook = _hook(self.handlers, nc._process_msg)
        ps = getattr(nc, "_ps", None)
        #: The parser whose `parse` this dispatcher replaced (None: not replaced).
        self.parser: Any = ps if _parser_supported(ps) else None
        if self.parser is not None:
            self.parser.parse = _fast_parse(ps, self.handlers, self.parser.parse)

    def restore(self, nc: Any) -> None:
        """Give `nc` back nats-py's own methods."""
        if self.parser is not None:
            self.parser.__dict__.pop("parse", None)
        if self.replaced is None:
            del nc._process_msg  # the class's method shows through again
        else:
            nc._process_msg = self.replaced


#: The dispatcher of each tapped connection (valid while it is the connection's hook).
_dispatchers: weakref.WeakKeyDictionary[Any, _Dispatcher] = weakref.WeakKeyDictionary()


def _dispatcher(nc: Any) -> _Dispatcher | None:
    """The dispatcher installed on `nc`, if any."""
    dispatcher = _dispatchers.get(nc)
    if dispatcher is not None and nc.__dict__.get("_process_msg") is dispatcher.hook:
        return dispatcher
    return None


class Tap:
    """One tapped subscription (see :func:`tap`); `close` it to unsubscribe."""

    def __init__(self, nc: Any, sub: Any, sid: int | None) -> None:
        self._nc = nc
        self._sub: Any = sub
        self._sid = sid

    @property
    def fast(self) -> bool:
        """True when messages come straight from the parser (else through a callback)."""
        return self._sid is not None

    async def close(self) -> None:
        """Unsubscribe; once no tap is left on the connection, nats-py's own hook is back."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(Exception):  # a closed connection has no subscriptions left
            await sub.unsubscribe()
        if self._sid is None:
            return
        dispatcher = _dispatcher(self._nc)
        if dispatcher is not None:
            dispatcher.handlers.pop(self._sid, None)
            if not dispatcher.handlers:
                del _dispatchers[self._nc]
                dispatcher.restore(self._nc)


def _from_msg(handler: Handler) -> Callable[[Any], Awaitable[None]]:
    """A subscription callback giving `handler` what the fast path would."""

    async def on_msg(msg: Any) -> None:
        status: Status | None = None
        headers = msg.headers
        # nats-py folds an inline status into the headers as Status/Description; status
        # messages carry no reply subject (JetStream deliveries always do).
        if headers and not msg.reply:
            code = headers.get("Status")
            if code is not None and code.isdigit():
                status = (int(code), headers.get("Description", ""))
        handler(msg.subject.encode(), msg.reply.encode(), msg.data, status)

    return on_msg


async def tap(nc: Any, subject: str, handler: Handler, *, fast: bool = True) -> Tap:
    """Subscribe to `subject` on `nc` and call `handler` for each message (module docstring).

    With `fast` and a :func:`supported` connection, messages are taken off the parser; otherwise
    (or with ``fast=False``) they come through an ordinary subscription callback. `handler` runs
    on the event loop and must not block; it may be called until `Tap.close` returns.
    """
    if fast and supported(nc):
        sub = await nc.subscribe(subject)
        sid = getattr(sub, "_id", None)
        if isinstance(sid, int):
            dispatcher = _dispatcher(nc)
            if dispatcher is None:
                dispatcher = _dispatchers[nc] = _Dispatcher(nc)
                nc._process_msg = dispatcher.hook
            dispatcher.handlers[sid] = handler
            return Tap(nc, sub, sid)
        await sub.unsubscribe()  # pragma: no cover - every nats-py 2.x subscription has an id
    elif fast:
        log.info("nats-py %s: fast paths unavailable, using its public API", NATS_PY_VERSION)
    return Tap(nc, await nc.subscribe(subject, cb=_from_msg(handler)), None)


async def write_raw(nc: Any, parts: list[bytes]) -> None:
    """Queue complete protocol lines (`parts`, concatenated) on `nc` and wake its flusher.

    Only for a :func:`supported` connection; the caller builds valid ``PUB``/``HPUB`` lines.
    Raises nats-py's ``ConnectionClosedError`` on a closed connection; while reconnecting the
    bytes wait in nats-py's pending buffer, as its own publishes do.
    """
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    await nc._send_command(b"".join(parts))
    await nc._flush_pending()
