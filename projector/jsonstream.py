"""Finding the envelopes in a stream of bytes, exactly and in bounded memory.

What `projector ingest` reads and what a NATS message may hold, one shape at a time:

* **NDJSON**: one envelope per line (blank lines skipped); positions are line numbers. A line that
  is a wrapper (below) holds several envelopes, all at that line.
* **A JSON document**: a bare array of envelopes; a wrapper object ``{"result": [...]}`` (noetl API
  exports and ``noetl query --format json``, with their ``"error"`` and ``"status"``),
  ``{"events": [...]}`` or ``{"event": {...}}`` (upstream notifications); a single envelope
  (pretty-printed); or several such documents one after another. Positions are element numbers,
  counted through the whole input (the n-th envelope found is element n).

An object is a wrapper when it has ``result`` or ``events`` holding an array, or ``event`` holding
an object, before any of the envelope's own fields or their aliases (``status`` excepted: API
exports carry one). Input whose first non-blank line is a complete JSON object is NDJSON; input
that starts with ``[``, or with an object spread over several lines (or longer than the line
limit), is a document.
A UTF-8 byte-order mark at the start is skipped.

Every item is handed out as its exact bytes (:class:`Piece`), so an array element is validated,
rejected and kept verbatim exactly like an NDJSON line. Documents are split by a small scanner that
knows JSON's strings and brackets (the envelope parser then checks everything else) and reads the
input in chunks: memory stays bounded by :data:`MAX_ITEM_BYTES` whatever the input. A line or
element longer than that is not kept: it becomes one :class:`Piece` with a ``problem`` saying how
long it was and the first :data:`PREFIX_BYTES` bytes as its ``raw``; the rest is skipped in
pieces. A document that stops being JSON between elements (or ends inside one) ends with one such
problem piece: the rest of it cannot be split reliably.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

__all__ = [
    "CHUNK_BYTES",
    "ENVELOPE_START",
    "MAX_ITEM_BYTES",
    "PREFIX_BYTES",
    "Piece",
    "Position",
    "pieces",
    "split",
]

#: The longest line or element read as an envelope (16 MiB); longer ones are rejected.
MAX_ITEM_BYTES = 16 << 20
#: How much of a rejected oversized (or unreadable) item is kept as its raw input.
PREFIX_BYTES = 4096
#: How much is read at a time.
CHUNK_BYTES = 1 << 20

BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n"
_SKIP_WS = re.compile(rb"[ \t\r\n]*+")
# Inside a container: everything up to the next bracket, complete strings included (a string
# that does not end in the buffer stops the run at its opening quote).
_RUN = re.compile(rb'[^"\[\]{}]*+(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"[^"\[\]{}]*+)*+', re.DOTALL)
# The rest of a string after its opening quote, up to (not including) its closing quote or the
# end of the buffer; an escape split by the end of the buffer stops before its backslash.
_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
_SCALAR = re.compile(rb"[^,\]}\s]*+")
_WRAPPERS = {b"result": b"[", b"events": b"[", b"event": b"{"}
# An envelope's own fields and their aliases (`status` excepted: API exports carry one).
_ENVELOPE_KEYS = frozenset(
    {
        b"execution_id",
        b"event_id",
        b"event_type",
        b"name",
        b"step",
        b"node_name",
        b"node_id",
        b"created_at",
        b"event_time",
        b"timestamp",
        b"context",
        b"payload",
        b"worker_id",
        b"meta",
    }
)
_FIRST_KEY = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"([^"\\]*)"')


@dataclass(frozen=True)
class Position:
    """Where an item is in its input: a line number (NDJSON) or an element number (documents)."""

    kind: Literal["line", "element"]
    number: int

    def __str__(self) -> str:
        return f"{self.kind} {self.number}"


@dataclass(frozen=True)
class Piece:
    """One item: its exact bytes, or, with a `problem`, a prefix of what could not be read."""

    position: Position
    raw: bytes
    problem: str | None = None
    #: ``(k, n)`` when the item is the k-th of n envelopes of one wrapper line or message.
    wrapped: tuple[int, int] | None = None


class _TooLong(Exception):
    """An item went past the limit while it was being captured."""


class _Source:
    """The input, read in chunks, with a bounded capture of the bytes consumed."""

    def __init__(self, read: Callable[[int], bytes], on_bytes: Callable[[int], None] | None):
        self._read = read
        self._on_bytes = on_bytes
        self.buf = b""
        self.pos = 0
        self.eof = False
        self._capture: list[bytes] | None = None
        self._start = 0  # where the capture starts in `buf`
        self.captured = 0  # bytes captured before `buf`'s current part
        self.limit = MAX_ITEM_BYTES
        self.overflowed = False
        self._lines_before = 0  # newlines in the bytes dropped from `buf`
        #: Whether the last object `_object` read was a wrapper.
        self.wrapped = False

    def line(self) -> int:
        """The 1-based line number of the next byte."""
        return self._lines_before + self.buf.count(b"\n", 0, self.pos) + 1

    def fill(self) -> bool:
        """Read more; False at the end of the input."""
        if self.eof:
            return False
        if self._capture is not None:
            self._keep(self.buf[self._start : self.pos])
            self._start = 0
        self._lines_before += self.buf.count(b"\n", 0, self.pos)
        data = self._read(CHUNK_BYTES)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        if not data:
            self.eof = True
            self.buf, self.pos = b"", 0
            return False
        self.buf = self.buf[self.pos :] + data if self.pos < len(self.buf) else data
        self.pos = 0
        return True

    def _keep(self, part: bytes) -> None:
        """Add consumed bytes to the capture; past the limit only a prefix and the count."""
        assert self._capture is not None
        if self.overflowed:
            pass
        elif self.captured + len(part) > self.limit:
            self.overflowed = True
            head = b"".join(self._capture) + part[:PREFIX_BYTES]
            self._capture = [head[:PREFIX_BYTES]]
        else:
            self._capture.append(part)
        self.captured += len(part)

    def peek(self) -> int | None:
        """The next byte after white space (consumed), or None at the end."""
        while True:
            self.pos = _SKIP_WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def start_capture(self) -> None:
        self._capture, self._start, self.captured, self.overflowed = [], self.pos, 0, False

    def stop_capture(self) -> tuple[bytes, int, bool]:
        """The bytes captured (a prefix when past the limit), their length, and whether the
        limit was passed."""
        self._keep(self.buf[self._start : self.pos])
        parts, self._capture = self._capture or [], None
        return b"".join(parts), self.captured, self.overflowed

    def drop_capture(self) -> None:
        self._capture = None

    def byte_offset_hint(self) -> str:
        return repr(self.buf[self.pos : self.pos + 40])

    # -- scanning one value ------------------------------------------------------------------

    def skip_string(self) -> bool:
        """Consume a string whose opening quote was consumed; False if the input ends in it."""
        escaped = False
        while True:
            if escaped:
                if self.pos >= len(self.buf) and not self.fill():
                    return False
                self.pos += 1
                escaped = False
            end = _STRING_BODY.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if end < len(self.buf) and self.buf[end] == 0x22:  # the closing quote
                self.pos = end + 1
                return True
            if end == len(self.buf) - 1:  # a backslash at the very end: its escape follows
                self.pos = end + 1
                escaped = True
            else:
                self.pos = end
            if not self.fill():
                return False

    def skip_value(self) -> bool:
        """Consume one JSON value starting at the next byte; False if the input ends in it."""
        first = self.buf[self.pos]
        if first == 0x22:  # "
            self.pos += 1
            return self.skip_string()
        if first not in b"[{":
            while True:
                self.pos = _SCALAR.match(self.buf, self.pos).end()  # type: ignore[union-attr]
                if self.pos < len(self.buf) or not self.fill():
                    return True
        depth = 0
        run = _RUN.match
        while True:
            end = run(self.buf, self.pos).end()  # type: ignore[union-attr]
            if end >= len(self.buf):
                self.pos = end
                if not self.fill():
                    return False
                continue
            c = self.buf[end]
            self.pos = end + 1
            if c == 0x22:  # a string that goes on past the buffer
                if not self.skip_string():
                    return False
            elif c == 0x5B or c == 0x7B:
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return True

    def read_key(self) -> bytes | None:
        """The object key at the next byte, without quotes (None: not a string, or too long)."""
        if self.buf[self.pos] != 0x22:
            return None
        while True:
            end = _STRING_BODY.match(self.buf, self.pos + 1).end()  # type: ignore[union-attr]
            if end < len(self.buf) and self.buf[end] == 0x22:
                key = self.buf[self.pos + 1 : end]
                self.pos = end + 1
                return key
            if end - self.pos > PREFIX_BYTES or not self.fill():
                return None


def _next_element(counter: list[int]) -> Position:
    counter[0] += 1
    return Position("element", counter[0])


def _value_piece(src: _Source, position: Position) -> Piece:
    """The value at the next byte as a piece (bounded)."""
    src.start_capture()
    complete = src.skip_value()
    raw, length, overflowed = src.stop_capture()
    if overflowed:
        return Piece(position, raw, _too_long(position, length))
    if not complete:
        return Piece(position, raw[:PREFIX_BYTES], f"the input ends inside {position}")
    return Piece(position, raw)


def _too_long(position: Position, length: int, ended: bool = True) -> str:
    more = "" if ended else " or more"
    return (
        f"{position} is {length} bytes{more}, more than the limit of {MAX_ITEM_BYTES} bytes "
        f"(the first {PREFIX_BYTES} are kept)"
    )


def _broken(src: _Source, position: Position, what: str) -> Piece:
    """The rest of a document that is not JSON here: one piece with a prefix of it."""
    src.start_capture()
    src.limit = PREFIX_BYTES
    while True:
        src.pos = len(src.buf)
        if not src.fill():
            break
    raw, length, _ = src.stop_capture()
    src.limit = MAX_ITEM_BYTES
    return Piece(position, raw, f"not JSON {what}: the rest ({length} bytes) was not read")


def _array(src: _Source, counter: list[int]) -> Iterator[Piece]:
    """The elements of the array whose ``[`` is the next byte."""
    src.pos += 1
    first = True
    while True:
        c = src.peek()
        if c is None:
            yield Piece(Position("element", counter[0] + 1), b"", "the input ends inside an array")
            return
        if c == 0x5D:  # ]
            src.pos += 1
            return
        if not first:
            if c != 0x2C:  # ,
                yield _broken(src, Position("element", counter[0] + 1), "after an element")
                return
            src.pos += 1
            if src.peek() is None:
                continue
        first = False
        piece = _value_piece(src, _next_element(counter))
        yield piece
        if piece.problem is not None and src.eof:
            return  # the input ended inside the element: said once


def _object(src: _Source, counter: list[int]) -> Iterator[Piece]:
    """The object whose ``{`` is the next byte: a wrapper's envelopes, or itself as one."""
    src.start_capture()
    position = Position("line", src.line())  # an envelope at the top level is at a line
    src.pos += 1
    envelope_key = False
    wrapped = src.wrapped = False
    while True:
        c = src.peek()
        if c is None:
            src.drop_capture()
            yield Piece(position, b"", "the input ends inside an object")
            return
        if c == 0x7D:  # }
            src.pos += 1
            break
        if c == 0x2C:
            src.pos += 1
            if src.peek() is None:
                continue
        key = src.read_key()
        if key is None or src.peek() != 0x3A:  # :
            src.drop_capture()
            yield _broken(src, position, "inside an object")
            return
        src.pos += 1
        c = src.peek()
        if c is None:
            continue
        opens = _WRAPPERS.get(key)
        if opens is not None and not envelope_key and c == opens[0]:
            src.drop_capture()
            wrapped = src.wrapped = True
            if opens == b"[":
                yield from _array(src, counter)
            else:
                yield _value_piece(src, _next_element(counter))
            continue
        envelope_key = envelope_key or key in _ENVELOPE_KEYS
        if not src.skip_value():
            src.drop_capture()
            yield Piece(position, b"", "the input ends inside an object")
            return
    if wrapped:
        return
    raw, length, overflowed = src.stop_capture()
    if overflowed:
        yield Piece(position, raw, _too_long(position, length))
    else:
        yield Piece(position, raw)


def _document(src: _Source) -> Iterator[Piece]:
    counter = [0]
    while True:
        c = src.peek()
        if c is None:
            return
        if c == 0x5B:
            yield from _array(src, counter)
        elif c == 0x7B:
            yield from _object(src, counter)
        else:
            yield _broken(src, Position("line", src.line()), "between documents")
            return
        if src.eof and src.pos >= len(src.buf):
            return


#: How an envelope in the sinks' and the Rust crate's field order starts: never a wrapper.
ENVELOPE_START = b'{"execution_id"'


def split(data: bytes) -> list[bytes] | None:
    """The envelopes of one wrapper object in `data` (a line, a NATS message), as exact bytes;
    None when `data` is not a wrapper (an envelope, or anything else)."""
    # Cheap answers first (this runs once per NATS message): an object whose first key is an
    # envelope's is not a wrapper, nor is one that names no wrapper key anywhere.
    if data.startswith(ENVELOPE_START):
        return None
    first = _FIRST_KEY.match(data)
    if first is None or first.group(1) in _ENVELOPE_KEYS:
        return None
    if not (b'"events"' in data or b'"event"' in data or b'"result"' in data):
        return None
    parts = [data]
    src = _Source(lambda _n: parts.pop() if parts else b"", None)
    src.limit = len(data) + 1
    src.peek()
    found = list(_object(src, [0]))
    if not src.wrapped or any(p.problem is not None for p in found) or src.peek() is not None:
        return None
    return [p.raw for p in found]


def _lines(
    stream: IO[bytes], first: bytes, on_bytes: Callable[[int], None] | None, lineno: int = 0
) -> Iterator[Piece]:
    """NDJSON: one piece a line (blank lines skipped); wrapper lines give one piece an envelope.
    `first` is line `lineno + 1`, already read."""
    line = first
    while line:
        lineno += 1
        position = Position("line", lineno)
        if len(line) > MAX_ITEM_BYTES:
            length, ended = len(line), line.endswith(b"\n")
            prefix = line[:PREFIX_BYTES]
            while not ended:  # the rest of the line, in pieces
                rest = stream.readline(CHUNK_BYTES)
                if on_bytes is not None:
                    on_bytes(len(rest))
                if not rest:
                    break
                length += len(rest)
                ended = rest.endswith(b"\n")
            yield Piece(position, prefix, _too_long(position, length - ended))
        else:
            stripped = line.strip()
            if stripped:
                parts = split(stripped) if stripped[:1] == b"{" else None
                if parts is None:
                    yield Piece(position, stripped)
                else:
                    n = len(parts)
                    for k, part in enumerate(parts, start=1):
                        yield Piece(position, part, wrapped=(k, n))
        line = stream.readline(MAX_ITEM_BYTES + 1)
        if on_bytes is not None and line:
            on_bytes(len(line))


def pieces(stream: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> Iterator[Piece]:
    """Every item of `stream` (module docstring), in order, each with its position."""
    blank: list[bytes] = []
    while True:
        first = stream.readline(MAX_ITEM_BYTES + 1)
        if on_bytes is not None and first:
            on_bytes(len(first))
        if not blank and first.startswith(BOM):
            first = first[len(BOM) :]
        if not first or first.strip() or not first.endswith(b"\n"):
            break
        blank.append(first)
    head = first.lstrip(_WS)
    ndjson = head[:1] not in (b"[", b"{") or (
        head[:1] == b"{" and len(first) <= MAX_ITEM_BYTES and _complete(head)
    )
    if ndjson:
        yield from _lines(stream, first, on_bytes, len(blank))
        return
    parts = [b"".join(blank) + first]

    def read(n: int) -> bytes:
        return parts.pop() if parts else stream.read(n)

    yield from _document(_Source(read, on_bytes))


def _complete(line: bytes) -> bool:
    """True when `line` (starting with ``{``) is one complete JSON value and nothing else."""
    parts = [line]
    src = _Source(lambda _n: parts.pop() if parts else b"", None)
    src.peek()
    ok = src.skip_value()
    return ok and src.peek() is None
