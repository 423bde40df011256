"""The write transaction's statements around its COPY: locks, lookups, comparison, rejections.

One transaction of `PostgresEventSink` sends, in this order (the texts are the ``sink.*``
queries of ``projector/sql/sink.sql``):

1. :func:`begin`: the transaction id, the advisory locks on the batch's lock buckets (see
   :func:`lock_bucket`) and the projectors' NOTIFY, pipelined with the BEGIN (which `begin`
   sends itself on the sink's autocommit sessions) and with the range lookup that :func:`plan`
   chose, in one round trip.
2. :func:`read_ranges`: the stored rows of the batch's keys, as :class:`~projector.batch.StoredRow`
   s, from one range scan per execution, and from :func:`probe_keys` (key by key, windowed to the
   batch's months when there are many) for the executions whose range is too dense to be read whole.
3. :func:`differing`: of the keys stored with the same created_at but not the same content hash,
   which differ in content, compared as jsonb in the server.
4. (the COPY of the new rows, in ``projector.pgsink``)
5. :func:`committed`: on a retry, whether an earlier attempt committed after all; if not,
   :func:`insert_rejects` keeps the rejected items in noetl.event_rejected.

When lock waits keep running past `lock_timeout`, :func:`blockers` says which sessions hold what
the transaction waits for.

Text columns are bound by :func:`_bind`, as joined strings when the values allow it, else as
text[] arrays; each statement that takes them has a named query for either form.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString, NamedTuple

import psycopg

from .batch import Key, Pending, RejectedItem, StoredRow, compare_values, first_occurrences
from .channels import NOTIFY_CHANNEL, SINK_LOCK_CLASS
from .queries import query

__all__ = [
    "LOCK_BUCKETS",
    "NULL_MARK",
    "SEPARATOR",
    "WINDOW_MIN_KEYS",
    "Plan",
    "StoredRow",
    "begin",
    "blockers",
    "committed",
    "decimal_bounds",
    "differing",
    "insert_rejects",
    "lock_bucket",
    "month_window",
    "plan",
    "probe_keys",
    "read_ranges",
]

Cursor = psycopg.AsyncCursor[Any]
_new = tuple.__new__

#: Number of buckets execution ids are hashed into for the sink's advisory locks.
LOCK_BUCKETS = 1024
#: Below this many keys one lookup in every partition costs less than the extra round trip.
WINDOW_MIN_KEYS = 500
# Values travel as strings joined by U+001F (U+001E marks NULL): parsing them server-side is about
# twice as fast as binding text[] parameters. Values containing either character use arrays.
SEPARATOR = "\x1f"
NULL_MARK = "\x1e"


class _Forms(NamedTuple):
    """One statement in both forms of binding its text columns (see `_bind`)."""

    joined: LiteralString
    array: LiteralString


_START = query("sink.start")
_BEGIN = query("sink.begin")
_BEGIN_NOTIFY = query("sink.begin_notify")
_RANGES = _Forms(query("sink.ranges_joined"), query("sink.ranges_array"))
_RANGES_GIVEN = _Forms(query("sink.ranges_given_joined"), query("sink.ranges_given_array"))
_LOOKUP = _Forms(query("sink.lookup_joined"), query("sink.lookup_array"))
_LOOKUP_WINDOW = _Forms(query("sink.lookup_window_joined"), query("sink.lookup_window_array"))
_STORED_EXECUTIONS = _Forms(
    query("sink.stored_executions_joined"), query("sink.stored_executions_array")
)
_COMPARE = _Forms(query("sink.compare_joined"), query("sink.compare_array"))
_COMMITTED = query("sink.committed")
_REJECT = query("sink.reject")
_BLOCKERS = query("sink.blockers")


def _bind(
    forms: _Forms, columns: Sequence[Sequence[str | None]]
) -> tuple[LiteralString, tuple[object, ...]]:
    """The statement and parameters binding equally long text columns: joined strings when safe,
    else text[] arrays."""
    joined: list[str] = []
    for col in columns:
        has_null = None in col
        text = SEPARATOR.join([NULL_MARK if v is None else v for v in col] if has_null else col)  # type: ignore[arg-type]
        # Safe when the only separators are the ones just put in, no value holds a NULL mark,
        # and the text is not empty (string_to_array('') is an empty array, not one '').
        if (
            not text
            or text.count(SEPARATOR) != len(col) - 1
            or (NULL_MARK in text and (not has_null or any(v and NULL_MARK in v for v in col)))
        ):
            return forms.array, tuple(list(col) for col in columns)
        joined.append(text)
    return forms.joined, tuple(joined)


def _key_columns(keys: Sequence[Key]) -> list[list[str]]:
    return [[k[0] for k in keys], [k[1] for k in keys]]


def lock_bucket(execution_id: str) -> int:
    """The advisory-lock bucket of an execution id (stable across processes and versions; the
    CRC-32 of its UTF-8, lone surrogates of an envelope built without validation included, so
    that such an event reaches the transaction that refuses it alone)."""
    return zlib.crc32(execution_id.encode("utf-8", "surrogatepass")) % LOCK_BUCKETS


# -- 1. begin ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    """What a transaction sends before its COPY, worked out from its events alone (so that
    `emit_many` can do it while the previous window's COPY is being stored)."""

    first: dict[Key, Pending]  # each key's first occurrence: the one written
    buckets: list[int]  # advisory-lock buckets, sorted
    ranges: tuple[LiteralString, tuple[Any, ...]] | None  # the range lookup: query and parameters


def plan(pending: Iterable[Pending]) -> Plan:
    """The plan of a transaction writing `pending`."""
    first = first_occurrences(pending)
    buckets = sorted({lock_bucket(e) for e in {k[0] for k in first}})
    return Plan(first, buckets, _ranges_query(list(first)) if first else None)


def decimal_bounds(keys: Iterable[Key]) -> dict[str, list[Any]] | None:
    """Per execution `[lo, hi, n]` of its event ids, when they are all ASCII decimal numbers of
    one length (so that every collation orders them as Python does); else None."""
    bounds: dict[str, list[Any]] = {}
    for execution_id, event_id in keys:
        b = bounds.get(execution_id)
        if b is None:
            if not (event_id.isascii() and event_id.isdigit()):
                return None
            bounds[execution_id] = [event_id, event_id, 1]
            continue
        if len(event_id) != len(b[0]) or not (event_id.isascii() and event_id.isdigit()):
            return None
        if event_id < b[0]:
            b[0] = event_id
        elif event_id > b[1]:
            b[1] = event_id
        b[2] += 1
    return bounds


def _ranges_query(keys: list[Key]) -> tuple[LiteralString, tuple[Any, ...]]:
    """The range lookup of `keys` (distinct), with bounds from the client when it can tell them."""
    bounds = decimal_bounds(keys)
    if bounds is None:
        return _bind(_RANGES, _key_columns(keys))
    text, params = _bind(
        _RANGES_GIVEN,
        [list(bounds), [b[0] for b in bounds.values()], [b[1] for b in bounds.values()]],
    )
    return text, (*params, [b[2] for b in bounds.values()])


async def begin(cur: Cursor, ranges: Cursor, plan: Plan) -> str:
    """Start the transaction on `cur`'s idle connection: take the locks, queue the NOTIFY and send
    the range lookup on `ranges`, in one round trip; the transaction id.

    On an autocommit connection (the sink's) the BEGIN is sent here, in the same pipeline; on
    another one psycopg sends its own, and waits for it (a pipeline syncs after a BEGIN psycopg
    sends): one round trip more."""
    async with cur.connection.pipeline():
        if cur.connection.autocommit:
            await cur.execute(_START)
        if plan.ranges is not None:
            await cur.execute(_BEGIN_NOTIFY, (SINK_LOCK_CLASS, plan.buckets, NOTIFY_CHANNEL))
            await ranges.execute(*plan.ranges, binary=True, prepare=True)
        else:
            await cur.execute(_BEGIN, (SINK_LOCK_CLASS, plan.buckets))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


# -- 2. stored rows ------------------------------------------------------------------------------


def _range_limit(n: int) -> int:
    return 2 * n + 16  # the LIMIT of the sink.ranges_* statements


async def read_ranges(ranges: Cursor, first: dict[Key, Pending]) -> dict[Key, StoredRow]:
    """The stored rows of `first`'s keys: from the range scans `begin` sent on `ranges`, then key
    by key for executions whose range holds too many other rows to be read whole."""
    stored: dict[Key, StoredRow] = {}
    seen: dict[str, int] = {}  # rows read per execution
    keys: dict[str, int] = {}  # the batch's keys per execution (`n` in the statement)
    for execution_id, event_id, created_at, txid, digest, n in await ranges.fetchall():
        seen[execution_id] = seen.get(execution_id, 0) + 1
        keys[execution_id] = n
        key = (execution_id, event_id)
        if key in first:
            # StoredRow._make without its Python frame: this loop runs once per stored row.
            stored[key] = _new(StoredRow, (execution_id, event_id, created_at, txid, digest))
    dense = {x for x, count in seen.items() if count >= _range_limit(keys[x])}
    if dense:
        probe = [k for k in first if k[0] in dense]
        times = [first[k].created_at for k in probe]
        stored.update(await probe_keys(ranges, probe, times))
    return stored


def _by_key(rows: Iterable[Any]) -> dict[Key, StoredRow]:
    found: dict[Key, StoredRow] = {}
    for r in rows:
        row = _new(StoredRow, r)
        found[row.execution_id, row.event_id] = row
    return found


def month_window(times: Sequence[datetime]) -> tuple[datetime, datetime | None]:
    """From the first month of `times` (UTC) to the first month after them; None for the end
    when that month is past what a datetime holds (December 9999)."""
    lo = min(times).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = max(times)
    if last.year == datetime.max.year and last.month == 12:
        return lo, None
    hi = (
        last.replace(year=last.year + 1, month=1, day=1)
        if last.month == 12
        else last.replace(month=last.month + 1, day=1)
    ).replace(hour=0, minute=0, second=0, microsecond=0)
    return lo, hi


async def probe_keys(cur: Cursor, keys: list[Key], times: list[datetime]) -> dict[Key, StoredRow]:
    """The stored rows of `keys` (created at `times`), probed one by one: in the batch's months,
    and everywhere for the executions that have rows outside them (few keys, or months reaching
    past the year 9999: everywhere at once)."""
    lo, hi = month_window(times) if len(keys) >= WINDOW_MIN_KEYS else (None, None)
    if lo is None or hi is None:  # few keys, or a window with no end: everywhere at once
        text, params = _bind(_LOOKUP, _key_columns(keys))
        await cur.execute(text, params, binary=True, prepare=True)
        return _by_key(await cur.fetchall())
    text, params = _bind(_STORED_EXECUTIONS, [sorted({k[0] for k in keys})])
    await cur.execute(text, (lo, hi, lo, hi, *params), prepare=True)
    known = dict(await cur.fetchall())
    if not known:
        return {}
    spread = {x for x, outside in known.items() if outside}
    keys = [k for k in keys if k[0] in known]
    text, params = _bind(_LOOKUP_WINDOW, _key_columns(keys))
    await cur.execute(text, (*params, lo, hi), binary=True, prepare=True)
    stored = _by_key(await cur.fetchall())
    if spread:
        text, params = _bind(_LOOKUP, _key_columns([k for k in keys if k[0] in spread]))
        await cur.execute(text, params, binary=True)
        stored.update(_by_key(await cur.fetchall()))
    return stored


# -- 3. comparison -------------------------------------------------------------------------------


async def differing(cur: Cursor, candidates: list[Pending]) -> set[int]:
    """The indexes of the `candidates` whose stored row (with their created_at) has other
    content, compared in the server as jsonb (key order and number spelling do not count)."""
    text, params = _bind(_COMPARE, list(zip(*map(compare_values, candidates), strict=True)))
    await cur.execute(text, params)
    return {candidates[int(r[0]) - 1].index for r in await cur.fetchall()}


# -- 5. rejections -------------------------------------------------------------------------------


async def committed(cur: Cursor, txids: set[str]) -> bool:
    """Whether one of `txids` (earlier attempts at this batch) committed after all: its COMMIT
    went through although the connection died, so its rejected items are stored already."""
    await cur.execute(_COMMITTED, (sorted(txids),))
    row = await cur.fetchone()
    return bool(row and row[0])


async def insert_rejects(cur: Cursor, rejects: Sequence[RejectedItem]) -> None:
    """Keep `rejects` in noetl.event_rejected, each input once: one already kept with the same
    source, position and bytes (the same file ingested again) is not kept twice."""
    await cur.executemany(_REJECT, [r.columns() for r in rejects])


# -- diagnosis -----------------------------------------------------------------------------------


async def blockers(cur: Cursor, buckets: Sequence[int], waited: float) -> list[str]:
    """The sessions of this database holding what a transaction on `buckets` needs (their
    advisory locks, or a lock on a noetl table that stops writes), one line each: pid,
    application_name, user, state, and how long its transaction has been open, longest first.
    A role without pg_read_all_stats may not see another role's transaction start: the line then
    says the lock was held for at least `waited` seconds, as long as the caller waited for it."""
    await cur.execute(_BLOCKERS, (SINK_LOCK_CLASS, list(buckets)))
    lines = []
    for pid, app, user, state, open_for, what in await cur.fetchall():
        held = (
            f"for at least {waited:.1f} s (as long as the sink waited)"
            if open_for is None
            else f"in a transaction open for {open_for:.1f} s"
        )
        lines.append(
            f"pid {pid} (application_name {app!r}, user {user!r}, {state or 'state unknown'}) "
            f"holds {what}, {held}"
        )
    return lines
