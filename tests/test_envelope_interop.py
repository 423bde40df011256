"""The envelope speaks every real producer's wire (issue 10): upstream spellings in, strict
timestamps, duplicate keys, and JSON out in the types the Rust structs read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from projector import ExecutorEvent
from projector.envelope import DerivedId, IntegerId, Occurrences, ParsedRaw, canonical_json
from projector.natsink import _envelope
from projector.sinks import EventEmitter, StdoutEventSink, envelope_bytes

BASE: dict[str, Any] = {"execution_id": "e1", "event_type": "t"}
SNOWFLAKE = 7380012345678901234  # > 2**53: a float would change it


def reason(raw: bytes | str | dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        if isinstance(raw, dict):
            ExecutorEvent.model_validate(raw)
        else:
            ExecutorEvent.parse_json(raw)
    return str(info.value)


@pytest.mark.parametrize("name", ["event_time", "timestamp"])
def test_created_at_also_arrives_as_event_time_or_timestamp(name: str) -> None:
    ev = ExecutorEvent.parse_json(json.dumps({**BASE, name: "2026-05-20 04:30:00.123456+00:00"}))
    assert ev.created_at == datetime(2026, 5, 20, 4, 30, 0, 123456, tzinfo=UTC)
    assert ev.meta is None


def test_the_first_spelling_present_wins_and_the_losers_are_kept() -> None:
    ev = ExecutorEvent.model_validate(
        {
            **BASE,
            "event_time": "2026-05-20T04:30:00Z",
            "timestamp": "2026-05-20T04:31:00Z",
            "created_at": "2026-05-20T04:29:00Z",
        }
    )
    assert ev.created_at == datetime(2026, 5, 20, 4, 29, tzinfo=UTC)
    assert ev.meta == {
        "unknown_fields": {
            "event_time": "2026-05-20T04:30:00Z",
            "timestamp": "2026-05-20T04:31:00Z",
        }
    }


def test_a_null_canonical_field_never_blocks_an_alias() -> None:
    ev = ExecutorEvent.model_validate(
        {
            **BASE,
            "step": None,
            "node_name": "fetch",
            "created_at": None,
            "event_time": "2026-05-20T04:30:00Z",
            "context": None,
            "payload": {"a": 1},
        }
    )
    assert (ev.step, ev.context) == ("fetch", {"a": 1})
    assert ev.created_at == datetime(2026, 5, 20, 4, 30, tzinfo=UTC)
    assert ev.meta is None  # the nulls carried nothing


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-20T11:56:27.292930Z",
        "2026-01-20T11:56:27.123456789Z",  # nanoseconds, truncated
        "2026-01-20 11:56:27.292930+00:00",  # json.dumps(default=str)
        "2026-01-20T11:56:27.292930",  # naive: UTC
        "2026-01-20T13:56:27.292930+02:00",
        "2026-01-20T11:56Z",
    ],
)
def test_rfc_3339_date_times_are_read(text: str) -> None:
    ev = ExecutorEvent.model_validate({**BASE, "created_at": text})
    assert ev.created_at.tzinfo is UTC
    assert ev.created_at.replace(second=0, microsecond=0) == datetime(
        2026, 1, 20, 11, 56, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text", ["1776402209", "1776402209.5", "2026-01-20", "2024-W01-1T00:00:00Z", "yesterday", ""]
)
def test_digits_and_bare_dates_are_rejected_with_the_field_name(text: str) -> None:
    message = reason({**BASE, "created_at": text})
    assert "created_at" in message and "RFC 3339" in message


@pytest.mark.parametrize("text", ["9999-12-31T23:00:00-12:00", "0001-01-01T00:30:00+01:00"])
def test_a_date_time_utc_cannot_hold_is_rejected_not_an_overflow(text: str) -> None:
    for raw in ({**BASE, "created_at": text}, json.dumps({**BASE, "created_at": text})):
        message = reason(raw)  # a ValidationError, never an OverflowError
        assert "created_at" in message and "outside the range" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (
            '{"execution_id":"e1","event_type":"t","status":"A","status":"B",'
            '"created_at":"2026-01-20T11:56:27.292930Z"}',
            "status",
        ),
        (
            '{"execution_id":"e1","event_type":"t","created_at":"2026-01-20T11:56:27.292930Z",'
            '"context":{"a":1,"a":2}}',
            "a",
        ),
        (
            '{"execution_id": "e1", "name": "t", "node_name": "s", "node_name": "x",'
            ' "created_at": "2026-01-20 11:56:27"}',
            "node_name",
        ),
    ],
)
def test_duplicate_keys_are_rejected_with_their_name(raw: str, key: str) -> None:
    assert f"duplicate key '{key}'" in reason(raw)
    assert f"duplicate key '{key}'" in reason(raw.encode())


def test_integer_ids_are_written_as_integers_and_strings_as_strings() -> None:
    ints = ExecutorEvent.model_validate(
        {
            **BASE,
            "execution_id": SNOWFLAKE,
            "event_id": SNOWFLAKE + 1,
            "created_at": "2026-01-20T11:56:27Z",
        }
    )
    assert type(ints.execution_id) is IntegerId and ints.execution_id == str(SNOWFLAKE)
    strs = ints.model_copy(update={"execution_id": str(SNOWFLAKE), "event_id": str(SNOWFLAKE + 1)})
    assert ints == strs  # equality ignores the JSON type the ids arrived in
    assert ints.resolved_event_id() == strs.resolved_event_id()
    for out in (ints.model_dump_json(), envelope_bytes(ints), _envelope(ints)):
        d = json.loads(out)
        assert (d["execution_id"], d["event_id"]) == (SNOWFLAKE, SNOWFLAKE + 1)
    for out in (strs.model_dump_json(), envelope_bytes(strs), _envelope(strs)):
        d = json.loads(out)
        assert (d["execution_id"], d["event_id"]) == (str(SNOWFLAKE), str(SNOWFLAKE + 1))
    # The integer survives a round trip through its own JSON, and through the fast path.
    again = ExecutorEvent.parse_json(_envelope(ints))
    assert type(again.execution_id) is IntegerId and again == ints


def test_status_is_always_written_and_an_empty_one_is_none() -> None:
    ev = ExecutorEvent.model_validate({**BASE, "created_at": "2026-01-20T11:56:27Z"})
    assert json.loads(ev.model_dump_json())["status"] == ""
    assert json.loads(_envelope(ev))["status"] == ""
    assert ExecutorEvent.parse_json(ev.model_dump_json()).status is None
    assert ExecutorEvent.parse_json(ev.model_dump_json()) == ev


async def test_a_derived_id_is_never_written_and_reads_back_the_same() -> None:
    ev = ExecutorEvent.model_validate({**BASE, "created_at": "2026-01-20T11:56:27Z"})
    filled = ev.with_event_id()
    assert type(filled.event_id) is DerivedId
    for out in (filled.model_dump_json(), envelope_bytes(filled), _envelope(filled)):
        assert "event_id" not in json.loads(out)
        assert ExecutorEvent.parse_json(out).resolved_event_id() == filled.event_id


async def test_an_emitter_with_an_integer_execution_id_writes_integers() -> None:
    import io

    out = io.StringIO()
    await EventEmitter(SNOWFLAKE, StdoutEventSink(out)).emit("step.enter", "a", None, event_id=5)
    d = json.loads(out.getvalue())
    assert (d["execution_id"], d["event_id"], d["status"]) == (SNOWFLAKE, 5, "")


def test_the_idempotency_key_is_the_id_source() -> None:
    a = ExecutorEvent.model_validate(
        {**BASE, "idempotency_key": "k-1", "created_at": "2026-01-20T11:56:27Z"}
    )
    b = a.model_copy(update={"created_at": datetime(2026, 1, 21, tzinfo=UTC)})
    assert a.resolved_event_id() == b.resolved_event_id()  # a retry with the same key
    assert (
        a.resolved_event_id()
        == "sha256:"
        + __import__("hashlib")
        .sha256(canonical_json({"execution_id": "e1", "idempotency_key": "k-1"}).encode())
        .hexdigest()[:32]
    )
    other = ExecutorEvent.model_validate(
        {**BASE, "idempotency_key": "k-2", "created_at": "2026-01-20T11:56:27Z"}
    )
    assert other.resolved_event_id() != a.resolved_event_id()
    explicit = a.model_copy(update={"event_id": "9"})
    assert explicit.resolved_event_id() == "9"
    # It round-trips: the key is kept in meta.unknown_fields and read from there.
    assert (
        ExecutorEvent.parse_json(a.model_dump_json()).resolved_event_id() == a.resolved_event_id()
    )


def test_identical_id_less_envelopes_of_one_source_are_numbered() -> None:
    ev = ExecutorEvent.model_validate({**BASE, "created_at": "2026-01-20T11:56:27Z"})
    other = ev.model_copy(update={"step": "x"})
    counts = Occurrences()
    ids = [counts.assign(e).event_id for e in (ev, ev, other, ev)]
    assert ids[0] == ev.resolved_event_id()  # the first keeps the plain content id
    assert ids[2] == other.resolved_event_id()
    assert len(set(ids)) == 4
    content = {**ev.content(), "occurrence": 2}
    assert (
        ids[1]
        == "sha256:"
        + __import__("hashlib").sha256(canonical_json(content).encode()).hexdigest()[:32]
    )
    # The same source read again gives the same ids.
    again = Occurrences()
    assert [again.assign(e).event_id for e in (ev, ev, other, ev)] == ids


def test_occurrences_stay_exact_past_growth() -> None:
    counts = Occurrences()
    for round_ in (1, 2, 3):
        assert all(counts.number(k * 0x9E3779B97F4A7C15) == round_ for k in range(5000))


def test_execution_id_fills_a_missing_one_and_refuses_another() -> None:
    raw = b'{"event_type":"t","created_at":"2026-01-20T11:56:27.292930Z","context":{}}'
    ev = ExecutorEvent.parse_json(raw, execution_id=SNOWFLAKE)
    assert ev.execution_id == str(SNOWFLAKE) and type(ev.execution_id) is IntegerId
    slow = ExecutorEvent.parse_json(
        b'{"name": "t", "event_time": "2026-01-20 11:56:27"}', execution_id="x"
    )
    assert slow.execution_id == "x"
    same = b'{"execution_id":"x","event_type":"t","created_at":"2026-01-20T11:56:27.292930Z"}'
    assert ExecutorEvent.parse_json(same, execution_id="x").execution_id == "x"
    message = reason_with(same, "y")
    assert "execution_id 'x' is not the expected 'y'" in message


def reason_with(raw: bytes, execution_id: str) -> str:
    with pytest.raises(ValidationError) as info:
        ExecutorEvent.parse_json(raw, execution_id=execution_id)
    return str(info.value)


def test_parsed_raw_gives_back_what_its_reader_found() -> None:
    raw = b'{"execution_id":"x","event_type":"t","created_at":"2026-01-20T11:56:27.292930Z"}'
    ev = ExecutorEvent.parse_json(raw).with_event_id(3)
    assert ExecutorEvent.parse_json(ParsedRaw.of(raw, ev)) is ev
    error = ValidationError.from_exception_data("x", [])
    with pytest.raises(ValidationError):
        ExecutorEvent.parse_json(ParsedRaw.rejected(raw, error))
    assert bytes(ParsedRaw.of(raw, ev)) == raw
