"""`ExecutorEvent.parse_json` (the canonical fast path) gives what `model_validate_json` gives."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from projector import ExecutorEvent
from projector.envelope import MAX_JSON_DEPTH, _parse_canonical, _verbatim
from projector.natsink import _envelope
from projector.sinks import envelope_bytes

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
texts = st.text(max_size=6) | st.sampled_from(["a", "step-1", "é", " ", "\x00", "NaN"])
ids = st.one_of(texts, st.integers(min_value=-(2**63), max_value=2**64), st.none(), st.floats())
times = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=st.just(timezone(timedelta(hours=5, minutes=30)))),
    st.datetimes(),
)
envelopes = st.fixed_dictionaries(
    {"execution_id": ids, "event_type": texts, "created_at": times},
    optional={
        "event_id": ids,
        "step": st.one_of(texts, st.none(), st.integers()),
        "status": st.one_of(texts, st.none()),
        "context": json_values,
        "worker_id": st.one_of(texts, st.none()),
        "meta": st.one_of(st.none(), st.dictionaries(st.text(max_size=4), json_values, max_size=2)),
        "payload": json_values,
        "extra_field": json_values,
    },
)


def _spellings(d: dict[str, Any]) -> list[bytes]:
    """The envelope as a producer might write it: canonical timestamps, offsets, \\u escapes."""
    when: datetime = d["created_at"]
    canonical = {
        **d,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if when.tzinfo is UTC
        else when.isoformat(),
    }
    out = [
        json.dumps(canonical, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    ]
    out.append(json.dumps(canonical, allow_nan=True).encode())  # ensure_ascii: \u escapes
    # What the sinks write: orjson's compact form, read by the verbatim path (orjson cannot write
    # NaN, lone surrogates or integers beyond 64 bits: those envelopes have no such spelling).
    with contextlib.suppress(TypeError, orjson.JSONEncodeError):
        out.append(orjson.dumps(canonical))
    return out


def _outcome(parse: Any, raw: bytes) -> Any:
    try:
        event = parse(raw)
    except ValidationError as exc:
        return ("error", [(e["loc"], e["msg"]) for e in exc.errors(include_url=False)])
    return ("ok", event.model_dump(), event.model_fields_set, event)


@settings(max_examples=400, deadline=None)
@given(envelopes)
def test_parse_json_matches_model_validate_json(d: dict[str, Any]) -> None:
    for raw in _spellings(d):
        fast = _outcome(ExecutorEvent.parse_json, raw)
        slow = _outcome(ExecutorEvent.model_validate_json, raw)
        assert fast[:3] == slow[:3], raw
        if fast[0] == "ok":
            assert fast[3] == slow[3]


@pytest.mark.parametrize(
    "event",
    [
        ExecutorEvent(
            execution_id="7380012345678901234",
            event_id="7380012345678901299",
            event_type="command.completed",
            step="fetch",
            status="COMPLETED",
            created_at=datetime(2026, 11, 29, 8, 0, 1, 5, tzinfo=UTC),
            context={"rows": 12, "ratio": 0.5, "name": "é", "list": [1, "x"]},
            worker_id="w1",
            meta={"k": [1, 2]},
        ),
        ExecutorEvent(
            execution_id="e", event_type="t", created_at=datetime(2026, 1, 1, tzinfo=UTC)
        ),
    ],
)
def test_what_the_sinks_write_takes_the_fast_path(event: ExecutorEvent) -> None:
    for raw in (
        envelope_bytes(event),
        event.model_dump_json().encode(),
        json.dumps(event.model_dump(mode="json"), ensure_ascii=False).encode(),
    ):
        fast, _ = _parse_canonical(ExecutorEvent, raw)
        assert fast is not None, raw
        assert fast == ExecutorEvent.model_validate_json(raw)
        # A derived event id is not written: the reader derives the same one.
        assert fast.with_event_id() == event.with_event_id()
        assert fast.resolved_event_id() == event.resolved_event_id()


HEAD = '{"execution_id":"e1","event_id":"1","event_type":"t","step":"s",'
WHEN = '"created_at":"2026-11-29T08:00:00.000000Z"'


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + WHEN + ',"context":{"a":1e400}}',  # parses as infinity: JSON cannot hold it
        HEAD + WHEN + ',"context":{"a":-1e999}}',
        HEAD + WHEN + ',"context":{"a":1e400,"b":123456789012345678901234567890}}',
        HEAD + WHEN + ',"context":{"b":123456789012345678901234567890}}',  # exact, accepted
        HEAD + WHEN + ',"context":{"a":null},"meta":{"m":1e400}}',
        HEAD + '"created_at":"2024-W01-1T00:00:00.000000Z","context":{}}',  # ISO week date
        HEAD + '"created_at":"2026-11-29T08:00:00.000000+00:00","context":{}}',
        HEAD + '"created_at":"2026-11-29T08:00:00Z","context":{}}',
        HEAD + WHEN + ',"context":{"a":"\\u0000"}}',
    ],
)
def test_parse_json_declines_what_it_cannot_check(raw: str) -> None:
    assert (
        _outcome(ExecutorEvent.parse_json, raw.encode())[:3]
        == _outcome(ExecutorEvent.model_validate_json, raw.encode())[:3]
    )


VERBATIM_HEAD = b'{"execution_id":"e1","event_id":"1","event_type":"t","step":"s","status":"",'
VERBATIM_WHEN = b'"created_at":"2026-11-29T08:00:00.000000Z"'


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize(
    ("raw", "verbatim"),
    [
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":null,"b":[null]}}', True),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":null,"meta":null}', True),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":1.5,"b":-0.0,"c":1e-7}}', True),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":18446744073709551615}}', True),
        # U+0000, as orjson writes it, in a value, a key, a text field: rejected
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":"x\\u0000"}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"\\u0000":1}}', False),
        (b'{"execution_id":"e\\u0000","event_type":"t",' + VERBATIM_WHEN + b"}", False),
        # a backslash then "u0000" is no NUL; still left to the full path
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":"\\\\u0000"}}', False),
        # duplicate keys are never orjson's output
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":1,"a":1}}', False),
        (
            b'{"execution_id":"e1","execution_id":"e1","event_type":"t",' + VERBATIM_WHEN + b"}",
            False,
        ),
        # read by orjson, written back otherwise: integers past 64 bits, floats, escapes
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":18446744073709551616}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":1.0e0}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":"\\u00e9"}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":"\\ud83d\\ude00"}}', False),
        # orjson refuses: NaN, infinities, lone surrogates (escaped or as bytes)
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":NaN}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":Infinity}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":1e400}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":"\\ud800"}}', False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":{"a":"\xed\xa0\x80"}}', False),
        # nesting: at the limit (context's own depth), one past it, and far past orjson's
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":' + _deep(MAX_JSON_DEPTH - 1) + b"}", True),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":' + _deep(MAX_JSON_DEPTH) + b"}", False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":' + _deep(MAX_JSON_DEPTH + 1) + b"}", False),
        (VERBATIM_HEAD + VERBATIM_WHEN + b',"context":' + _deep(2000) + b"}", False),
        # producer spellings: verbatim, but not the canonical names (the full path respells)
        (
            b'{"execution_id":1,"name":"t","node_name":"s","payload":{"a":1},'
            b'"timestamp":"2026-11-29T08:00:00.000000Z","idempotency_key":"k"}',
            True,
        ),
        (
            b'{"execution_id":1,"event_type":"t","name":"u","event_time":'
            b'"2026-11-29T08:00:00Z","created_at":null}',
            True,
        ),
        (b'{"execution_id":"e1","event_type":"t","created_at":"2026-11-29T08:00:00+05:30"}', True),
        (b'[{"execution_id":"e1"}]', True),
        (b'{"execution_id":"e1","event_type":" ",' + VERBATIM_WHEN + b"}", True),
        (b'{"execution_id":"","event_type":"t",' + VERBATIM_WHEN + b"}", True),
    ],
)
def test_the_verbatim_path_matches_model_validate_json(raw: bytes, verbatim: bool) -> None:
    """orjson's own output is read without the slow path's checks: whatever it declines or
    cannot vouch for goes the full way, and either way the outcome is pydantic's."""
    assert (_verbatim(raw) is not None) is verbatim
    fast = _outcome(ExecutorEvent.parse_json, raw)
    slow = _outcome(ExecutorEvent.model_validate_json, raw)
    if b'"a":1,"a":1' in raw or raw.count(b'"execution_id"') == 2:
        # a duplicate key: pydantic keeps the last, parse_json rejects it with the key's name
        assert fast[0] == "error" and "duplicate key" in str(fast[1]), fast
        return
    assert fast[:3] == slow[:3], raw
    if fast[0] == "ok":
        assert fast[3] == slow[3]


def test_the_sinks_output_takes_the_verbatim_path() -> None:
    when = datetime(2026, 12, 1, 16, 44, 26, 834184, tzinfo=UTC)
    events = [
        ExecutorEvent(
            execution_id="822685327443283968",
            event_id=str(105303721912740347910 + n),
            event_type="command.started",
            step=f"step_{n:02d}",
            status=["RUNNING", "", "COMPLETED"][n % 3],
            created_at=when + timedelta(milliseconds=3 * n),
            context={"attempt": 1, "duration_ms": 285 + n, "result": {"rows": n, "ok": True}},
            worker_id=None if n % 2 else "worker-1",
            meta=None if n % 4 else {"k": [n, None]},
        )
        for n in range(12)
    ]
    events.append(
        ExecutorEvent.model_validate_json(
            b'{"execution_id":7,"event_id":8,'
            b'"event_type":"t","created_at":"2026-01-01T00:00:00.5Z"}'
        )
    )
    for event in events:
        for raw in (_envelope(event), envelope_bytes(event)):
            assert _verbatim(raw) is not None, raw
            assert ExecutorEvent.parse_json(raw) == ExecutorEvent.model_validate_json(raw)
            assert ExecutorEvent.parse_json(raw) == event
